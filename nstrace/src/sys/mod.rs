//! The code that reads the operating system outside the eBPF programs:
//! /proc and nsfs (file handles), clocks, stop signals.

pub mod nsfs;
pub mod procfs;
pub mod signals;
pub mod time;
