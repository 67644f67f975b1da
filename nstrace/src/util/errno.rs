//! Errno names for error records (the kernel hands us numbers).

/// The symbolic name of `errno` (`EPERM`), or `E<n>` for one we do not list.
pub fn name(errno: i32) -> String {
    let known = match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        7 => "E2BIG",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        24 => "EMFILE",
        28 => "ENOSPC",
        38 => "ENOSYS",
        87 => "EUSERS",
        95 => "EOPNOTSUPP",
        _ => return format!("E{errno}"),
    };
    known.to_string()
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
        assert_eq!(name(200), "E200");
    }
}
