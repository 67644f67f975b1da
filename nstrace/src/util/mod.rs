//! Leaf helpers every layer may use: making untrusted strings inert,
//! errno names, errors that carry a hint.

pub mod errno;
pub mod error;
pub mod escape;
