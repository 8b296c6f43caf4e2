//! The few system calls the standard library and tokio do not wrap:
//! `pipe2`/`splice` for the zero-copy data path and `setrlimit` for the
//! open-file limit. This is the crate's only `unsafe` code; each call is a
//! plain FFI call on file descriptors we own, checked for errors.

#![allow(unsafe_code)]

use std::io;

/// Raise the soft open-file limit to the hard limit. Returns the new soft limit.
#[cfg(unix)]
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit struct, read only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Unix
    Ok(lim.rlim_cur as u64)
}

/// Not supported off Unix.
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> io::Result<u64> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no rlimit"))
}

#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    /// A non-blocking kernel pipe used as the splice buffer.
    #[derive(Debug)]
    pub struct Pipe {
        /// Read end.
        pub read: OwnedFd,
        /// Write end.
        pub write: OwnedFd,
    }

    impl Pipe {
        /// `pipe2(O_NONBLOCK | O_CLOEXEC)`.
        pub fn new() -> io::Result<Pipe> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` has room for the two descriptors pipe2 writes.
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            Ok(Pipe { read, write })
        }
    }

    /// Move up to `len` bytes between two descriptors without copying them to
    /// user space. One side must be a pipe. Non-blocking: `WouldBlock` when
    /// the source is empty or the destination full.
    pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: null offsets mean "current position"; the descriptors are
        // borrowed from live objects owned by the caller for this call.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Raw descriptor of a pipe end.
    pub fn fd(f: &OwnedFd) -> RawFd {
        f.as_raw_fd()
    }
}
