//! What a record is told beyond the kernel's event: which container its
//! process (or namespace) belongs to.

pub mod container;
