//! What is alive (the registry) and when a namespace ended (the ends, one
//! method per kind).

pub mod ends;
pub mod registry;
