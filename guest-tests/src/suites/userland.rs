//! The userland suite: the guest as a machine for the user's own tests
//! (`icelab run --guest-cmd`, `icelab shell`).
//!
//! | test | does |
//! |---|---|
//! | `driver-load` | as in the smoke suite: icelab_vblk drives every virtio disk |
//! | `switch-root` | finds the root disk (serial `icelab-root`) and the share disk (`icelab-share`), mounts them, moves /dev, /proc and /sys over and makes the root filesystem image `/`; the runner stays PID 1 |
//! | `command` | runs `bash -c CMD` (or a login shell) in a session keyring of its own, with `ICELAB_*` variables naming the disks; passes when it exits 0 |
//! | `kernel-log` | no kernel warning, BUG, oops or call trace; the facts list fscrypt's blk-crypto lines (which path it took) |
//! | `cleanup` | stops what the command left running and unmounts the share disk, so that the host can copy it back |

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use icelab_contract::cmdline::{ROOT_SERIAL, SHARE_MOUNT, SHARE_SERIAL, Userland, UserlandIo};
use serde_json::json;

use super::smoke;
use super::steps;
use crate::kmsg;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::sys;

/// The userland suite's tests, in order.
pub const TESTS: &[TestDef] = &[
    TestDef {
        name: "driver-load",
        timeout: Duration::from_secs(90),
        needs: &[],
        fatal: true,
        run: smoke::driver_load,
    },
    TestDef {
        name: "switch-root",
        timeout: Duration::from_secs(120),
        needs: &[],
        fatal: true,
        run: switch_root,
    },
    // The host's --timeout bounds the command; this only keeps the runner
    // from waiting forever on a guest nobody watches.
    TestDef {
        name: "command",
        timeout: Duration::from_secs(7 * 24 * 3600),
        needs: &["switch-root"],
        fatal: false,
        run: command,
    },
    TestDef {
        name: "kernel-log",
        timeout: Duration::from_secs(30),
        needs: &[],
        fatal: false,
        run: kernel_log,
    },
    TestDef {
        name: "cleanup",
        timeout: Duration::from_secs(120),
        needs: &["switch-root"],
        fatal: false,
        run: cleanup,
    },
];

/// The console: an interactive command's terminal.
const CONSOLE_TTY: &str = "/dev/ttyS0";
/// The output port: a captured command's stdout and stderr.
const OUTPUT_TTY: &str = "/dev/ttyS2";
/// Where the root filesystem is mounted before it becomes `/`.
const NEW_ROOT: &str = "/newroot";
/// How much of the command's output the test's message and facts keep.
const TAIL_BYTES: usize = 16 << 10;
/// Lines of the output's end in a failing test's message.
const TAIL_LINES: usize = 20;
/// The PATH of the command.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The icelab devices `switch-root` found (`/dev/vda`, ...), in order.
static DEVICES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn userland(ctx: &Ctx) -> Result<&Userland, Failure> {
    ctx.config.userland.as_ref().ok_or_else(|| {
        Failure("no userland parameters (icelab.devices, icelab.share, icelab.io)".into())
    })
}

/// A virtio disk: its name in /sys/block and its serial (GET_ID).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Disk {
    name: String,
    serial: String,
}

/// The `vd*` disks, ordered as the driver named them (`vdz` before `vdaa`).
fn virtio_disks() -> Vec<Disk> {
    let mut disks: Vec<Disk> = fs::read_dir("/sys/block")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("vd"))
                .map(|name| Disk {
                    serial: fs::read_to_string(format!("/sys/block/{name}/serial"))
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_default(),
                    name,
                })
                .collect()
        })
        .unwrap_or_default();
    disks.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
    disks
}

/// The disks split into (icelab devices, root, share).
fn classify(disks: &[Disk]) -> (Vec<&Disk>, Option<&Disk>, Option<&Disk>) {
    let root = disks.iter().find(|d| d.serial == ROOT_SERIAL);
    let share = disks.iter().find(|d| d.serial == SHARE_SERIAL);
    let devices = disks
        .iter()
        .filter(|d| d.serial != ROOT_SERIAL && d.serial != SHARE_SERIAL)
        .collect();
    (devices, root, share)
}

/// `switch-root`: the root filesystem image becomes `/`.
fn switch_root(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let userland = userland(ctx)?;
    let want = userland.devices as usize + 1 + usize::from(userland.share);
    ctx.step(format!("waiting for {want} virtio disks"));
    let deadline = Instant::now() + ctx.scaled(Duration::from_secs(30));
    let disks = loop {
        let disks = virtio_disks();
        if disks.len() >= want || Instant::now() > deadline {
            break disks;
        }
        thread::sleep(Duration::from_millis(50));
    };
    facts.set(
        "disks",
        disks
            .iter()
            .map(|d| json!({"name": d.name, "serial": d.serial, "size": steps::disk_size(&d.name)}))
            .collect::<Vec<_>>(),
    );
    let (devices, root, share) = classify(&disks);
    let Some(root) = root else {
        return fail(format!(
            "no disk with serial {ROOT_SERIAL} among {} virtio disks: the host attaches the root \
             filesystem image as one",
            disks.len()
        ));
    };
    if devices.len() != userland.devices as usize {
        return fail(format!(
            "{} icelab devices ({}), expected {} (icelab.devices)",
            devices.len(),
            devices
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            userland.devices
        ));
    }
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(|e| Failure(format!("mkdir {NEW_ROOT}: {e}")))?;
    ctx.step(format!("mounting /dev/{} on {NEW_ROOT}", root.name));
    sys::mount(&format!("/dev/{}", root.name), new_root, "ext4", 0, "")?;
    let mut shared = String::new();
    if userland.share {
        let Some(share) = share else {
            return fail(format!(
                "no disk with serial {SHARE_SERIAL} (icelab.share=1)"
            ));
        };
        let target = new_root.join(SHARE_MOUNT.trim_start_matches('/'));
        fs::create_dir_all(&target)
            .map_err(|e| Failure(format!("mkdir {}: {e}", target.display())))?;
        ctx.step(format!("mounting /dev/{} on {SHARE_MOUNT}", share.name));
        sys::mount(&format!("/dev/{}", share.name), &target, "ext4", 0, "")?;
        shared = format!(", /dev/{} on {SHARE_MOUNT}", share.name);
        facts.set("share", format!("/dev/{}", share.name));
    }
    ctx.step("moving /dev, /proc, /sys");
    for dir in ["/dev", "/proc", "/sys"] {
        let target = new_root.join(&dir[1..]);
        fs::create_dir_all(&target)
            .map_err(|e| Failure(format!("mkdir {}: {e}", target.display())))?;
        sys::mount(dir, &target, "", libc::MS_MOVE, "")?;
    }
    for (fstype, dir, data) in [
        ("tmpfs", "tmp", "mode=1777"),
        ("tmpfs", "run", "mode=0755"),
        ("devpts", "dev/pts", "gid=5,mode=620,ptmxmode=0666"),
        ("tmpfs", "dev/shm", "mode=1777"),
    ] {
        let target = new_root.join(dir);
        fs::create_dir_all(&target)
            .map_err(|e| Failure(format!("mkdir {}: {e}", target.display())))?;
        sys::mount(fstype, &target, fstype, libc::MS_NOSUID, data)?;
    }
    ctx.step("making the root filesystem /");
    sys::switch_root(new_root)?;
    // No init system runs to name the machine: the image's name (a prompt
    // shows it) is set here.
    if let Ok(name) = fs::read_to_string("/etc/hostname") {
        let name = name.trim();
        // SAFETY: the pointer and length describe `name`'s bytes.
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        facts.set("hostname", name);
    }
    let names: Vec<PathBuf> = devices
        .iter()
        .map(|d| PathBuf::from(format!("/dev/{}", d.name)))
        .collect();
    facts.set("root", format!("/dev/{}", root.name));
    facts.set(
        "devices",
        names
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    );
    let list = names
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    *DEVICES.lock().unwrap_or_else(|p| p.into_inner()) = names;
    Ok(format!(
        "/dev/{} is /{shared}; icelab devices: {list}",
        root.name
    ))
}

/// The command's environment: the `ICELAB_*` variables and a login-like
/// base.
fn environment(userland: &Userland, devices: &[PathBuf], native: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), PATH.to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
        ("USER".to_owned(), "root".to_owned()),
        ("LOGNAME".to_owned(), "root".to_owned()),
        ("SHELL".to_owned(), "/bin/bash".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        (
            "TERM".to_owned(),
            match userland.io {
                UserlandIo::Console => "xterm-256color",
                UserlandIo::Capture => "dumb",
            }
            .to_owned(),
        ),
        (
            "ICELAB_INLINE_ENCRYPTION".to_owned(),
            if native { "native" } else { "none" }.to_owned(),
        ),
    ];
    let path = |p: &PathBuf| p.display().to_string();
    let all: Vec<String> = devices.iter().map(path).collect();
    env.push(("ICELAB_DEVS".to_owned(), all.join(" ")));
    if let Some(test) = devices.first() {
        env.push(("ICELAB_TEST_DEV".to_owned(), path(test)));
    }
    if let Some(scratch) = devices.get(1) {
        env.push(("ICELAB_SCRATCH_DEV".to_owned(), path(scratch)));
    }
    if userland.share {
        env.push(("ICELAB_SHARE".to_owned(), SHARE_MOUNT.to_owned()));
    }
    env
}

/// `command`: the user's command (or shell), its exit status the verdict.
fn command(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let userland = userland(ctx)?;
    let devices = DEVICES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let native = ctx.config.expect == crate::cmdline::Expect::Native;
    let mut child = Command::new("/bin/bash");
    match &userland.command {
        Some(text) => child.arg("-c").arg(text),
        None => child.arg("--login"),
    };
    let env = environment(userland, &devices, native);
    facts.set(
        "environment",
        env.iter()
            .filter(|(k, _)| k.starts_with("ICELAB_"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
    );
    child
        .env_clear()
        .envs(env)
        .current_dir(if userland.share { SHARE_MOUNT } else { "/root" });
    let started = Instant::now();
    let (status, output) = match userland.io {
        UserlandIo::Console => (run_on_console(ctx, &mut child, userland.terminal)?, None),
        UserlandIo::Capture => {
            let (status, output) = run_captured(ctx, &mut child)?;
            (status, Some(output))
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    facts.set("seconds", (seconds * 10.0).round() / 10.0);
    facts.set("exit_code", status.code());
    facts.set("signal", status.signal());
    let tail = output.as_ref().map(|o| o.tail_text()).unwrap_or_default();
    if let Some(output) = &output {
        facts.set("output_bytes", output.total);
        facts.set("output_tail", tail.clone());
    }
    let what = match &userland.command {
        Some(_) => "the command",
        None => "the shell",
    };
    let last_lines = || {
        let lines: Vec<&str> = tail.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(format!("{what} exited 0 after {seconds:.1} s")),
        (Some(code), _) => fail(format!(
            "{what} exited {code} after {seconds:.1} s{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!("; its output ends:\n{}", last_lines())
            }
        )),
        (None, signal) => fail(format!(
            "{what} was killed by signal {} after {seconds:.1} s",
            signal.unwrap_or(0)
        )),
    }
}

/// In the child, before exec: a session of its own (so that a terminal can
/// be its controlling one and job control works) and a session keyring of
/// its own (PID 1 has none: keys a child adds to "its" session keyring
/// would otherwise vanish with the child that created it).
fn new_session_and_keyring(command: &mut Command, controlling_tty: bool) {
    // SAFETY: setsid, ioctl and the keyctl syscall are async-signal-safe;
    // the closure touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
            if libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `command` with the console as its controlling terminal.
fn run_on_console(
    ctx: &Ctx,
    command: &mut Command,
    terminal: Option<(u16, u16)>,
) -> Result<std::process::ExitStatus, Failure> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONSOLE_TTY)
        .map_err(|e| Failure(format!("cannot open {CONSOLE_TTY}: {e}")))?;
    if let Some((rows, cols)) = terminal {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a valid winsize from the pointer.
        unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
    let clone = |what| {
        tty.try_clone()
            .map(Stdio::from)
            .map_err(|e| Failure(format!("cannot duplicate {CONSOLE_TTY} for {what}: {e}")))
    };
    command
        .stdin(clone("stdin")?)
        .stdout(clone("stdout")?)
        .stderr(clone("stderr")?);
    new_session_and_keyring(command, true);
    ctx.step("running the shell on the console");
    let mut child = command
        .spawn()
        .map_err(|e| Failure(format!("cannot start /bin/bash: {e}")))?;
    child
        .wait()
        .map_err(|e| Failure(format!("waiting for /bin/bash: {e}")))
}

/// What a captured command wrote.
#[derive(Debug, Default)]
struct Output {
    total: u64,
    tail: VecDeque<u8>,
}

impl Output {
    fn add(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(TAIL_BYTES);
        self.tail.drain(..excess);
    }

    fn tail_text(&self) -> String {
        let bytes: Vec<u8> = self.tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs `command` with stdin from /dev/null and stdout and stderr, merged,
/// copied to the output port as they come.
fn run_captured(
    ctx: &Ctx,
    command: &mut Command,
) -> Result<(std::process::ExitStatus, Output), Failure> {
    let mut port = OpenOptions::new()
        .write(true)
        .open(OUTPUT_TTY)
        .map_err(|e| Failure(format!("cannot open the output port {OUTPUT_TTY}: {e}")))?;
    crate::report::set_raw(&port)
        .map_err(|e| Failure(format!("cannot set up {OUTPUT_TTY}: {e}")))?;
    let (mut reader, writer) =
        io::pipe().map_err(|e| Failure(format!("cannot make a pipe: {e}")))?;
    let writer_err = writer
        .try_clone()
        .map_err(|e| Failure(format!("cannot duplicate the pipe: {e}")))?;
    command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_err);
    new_session_and_keyring(command, false);
    ctx.step("running the command");
    let mut child = command
        .spawn()
        .map_err(|e| Failure(format!("cannot start /bin/bash: {e}")))?;
    // Drop the Command's copies of the pipe's write end: the pipe ends
    // when the command and whatever it left running close theirs.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut output = Output::default();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = port.write_all(&buf[..n]);
                    output.add(&buf[..n]);
                    let _ = done_tx.send(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // SAFETY: tcdrain only waits on the open fd.
        unsafe { libc::tcdrain(port.as_raw_fd()) };
        let _ = done_tx.send(Some(output));
    });
    let status = child
        .wait()
        .map_err(|e| Failure(format!("waiting for /bin/bash: {e}")))?;
    // After the command exits the copy gets a moment to drain.
    let deadline = Instant::now() + Duration::from_secs(5);
    let output = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(Some(output)) => break output,
            Ok(None) => {}
            Err(_) => {
                // Something the command started still writes (or holds
                // the pipe); cleanup stops it.
                break Output::default();
            }
        }
    };
    Ok((status, output))
}

/// `kernel-log`: nothing alarming; fscrypt's implementation lines as
/// facts (the host compares them with the devices' stats).
fn kernel_log(_ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let native: Vec<&str> = records
        .iter()
        .map(|r| r.text.as_str())
        .filter(|t| t.contains("using blk-crypto (native)"))
        .collect();
    let fallback: Vec<&str> = records
        .iter()
        .map(|r| r.text.as_str())
        .filter(|t| t.contains("using blk-crypto-fallback"))
        .collect();
    let complaints: Vec<&str> = records
        .iter()
        .map(|r| r.text.as_str())
        .filter(|t| smoke::KERNEL_COMPLAINTS.iter().any(|c| t.contains(c)))
        .collect();
    facts
        .set("records", records.len())
        .set("blk_crypto_native", native.clone())
        .set("blk_crypto_fallback", fallback.clone())
        .set("crypto_lines", steps::crypto_log_lines(&records, 40))
        .set("complaints", complaints.clone());
    let path = match (native.is_empty(), fallback.is_empty()) {
        (true, true) => "fscrypt did not use blk-crypto".to_owned(),
        (false, true) => format!("{} (native)", native.len()),
        (true, false) => format!("{} (fallback)", fallback.len()),
        (false, false) => format!("{} native and {} fallback", native.len(), fallback.len()),
    };
    if complaints.is_empty() {
        Ok(format!(
            "{} kernel log records, no warning, BUG, oops or call trace; blk-crypto lines: {path}",
            records.len()
        ))
    } else {
        fail(format!(
            "the kernel complained {} time(s), first: {}",
            complaints.len(),
            complaints[0]
        ))
    }
}

/// `cleanup`: every process but PID 1 is stopped (SIGTERM, then SIGKILL),
/// then the share disk is unmounted so that its filesystem is clean when
/// the host reads it back.
fn cleanup(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let userland = userland(ctx)?;
    ctx.step("stopping leftover processes");
    let left = leftover_processes();
    facts.set("leftover_processes", left.len());
    if !left.is_empty() {
        // SAFETY: kill(-1, sig) from PID 1 signals every other process.
        unsafe { libc::kill(-1, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !leftover_processes().is_empty() && Instant::now() < deadline {
            reap();
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        thread::sleep(Duration::from_millis(100));
        reap();
    }
    sys::sync();
    if !userland.share {
        return Ok(format!("{} leftover process(es) stopped", left.len()));
    }
    ctx.step(format!("umount {SHARE_MOUNT}"));
    let mut tries = 0;
    loop {
        match sys::umount(Path::new(SHARE_MOUNT)) {
            Ok(()) => break,
            Err(e) if e.errno == libc::EBUSY && tries < 50 => {
                tries += 1;
                reap();
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return fail(format!(
                    "{SHARE_MOUNT} cannot be unmounted ({e}): the host's copy-back may miss writes"
                ));
            }
        }
    }
    Ok(format!(
        "{} leftover process(es) stopped; {SHARE_MOUNT} unmounted",
        left.len()
    ))
}

/// Processes other than PID 1 and kernel threads: (pid, command name).
fn leftover_processes() -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != 1 && *pid != std::process::id())
        .filter_map(|pid| {
            // Kernel threads have an empty cmdline; zombies too, which is
            // fine: reaping them is all they need.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            if cmdline.is_empty() {
                return None;
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

/// Reaps every exited child (orphans are PID 1's).
fn reap() {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on any child only writes `status`.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, serial: &str) -> Disk {
        Disk {
            name: name.into(),
            serial: serial.into(),
        }
    }

    #[test]
    fn the_disks_split_by_serial() {
        let disks = vec![
            disk("vda", "icelab-7f3a"),
            disk("vdb", "icelab-19c2"),
            disk("vdc", ROOT_SERIAL),
            disk("vdd", SHARE_SERIAL),
        ];
        let (devices, root, share) = classify(&disks);
        assert_eq!(devices, vec![&disks[0], &disks[1]]);
        assert_eq!(root, Some(&disks[2]));
        assert_eq!(share, Some(&disks[3]));
        let (devices, root, share) = classify(&disks[..1]);
        assert_eq!((devices.len(), root, share), (1, None, None));
    }

    #[test]
    fn the_environment_names_test_and_scratch_devices() {
        let userland = Userland {
            command: Some("true".into()),
            devices: 2,
            share: true,
            io: UserlandIo::Capture,
            terminal: None,
        };
        let devices = vec![PathBuf::from("/dev/vda"), PathBuf::from("/dev/vdb")];
        let env = environment(&userland, &devices, true);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("ICELAB_TEST_DEV"), Some("/dev/vda"));
        assert_eq!(get("ICELAB_SCRATCH_DEV"), Some("/dev/vdb"));
        assert_eq!(get("ICELAB_DEVS"), Some("/dev/vda /dev/vdb"));
        assert_eq!(get("ICELAB_SHARE"), Some(SHARE_MOUNT));
        assert_eq!(get("ICELAB_INLINE_ENCRYPTION"), Some("native"));
        let one = environment(
            &Userland {
                share: false,
                ..userland
            },
            &devices[..1],
            false,
        );
        assert!(
            one.iter()
                .all(|(k, _)| k != "ICELAB_SCRATCH_DEV" && k != "ICELAB_SHARE")
        );
    }

    #[test]
    fn the_output_tail_keeps_the_end() {
        let mut output = Output::default();
        output.add(&vec![b'a'; TAIL_BYTES]);
        output.add(b"end\n");
        assert_eq!(output.total, TAIL_BYTES as u64 + 4);
        assert_eq!(output.tail.len(), TAIL_BYTES);
        assert!(output.tail_text().ends_with("aend\n"));
    }
}
