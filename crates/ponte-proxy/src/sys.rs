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

/// The `GLIBC_TUNABLES` setting [`restart_with_fast_memcpy`] adds: glibc
/// copies of up to 4 MiB take its vector loops instead of `rep movsb`.
pub const FAST_MEMCPY_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=4194304";

/// Starts this program again, once, with [`FAST_MEMCPY_TUNABLE`] when it
/// runs on glibc on an AMD Zen 3 or later CPU and `GLIBC_TUNABLES` is not
/// set; else returns at once. Call it first thing in `main`, before any
/// thread exists.
///
/// Why: glibc before 2.39 copies 2 KiB and more with `rep movsb`, and on
/// these CPUs that instruction runs about twelve times slower when the
/// destination is a few bytes past the source, counted modulo 4 KiB
/// (glibc bug 30994, fixed in 2.39). A network stack does exactly that
/// whenever it copies a page-aligned buffer behind a 2-, 4- or 5-byte
/// header: the Noise channel's, a frame's, and rustls's for every TLS
/// record the relay sends. On a Debian 12 AMD EPYC VM such a copy moved
/// 3.4 GB/s against 40 GB/s, and a file download through the relay cost
/// the relay a third less CPU once it was avoided (see
/// docs/BENCHMARKS-server.md). Tunables are read only when a program
/// starts, hence the restart: the same process (`execve` keeps the pid and
/// open files), arguments and environment, plus the tunable. An operator
/// who sets `GLIBC_TUNABLES` (to anything) keeps exactly that.
pub fn restart_with_fast_memcpy() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
    restart::run();
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
mod restart {
    use std::os::unix::process::CommandExt as _;

    pub(super) fn run() {
        if let Some(tunables) = std::env::var_os("GLIBC_TUNABLES") {
            if tunables == super::FAST_MEMCPY_TUNABLE {
                restore_name();
            }
            return;
        }
        if secure_execution() {
            return;
        }
        if !affected_cpu(cpu_id()) {
            return;
        }
        let mut args = std::env::args_os();
        let Some(arg0) = args.next() else { return };
        // Returns only if the exec failed: then this process goes on as it
        // is (slower copies, nothing else).
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", super::FAST_MEMCPY_TUNABLE)
            .exec();
    }

    /// Gives the process back the name `ps`, `top`, `pgrep` and `pkill`
    /// know it by. The kernel names a process after the file it executes,
    /// and the restart executes `/proc/self/exe`: without this a `ponte`
    /// started by hand shows as `exe`, and `pkill ponte` misses it. The
    /// name is `argv[0]`'s last component, which is what the kernel took
    /// for the first start (the shell and systemd execute the path they
    /// pass as `argv[0]`), cut to the kernel's 15 bytes. Only a process
    /// still called `exe` is renamed, so a program really named so, or one
    /// started by a parent that already had the tunable, keeps its name.
    fn restore_name() {
        let Ok(comm) = std::fs::read("/proc/self/comm") else {
            return;
        };
        if comm.strip_suffix(b"\n").unwrap_or(&comm) != b"exe" {
            return;
        }
        let Some(name) = std::env::args_os()
            .next()
            .and_then(|arg0| process_name(&arg0))
        else {
            return;
        };
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes, which `name` is; it renames only the calling thread, the
        // main one, whose name is the process's.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }

    /// The kernel's name for a program started as `arg0`: its last path
    /// component, at most 15 bytes, NUL-terminated. `None` for an empty
    /// one or one holding a NUL.
    pub(super) fn process_name(arg0: &std::ffi::OsStr) -> Option<std::ffi::CString> {
        use std::os::unix::ffi::OsStrExt as _;
        let base = std::path::Path::new(arg0).file_name()?.as_bytes();
        std::ffi::CString::new(&base[..base.len().min(15)]).ok()
    }

    /// A set-user-ID start: glibc may drop the tunable there, and the
    /// program would then start itself again and again.
    fn secure_execution() -> bool {
        // SAFETY: getauxval only reads the process's auxiliary vector.
        unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
    }

    /// The CPU's vendor (CPUID leaf 0) and family (leaf 1, base plus
    /// extended). From the instruction, not `/proc/cpuinfo`, which a
    /// hardened unit hides (`ProcSubset=pid`).
    fn cpu_id() -> ([u8; 12], u32) {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 CPU. (Safe to call in recent
        // Rust; unsafe in the 1.85 this workspace supports.)
        #[allow(unused_unsafe)]
        let (leaf0, leaf1) = unsafe { (__cpuid(0), __cpuid(1)) };
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
        let eax = leaf1.eax;
        let base = (eax >> 8) & 0xf;
        let family = if base == 0xf {
            base + ((eax >> 20) & 0xff)
        } else {
            base
        };
        (vendor, family)
    }

    /// AMD, CPU family 0x19 (Zen 3, Zen 4) or later.
    pub(super) fn affected_cpu((vendor, family): ([u8; 12], u32)) -> bool {
        &vendor == b"AuthenticAMD" && family >= 0x19
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use super::{affected_cpu, process_name};
        use std::ffi::OsStr;

        #[test]
        fn the_name_is_argv0s_last_component_cut_as_the_kernel_cuts_it() {
            let name = |s: &str| process_name(OsStr::new(s)).map(|c| c.into_bytes());
            assert_eq!(name("/usr/local/bin/ponte"), Some(b"ponte".to_vec()));
            assert_eq!(name("ponte"), Some(b"ponte".to_vec()));
            assert_eq!(
                name("./target/release/ponte-bench"),
                Some(b"ponte-bench".to_vec())
            );
            assert_eq!(
                name("/opt/a-very-long-program-name"),
                Some(b"a-very-long-pro".to_vec()),
                "15 bytes, as the kernel keeps"
            );
            assert_eq!(name(""), None);
            assert_eq!(name("/"), None);
        }

        #[test]
        fn zen_3_and_later_are_affected_and_nothing_else() {
            assert!(affected_cpu((*b"AuthenticAMD", 0x19)));
            assert!(affected_cpu((*b"AuthenticAMD", 0x1a)));
            assert!(!affected_cpu((*b"AuthenticAMD", 0x17)), "Zen 2");
            assert!(!affected_cpu((*b"GenuineIntel", 6)));
        }

        /// This machine's CPU as `/proc/cpuinfo` describes it.
        #[test]
        fn the_instruction_agrees_with_proc_cpuinfo() {
            let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
                return;
            };
            let field = |name: &str| {
                info.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == name).then(|| v.trim().to_owned())
                })
            };
            let (vendor, family) = super::cpu_id();
            assert_eq!(field("vendor_id").unwrap().as_bytes(), vendor);
            assert_eq!(field("cpu family").unwrap().parse::<u32>().unwrap(), family);
        }
    }
}
