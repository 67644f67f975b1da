//! Asking the kernel whether a namespace still exists, through an nsfs file
//! handle built from its id, kind and inode (Linux 6.18+: the uapi says such
//! handles may be built in user space). `open_by_handle_at` opens it while
//! anything holds a reference and fails with `ESTALE` from the moment the
//! last reference went, whatever held it: no /proc scan can see as much.

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::model::NsKind;

/// `FILEID_NSFS` in `<linux/exportfs.h>`.
const FILEID_NSFS: i32 = 0xf1;

/// `struct file_handle` with the 16-byte `struct nsfs_file_handle` inline.
#[repr(C)]
struct NsHandle {
    handle_bytes: u32,
    handle_type: i32,
    ns_id: u64,
    ns_type: u32,
    ns_inum: u32,
}

/// What the kernel answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Alive,
    Gone,
}

pub struct Handles {
    /// Any nsfs file: it names the filesystem the handles belong to.
    nsfs: File,
}

impl Handles {
    /// Handles that work on this kernel, or why not.
    pub fn open() -> Result<Handles, String> {
        let nsfs =
            File::open("/proc/self/ns/user").map_err(|e| format!("/proc/self/ns/user: {e}"))?;
        let h = Handles { nsfs };
        // Our own network namespace must round-trip: its id from the kernel's
        // own handle, then opened through one we build.
        let own = own_handle("/proc/self/ns/net")?;
        if own.handle_type != FILEID_NSFS || own.ns_id == 0 {
            return Err("this kernel's nsfs hands out no namespace ids".into());
        }
        match h.ask_raw(own.ns_type, own.ns_inum, own.ns_id) {
            Ok(Answer::Alive) => Ok(h),
            Ok(Answer::Gone) => Err("open_by_handle_at called a live namespace stale".into()),
            Err(e) => Err(format!("open_by_handle_at: {e}")),
        }
    }

    /// Whether the namespace (kind, inode, id) still exists. `Err` for an
    /// answer that is neither (e.g. EPERM): the caller must not guess.
    pub fn ask(&self, kind: NsKind, inode: u32, ns_id: u64) -> Result<Answer, std::io::Error> {
        self.ask_raw(kind.flag() as u32, inode, ns_id)
    }

    fn ask_raw(&self, ns_type: u32, inode: u32, ns_id: u64) -> Result<Answer, std::io::Error> {
        let mut h = NsHandle {
            handle_bytes: 16,
            handle_type: FILEID_NSFS,
            ns_id,
            ns_type,
            ns_inum: inode,
        };
        // SAFETY: `h` is a valid file_handle of 16 payload bytes; a returned
        // fd is owned (and closed at once: holding it would pin the namespace).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.nsfs.as_raw_fd(),
                &mut h as *mut NsHandle,
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: fd is the one open_by_handle_at just returned, owned by no one else.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            return Ok(Answer::Alive);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ESTALE) => Ok(Answer::Gone),
            _ => Err(err),
        }
    }
}

/// The kernel's own handle for an nsfs file.
fn own_handle(path: &str) -> Result<NsHandle, String> {
    let mut h = NsHandle {
        handle_bytes: 16,
        handle_type: 0,
        ns_id: 0,
        ns_type: 0,
        ns_inum: 0,
    };
    let mut mount_id: libc::c_int = 0;
    let c = std::ffi::CString::new(path).expect("no NUL");
    // SAFETY: valid path, a handle buffer of 16 payload bytes, an int out-param.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut h as *mut NsHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return Err(format!(
            "name_to_handle_at({path}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root and a 6.18+ kernel; elsewhere it says why and passes.
    #[test]
    fn own_namespace_is_alive_and_a_wrong_id_is_gone() {
        let h = match Handles::open() {
            Ok(h) => h,
            Err(why) => {
                eprintln!("skipping: no nsfs handles here: {why}");
                return;
            }
        };
        let own = own_handle("/proc/self/ns/net").unwrap();
        assert_eq!(
            h.ask(NsKind::Net, own.ns_inum, own.ns_id).unwrap(),
            Answer::Alive
        );
        assert_eq!(
            h.ask(NsKind::Net, own.ns_inum, u64::MAX - 1).unwrap(),
            Answer::Gone
        );
        assert_eq!(
            h.ask(NsKind::Uts, own.ns_inum, own.ns_id).unwrap(),
            Answer::Gone
        );
    }
}
