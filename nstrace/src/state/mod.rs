//! What is alive (the registry), when a namespace ended (the ends, one
//! method per kind), and the records those changes make (`records`).

pub mod ends;
pub mod records;
pub mod registry;
