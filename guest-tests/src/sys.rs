//! Thin, safe wrappers over the system calls the runner needs and that the
//! standard library does not offer: mount(2), umount2(2), finit_module(2),
//! reboot(2), sync(2), getrandom(2), uname(2).
//!
//! Every wrapper returns [`SysError`], which names the call, its argument
//! and the errno (symbolic and numeric), so that a failed test's message
//! says exactly what the kernel refused.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A failed system call: which call, on what, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{call}({what}): {}", Errno(*errno))]
pub struct SysError {
    /// The call's name, e.g. `mount`.
    pub call: &'static str,
    /// What it was called on (a path, a module, ...).
    pub what: String,
    /// The raw errno.
    pub errno: i32,
}

impl SysError {
    /// Builds an error from the calling thread's current errno.
    pub fn last(call: &'static str, what: impl Into<String>) -> Self {
        Self::from_io(call, what, &io::Error::last_os_error())
    }

    /// Builds an error from an [`io::Error`] (errno 0 if it has none).
    pub fn from_io(call: &'static str, what: impl Into<String>, err: &io::Error) -> Self {
        SysError {
            call,
            what: what.into(),
            errno: err.raw_os_error().unwrap_or(0),
        }
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, SysError>;

/// An errno, displayed as `ENOENT (2, No such file or directory)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The symbolic name of the errno, or `E?` when the table lacks it.
    pub fn name(self) -> &'static str {
        errno_name(self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = io::Error::from_raw_os_error(self.0).to_string();
        // io::Error's text ends with " (os error N)"; keep only the words.
        let words = text.split(" (os error").next().unwrap_or(&text);
        write!(f, "{} ({}, {})", self.name(), self.0, words)
    }
}

/// Symbolic names of the errnos the runner's calls can return.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ETIME => "ETIME",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EUCLEAN => "EUCLEAN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYEXPIRED => "EKEYEXPIRED",
        libc::EKEYREVOKED => "EKEYREVOKED",
        libc::EKEYREJECTED => "EKEYREJECTED",
        _ => "E?",
    }
}

/// Converts a path to a C string; a path with a NUL byte is refused.
fn c_path(path: &Path) -> std::result::Result<CString, io::Error> {
    c_str(path.as_os_str())
}

fn c_str(s: &OsStr) -> std::result::Result<CString, io::Error> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// mount(2): mounts `source` (a device or a pseudo name) of type `fstype`
/// on `target` with the filesystem-specific `data` string.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let what = format!(
        "{source} on {} type {fstype} data {data:?}",
        target.display()
    );
    let to_err = |e: io::Error| SysError::from_io("mount", what.clone(), &e);
    let source = c_str(OsStr::new(source)).map_err(to_err)?;
    let target = c_path(target).map_err(to_err)?;
    let fstype = c_str(OsStr::new(fstype)).map_err(to_err)?;
    let data = c_str(OsStr::new(data)).map_err(to_err)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive
    // the call; the kernel copies them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::last("mount", what))
    }
}

/// umount2(2) with no flags: a busy filesystem fails with EBUSY.
pub fn umount(target: &Path) -> Result<()> {
    let what = target.display().to_string();
    let target = c_path(target).map_err(|e| SysError::from_io("umount2", what.clone(), &e))?;
    // SAFETY: `target` is a valid NUL-terminated string.
    let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::last("umount2", what))
    }
}

/// Makes `new_root` (a mount point) the root directory of this process
/// and its threads: chdir into it, move its mount over `/`, chroot to it
/// (what switch_root(8) does, without deleting the initramfs).
pub fn switch_root(new_root: &Path) -> Result<()> {
    let what = new_root.display().to_string();
    std::env::set_current_dir(new_root)
        .map_err(|e| SysError::from_io("chdir", what.clone(), &e))?;
    mount(".", Path::new("/"), "", libc::MS_MOVE, "")?;
    let dot = c_str(OsStr::new(".")).map_err(|e| SysError::from_io("chroot", what.clone(), &e))?;
    // SAFETY: `dot` is a valid NUL-terminated string.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(SysError::last("chroot", what));
    }
    std::env::set_current_dir("/").map_err(|e| SysError::from_io("chdir", "/", &e))
}

/// finit_module(2) flag: the file is compressed and the kernel should
/// decompress it (Linux 6.4+).
pub const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

/// finit_module(2): loads the kernel module in `file` with no parameters.
pub fn finit_module(file: &std::fs::File, what: &str, flags: libc::c_int) -> Result<()> {
    let params = c"";
    // SAFETY: the fd is open for the duration of the call and `params` is a
    // valid NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::last("finit_module", what))
    }
}

/// `BLKDISCARD`: discard a byte range of a block device.
pub const BLKDISCARD: libc::c_ulong = 0x1277;
/// `BLKZEROOUT`: write zeroes to a byte range of a block device.
pub const BLKZEROOUT: libc::c_ulong = 0x127f;

/// A block device range ioctl (`BLKDISCARD`, `BLKZEROOUT`) on
/// `[offset, offset + len)`.
pub fn block_range_ioctl(
    file: &std::fs::File,
    request: libc::c_ulong,
    call: &'static str,
    offset: u64,
    len: u64,
) -> Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: the fd is open for the call and `range` is the two u64s the
    // request reads.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::last(
            call,
            format!("bytes {offset}..{}", offset + len),
        ))
    }
}

/// delete_module(2) with O_NONBLOCK: unloads module `name` (fails with
/// EBUSY while it is in use).
pub fn delete_module(name: &str) -> Result<()> {
    let c_name = CString::new(name).map_err(|_| SysError::last("delete_module", name))?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the call.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, c_name.as_ptr(), libc::O_NONBLOCK) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::last("delete_module", name))
    }
}

/// sync(2): flushes every filesystem's dirty data.
pub fn sync() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// reboot(2) with RB_POWER_OFF. Returns only on failure.
pub fn power_off() -> SysError {
    // SAFETY: reboot with a valid command; it does not return on success.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    SysError::last("reboot", "RB_POWER_OFF")
}

/// getrandom(2) flag (Linux 5.6+): never block, use the not yet
/// initialized pool if need be.
const GRND_INSECURE: libc::c_uint = 0x0004;

/// Fills `buf` from the kernel's CSPRNG, blocking until it is seeded.
pub fn getrandom(buf: &mut [u8]) -> Result<()> {
    getrandom_flags(buf, 0)
}

/// Fills `buf` with random bytes without ever blocking: GRND_INSECURE,
/// or GRND_NONBLOCK on kernels that lack it. For non-secret values (data
/// seeds) early in boot, when the CSPRNG may not be seeded yet.
pub fn getrandom_nonblocking(buf: &mut [u8]) -> Result<()> {
    match getrandom_flags(buf, GRND_INSECURE) {
        Err(e) if e.errno == libc::EINVAL => getrandom_flags(buf, libc::GRND_NONBLOCK),
        other => other,
    }
}

fn getrandom_flags(buf: &mut [u8], flags: libc::c_uint) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(SysError::from_io(
                "getrandom",
                format!("{} bytes", buf.len()),
                &err,
            ));
        }
        // n >= 0 and at most rest.len().
        done += n.unsigned_abs();
    }
    Ok(())
}

/// The kernel's identity, from uname(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uname {
    /// `uname -r`, e.g. `7.3.4+deb14-cloud-amd64`.
    pub release: String,
    /// `uname -v`, e.g. `#1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1~bpo13+1 (...)`.
    pub version: String,
}

/// uname(2): the running kernel's release and version strings.
pub fn uname() -> Result<Uname> {
    // SAFETY: utsname is plain old data; zeroed is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(SysError::last("uname", ""));
    }
    Ok(Uname {
        release: field_to_string(&uts.release),
        version: field_to_string(&uts.version),
    })
}

fn field_to_string(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The kernel's major and minor version from a release string such as
/// `7.3.4+deb14-cloud-amd64`; `None` if it does not start with `N.N`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_display_names_symbol_number_and_text() {
        let shown = Errno(libc::ENOENT).to_string();
        assert_eq!(shown, "ENOENT (2, No such file or directory)");
        assert_eq!(Errno(4095).name(), "E?");
    }

    #[test]
    fn sys_error_names_call_and_target() {
        let err = SysError {
            call: "finit_module",
            what: "/lib/modules/icelab_vblk.ko".into(),
            errno: libc::ENOEXEC,
        };
        assert_eq!(
            err.to_string(),
            "finit_module(/lib/modules/icelab_vblk.ko): ENOEXEC (8, Exec format error)"
        );
    }

    #[test]
    fn kernel_version_parses_debian_releases() {
        assert_eq!(kernel_version("7.3.4+deb14-cloud-amd64"), Some((7, 3)));
        assert_eq!(kernel_version("6.15.0-rc1"), Some((6, 15)));
        assert_eq!(kernel_version("6"), None);
        assert_eq!(kernel_version("cloud"), None);
    }

    #[test]
    fn getrandom_fills_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        getrandom(&mut a).expect("getrandom");
        getrandom_nonblocking(&mut b).expect("getrandom nonblocking");
        assert_ne!(a, b);
    }
}
