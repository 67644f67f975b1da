//! Everything that depends on the running kernel.

pub mod btf;
pub mod diagnostics;
pub mod offsets;
pub mod preflight;
pub mod probes;
