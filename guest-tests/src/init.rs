//! What the runner does as PID 1 of the initramfs: the minimal userspace
//! (pseudo filesystems, console, PATH) before the suite, and power-off
//! after it.
//!
//! PID 1 must never exit (the kernel panics) and must never hang (the host
//! waits for power-off): [`power_off`] bounds the final `sync`, and falls
//! back to exiting (a visible kernel panic) if reboot(2) fails.

use std::fs::{self, OpenOptions};
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::report::{self, Console};
use crate::sys;

/// The PATH every program the suite runs is searched in.
pub const PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// The pseudo filesystems mounted at boot: (type, mount point, data).
const MOUNTS: &[(&str, &str, &str)] = &[
    ("proc", "/proc", ""),
    ("sysfs", "/sys", ""),
    ("devtmpfs", "/dev", "mode=0755"),
    ("tmpfs", "/tmp", "mode=1777"),
];

/// Sets up PID 1's world. Returns warnings (nothing here is fatal: a test
/// that needs what failed will say so).
pub fn setup() -> Vec<String> {
    let mut warnings = Vec::new();
    for (fstype, target, data) in MOUNTS {
        let target = Path::new(target);
        if let Err(e) = fs::create_dir_all(target) {
            warnings.push(format!("mkdir {}: {e}", target.display()));
        }
        let flags = libc::MS_NOSUID
            | if *fstype == "devtmpfs" {
                0
            } else {
                libc::MS_NODEV
            };
        match sys::mount(fstype, target, fstype, flags, data) {
            Ok(()) => {}
            // Already mounted (e.g. the kernel mounted devtmpfs itself).
            Err(e) if e.errno == libc::EBUSY => {}
            Err(e) => warnings.push(e.to_string()),
        }
        if *fstype == "devtmpfs" {
            fix_console_fds(&mut warnings);
        }
    }
    // SAFETY: PID 1 is still single-threaded here; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PATH", PATH) };
    warnings
}

/// The kernel opens /dev/console as fds 0-2 for init only if the
/// initramfs has that node; without it init starts with none. Opens the
/// console from devtmpfs for any of the three that is not open.
fn fix_console_fds(warnings: &mut Vec<String>) {
    // SAFETY: fcntl(F_GETFD) only inspects the descriptor table.
    let missing: Vec<i32> = (0..3)
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0)
        .collect();
    if missing.is_empty() {
        return;
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        Ok(console) => {
            let fd = console.into_raw_fd();
            for target in &missing {
                if *target != fd {
                    // SAFETY: dup2 onto a descriptor number that is not open.
                    unsafe { libc::dup2(fd, *target) };
                }
            }
            if !missing.contains(&fd) {
                // SAFETY: `fd` is ours and now duplicated where needed.
                unsafe { libc::close(fd) };
            }
        }
        Err(e) => warnings.push(format!(
            "no console (fds {missing:?} closed): /dev/console: {e}"
        )),
    }
}

/// How long the final sync may take before the runner powers off anyway.
const SYNC_DEADLINE: Duration = Duration::from_secs(15);

/// Syncs (bounded), then powers the machine off. If reboot(2) fails the
/// runner exits, which makes the kernel panic visibly rather than hang.
pub fn power_off(console: Console) -> ! {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        sys::sync();
        let _ = tx.send(());
    });
    if rx.recv_timeout(SYNC_DEADLINE).is_err() {
        report::say(
            console,
            &format!("sync did not finish within {SYNC_DEADLINE:?}; powering off anyway"),
        );
    }
    report::say(console, "powering off");
    let err = sys::power_off();
    report::say(console, &format!("{err}; exiting PID 1 instead"));
    std::process::exit(1);
}
