//! Everything that depends on the running kernel: its BTF and struct
//! layouts, the checks before loading, the eBPF programs, and the decoding
//! of what they send.

pub mod btf;
pub mod decode;
pub mod diagnostics;
pub mod offsets;
pub mod preflight;
pub mod probes;
