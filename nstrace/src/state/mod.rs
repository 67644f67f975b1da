//! What is alive (the registry), when a namespace ended (the ends, one
//! method per kind), which held namespaces outlived their container (the
//! leaks), and the records those changes make (`records`).

pub mod ends;
pub mod leaks;
pub mod records;
pub mod registry;
