//! Errno names for error records (the kernel hands us numbers).

/// The symbolic name of `errno` (`EPERM`), from nix's table of Linux's
/// errnos, or `E<n>` for a number it does not know.
pub fn name(errno: i32) -> String {
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("E{errno}"),
        known => format!("{known:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_common_errnos_and_falls_back_to_number() {
        assert_eq!(name(1), "EPERM");
        assert_eq!(name(22), "EINVAL");
        assert_eq!(name(9), "EBADF");
        assert_eq!(name(28), "ENOSPC");
        assert_eq!(name(87), "EUSERS");
        assert_eq!(name(95), "EOPNOTSUPP");
        assert_eq!(name(11), "EAGAIN");
        assert_eq!(name(200), "E200");
        assert_eq!(name(0), "E0");
        assert_eq!(name(-5), "E-5");
    }
}
