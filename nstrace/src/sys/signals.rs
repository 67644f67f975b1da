//! Stop signals from the first instruction. A script's background job
//! starts with SIGINT ignored, and tokio's handlers exist only once the
//! session installs them, after ~100 ms of loading: a SIGINT, SIGTERM or
//! SIGHUP before that was lost and the tracer ran on. [`install`] is the
//! first thing `main` does: the signal is remembered, and start-up asks
//! [`requested`] between its steps.

use std::sync::atomic::{AtomicI32, Ordering};

static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// The signals that stop nstrace.
pub const STOP: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn remember(sig: libc::c_int) {
    // Async-signal-safe: one atomic store.
    REQUESTED.store(sig, Ordering::SeqCst);
}

/// Takes over [`STOP`] whatever disposition was inherited (ignored
/// included). Handlers installed later (tokio's) chain to this one, so the
/// signal is seen by both.
pub fn install() {
    for sig in STOP {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the
        // handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = remember as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // Interrupted reads and waits resume; start-up polls the flag.
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The stop signal received so far, if any.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ignored_sigint_is_taken_over_and_remembered() {
        // SAFETY: setting SIGHUP's disposition in a test process, then
        // raising it at ourselves with our handler installed.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        install();
        assert_eq!(requested(), None);
        // SAFETY: raising a signal whose handler, installed above, only stores its number.
        unsafe { libc::raise(libc::SIGHUP) };
        assert_eq!(requested(), Some(libc::SIGHUP));
        REQUESTED.store(0, Ordering::SeqCst);
    }
}
