//! The subcommands other than tracing, one file each.

pub mod generate;
pub mod ls;
pub mod report;
