//! Errors a user can act on: a one-line cause plus a hint.

use std::fmt;

/// An error with advice attached. `main` prints the cause, then the hint.
#[derive(Debug)]
pub struct Hinted {
    pub cause: String,
    pub hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cause)
    }
}

impl std::error::Error for Hinted {}

/// Builds an [`anyhow::Error`] carrying a hint.
pub fn hinted(cause: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    Hinted {
        cause: cause.into(),
        hint: hint.into(),
    }
    .into()
}

/// The hint attached anywhere in `err`'s chain, if any.
pub fn hint_of(err: &anyhow::Error) -> Option<&str> {
    err.chain()
        .find_map(|e| e.downcast_ref::<Hinted>())
        .map(|h| h.hint.as_str())
}
