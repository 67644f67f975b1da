//! nstrace: a live timeline of Linux namespaces, from eBPF.
//!
//! The binary is a thin shell over this library:
//! - [`kernel`] knows the running kernel: preflight checks, BTF offsets, loading
//!   and attaching the eBPF programs;
//! - [`decode`] turns raw ring-buffer events into [`record::Record`]s;
//! - [`procfs`] reads namespaces from /proc; [`registry`] keeps what is alive;
//!   [`ends`] decides when a namespace is pinned or gone (fentry, nsfs
//!   handles, or inference, side by side);
//! - [`listing`] is `nstrace ls`; [`report`] is `nstrace report` (a saved trace, offline); [`generate`] writes the man page and completions; [`summary`] is the closing summary;
//! - [`output`] prints records, one layer per format; [`timeline`] is the
//!   lanes model its pictures (Perfetto, HTML) draw; [`escape`] makes
//!   untrusted strings inert on a terminal;
//! - [`session`] ties them together until Ctrl-C.

pub mod cli;
pub mod command;
pub mod container;
pub mod decode;
pub mod ends;
pub mod errno;
pub mod error;
pub mod escape;
pub mod filter;
pub mod generate;
pub mod kernel;
pub mod listing;
pub mod output;
pub mod procfs;
pub mod record;
pub mod registry;
pub mod report;
pub mod session;
pub mod signals;
pub mod summary;
pub mod time;
pub mod timeline;
