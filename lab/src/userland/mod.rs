//! The guest as a machine for the user's own tests: the real userland
//! (`images/build-userland.sh`) booted with N icelab devices, a shared
//! directory, and the user's command or an interactive shell
//! (`icelab run --guest-cmd`, `icelab shell`).
//!
//! The initramfs's runner loads icelab_vblk, which drives every virtio
//! disk: the icelab devices first (`/dev/vda`, ...), then QEMU's own root
//! disk (serial `icelab-root`, a snapshot of the cached image) and share
//! disk (`icelab-share`). It makes the root image `/`, stays PID 1 and runs
//! the command (suite `userland`, guest-tests/src/suites/userland.rs).

pub mod checks;
pub mod junit_in;
pub mod run;
pub mod share;
pub mod shell;

use crate::artifacts::Artifacts;
use crate::boot::{self, DEVICE_EXIT_TIMEOUT, LineFollower};
use crate::qemu::{self, Accel, PlainDisk, VmSpec};
use crate::report::TestResult;
use crate::serve_process::{DeviceOptions, Logs, START_TIMEOUT, ServeConfig, ServeProcess};
use anyhow::{Context, bail};
use icelab_contract::cmdline::{
    GuestPlan, MAX_COMMAND, ROOT_SERIAL, SHARE_SERIAL, Userland, UserlandIo,
};
use icelab_contract::record::Record;
use icelab_contract::suite::{Expect, GuestSuite};
use icelab_emulator::engine::ProfileName;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The boot's name in reports.
pub const BOOT: &str = "userland";

/// Most icelab devices a userland boot may have.
pub const MAX_DEVICES: u32 = 16;

/// Guest memory of a userland boot (tests like xfstests want room).
const MEMORY: &str = "2G";

/// Request queues of each device.
const QUEUES: u16 = 2;

/// What to boot.
#[derive(Clone, Debug)]
pub struct Machine<'a> {
    /// Built artifacts.
    pub artifacts: &'a Artifacts,
    /// KVM or TCG.
    pub accel: Accel,
    /// The userland's root filesystem image.
    pub root_image: &'a Path,
    /// Directory for the device images, sockets, logs (created).
    pub dir: &'a Path,
    /// How many icelab devices.
    pub devices: u32,
    /// Size of each device's fresh image.
    pub disk_size: u64,
    /// The engine profile; `None`: devices without inline encryption.
    pub profile: Option<ProfileName>,
    /// The host directory shared as `/share`.
    pub share: Option<&'a Path>,
    /// The command; `None`: an interactive shell.
    pub command: Option<&'a str>,
    /// Console (interactive) or captured output.
    pub io: UserlandIo,
    /// Longest the guest may run; `None`: no limit (an interactive shell).
    pub timeout: Option<Duration>,
    /// Print the guest's test results as they come (captured mode).
    pub print_tests: bool,
}

/// One icelab device of the boot and what it left.
#[derive(Debug)]
pub struct DeviceRun {
    /// Its name in the guest (`vda`, ...).
    pub name: String,
    /// Its files.
    pub paths: boot::BootPaths,
    /// `icelab serve`'s exit status (`None`: it had to be killed).
    pub exit: Option<ExitStatus>,
    /// Its stats file (`Null` when it wrote none).
    pub stats: Value,
}

/// What the boot produced.
#[derive(Debug)]
pub struct Outcome {
    /// The runner's `hello` (`Null` if it never came).
    pub hello: Value,
    /// The guest's results, plus a failing `guest-completes` when it hung,
    /// crashed or reported nothing.
    pub results: Vec<TestResult>,
    /// The runner reported `done`.
    pub guest_completed: bool,
    /// The devices.
    pub devices: Vec<DeviceRun>,
    /// The command's output (captured mode).
    pub output: PathBuf,
    /// The guest's console (captured mode).
    pub console: PathBuf,
    /// The share disk's image, when there is one.
    pub share_image: Option<PathBuf>,
    /// The kernel command line's `icelab.*` words.
    pub cmdline: String,
    /// Wall time.
    pub duration: Duration,
}

/// `vda`, `vdb`, ... for device `index`.
pub fn device_name(index: u32) -> String {
    let letter = char::from(b'a' + u8::try_from(index % 26).unwrap_or(0));
    if index < 26 {
        format!("vd{letter}")
    } else {
        let first = char::from(b'a' + u8::try_from(index / 26 - 1).unwrap_or(0));
        format!("vd{first}{letter}")
    }
}

/// Checks what the user asked for before anything starts.
pub fn validate(devices: u32, command: Option<&str>) -> anyhow::Result<()> {
    if !(1..=MAX_DEVICES).contains(&devices) {
        bail!("--disks {devices}: choose 1 to {MAX_DEVICES} icelab devices");
    }
    if let Some(command) = command {
        if command.trim().is_empty() {
            bail!(
                "the guest command is empty; give the command to run, e.g. --guest-cmd 'uname -a'"
            );
        }
        if command.len() > MAX_COMMAND {
            bail!(
                "the guest command is {} bytes, more than the {MAX_COMMAND} the kernel command \
                 line carries; put it in a script in the --share directory and run that \
                 (e.g. --share DIR --guest-cmd './run.sh')",
                command.len()
            );
        }
    }
    Ok(())
}

/// The guest's `icelab.*` parameters for `machine`.
pub fn guest_cmdline(machine: &Machine<'_>, terminal: Option<(u16, u16)>) -> String {
    let expect = if machine.profile.is_some() {
        Expect::Native
    } else {
        Expect::Fallback
    };
    GuestPlan {
        userland: Some(Userland {
            command: machine.command.map(str::to_owned),
            devices: machine.devices,
            share: machine.share.is_some(),
            io: machine.io,
            terminal,
        }),
        ..GuestPlan::new(GuestSuite::Userland, expect)
    }
    .to_cmdline()
}

/// Boots the machine and runs the command or shell to its end.
pub fn boot(machine: &Machine<'_>) -> anyhow::Result<Outcome> {
    validate(machine.devices, machine.command)?;
    let started = Instant::now();
    std::fs::create_dir_all(machine.dir)
        .with_context(|| format!("cannot create {}", machine.dir.display()))?;
    let share_image = match machine.share {
        Some(dir) => {
            let image = machine.dir.join("share.img");
            share::pack(dir, &image)?;
            Some(image)
        }
        None => None,
    };
    let mut devices = Vec::new();
    let mut processes = Vec::new();
    for index in 0..machine.devices {
        let name = device_name(index);
        let dir = machine.dir.join(&name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let paths = boot::BootPaths::in_dir(&dir);
        for stale in [&paths.image, &paths.stats, &paths.trace] {
            let _ = std::fs::remove_file(stale);
        }
        let serve = ServeConfig {
            stats: Some(paths.stats.clone()),
            trace: Some(paths.trace.clone()),
            device: DeviceOptions {
                size: Some(machine.disk_size),
                queues: Some(QUEUES),
                profile: machine.profile,
                no_inline_encryption: machine.profile.is_none(),
                ..DeviceOptions::default()
            },
            ..ServeConfig::new(&paths.image, &paths.socket)
        };
        let process = ServeProcess::spawn_icelab(
            &crate::icelab_exe(),
            &serve,
            Logs::combined(&paths.device_log),
            START_TIMEOUT,
        )
        .with_context(|| format!("cannot start icelab serve for {name}"))?;
        processes.push(process);
        devices.push(DeviceRun {
            name,
            paths,
            exit: None,
            stats: Value::Null,
        });
    }
    let terminal = match machine.io {
        UserlandIo::Console => terminal_size(),
        UserlandIo::Capture => None,
    };
    let cmdline = guest_cmdline(machine, terminal);
    let console = machine.dir.join("console.log");
    let results_log = machine.dir.join("results.jsonl");
    let output = machine.dir.join("output.log");
    for stale in [&console, &results_log, &output] {
        let _ = std::fs::remove_file(stale);
    }
    let mut disks = vec![PlainDisk {
        image: machine.root_image.to_owned(),
        serial: ROOT_SERIAL,
        snapshot: true,
    }];
    if let Some(image) = &share_image {
        disks.push(PlainDisk {
            image: image.clone(),
            serial: SHARE_SERIAL,
            snapshot: false,
        });
    }
    let more_sockets: Vec<PathBuf> = devices[1..]
        .iter()
        .map(|d| d.paths.socket.clone())
        .collect();
    let spec = VmSpec {
        artifacts: machine.artifacts,
        socket: &devices[0].paths.socket,
        append: format!("module_blacklist=virtio_blk {cmdline}"),
        console_log: console.clone(),
        results_log: results_log.clone(),
        queues: QUEUES,
        inline_encryption: machine.profile.is_some(),
        accel: machine.accel,
        reconnect: false,
        more_sockets: &more_sockets,
        disks: &disks,
        console_on_stdio: machine.io == UserlandIo::Console,
        output_log: (machine.io == UserlandIo::Capture).then(|| output.clone()),
        memory: MEMORY,
    };
    let qemu_log = machine.dir.join("qemu.log");
    let mut command = qemu::command(&spec);
    if machine.io == UserlandIo::Capture {
        let log = std::fs::File::create(&qemu_log)?;
        command.stdout(log.try_clone()?).stderr(log);
    } else {
        // The terminal is the guest's console; QEMU's complaints go to
        // the log.
        command.stderr(std::fs::File::create(&qemu_log)?);
    }
    let mut vm = command
        .spawn()
        .with_context(|| format!("cannot start {}", machine.artifacts.qemu.display()))?;
    let guest = match machine.io {
        UserlandIo::Capture => {
            let echo = OutputEcho::start(output.clone());
            let guest = boot::stream_results(
                &mut vm,
                &results_log,
                BOOT,
                machine.timeout.unwrap_or(Duration::MAX / 4),
                machine.print_tests,
                &mut |_, _| {},
            );
            echo.stop();
            guest
        }
        UserlandIo::Console => {
            let status = match machine.timeout {
                Some(timeout) => boot::wait_child(&mut vm, timeout),
                None => vm.wait().ok(),
            };
            let mut guest = read_results(&results_log);
            if status.is_none() && guest.problem.is_none() {
                guest.problem = Some(format!(
                    "the guest did not finish within {} s",
                    machine.timeout.map_or(0, |t| t.as_secs())
                ));
            }
            guest
        }
    };
    let _ = vm.kill();
    let _ = vm.wait();
    for (device, mut process) in devices.iter_mut().zip(processes) {
        device.exit = process.wait_timeout(DEVICE_EXIT_TIMEOUT);
        process.kill();
        device.stats = std::fs::read(&device.paths.stats)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
    }
    let mut results = guest.results;
    let guest_completed = guest.problem.is_none();
    if let Some(problem) = guest.problem {
        let console_tail = match machine.io {
            UserlandIo::Capture => format!("\n--- console tail:\n{}", boot::tail(&console, 30)),
            UserlandIo::Console => String::new(),
        };
        results.push(TestResult::host(
            BOOT,
            "guest-completes",
            false,
            format!("{problem}{console_tail}"),
            Value::Null,
        ));
    }
    Ok(Outcome {
        hello: guest.hello,
        results,
        guest_completed,
        devices,
        output,
        console,
        share_image,
        cmdline,
        duration: started.elapsed(),
    })
}

/// Reads a finished results file (the interactive mode, where nothing may
/// be printed while the guest owns the terminal).
fn read_results(path: &Path) -> boot::GuestOutcome {
    let mut outcome = boot::GuestOutcome {
        hello: Value::Null,
        results: Vec::new(),
        problem: None,
    };
    let mut done = false;
    for line in LineFollower::default().new_lines(path) {
        match Record::from_line(&line) {
            Some(hello @ Record::Hello { .. }) => {
                outcome.hello = serde_json::to_value(&hello).unwrap_or(Value::Null);
            }
            Some(Record::Test(test)) => outcome.results.push(TestResult::from_guest(BOOT, test)),
            Some(Record::Done { .. }) => done = true,
            _ => {}
        }
    }
    if !done {
        outcome.problem =
            Some("the guest stopped before reporting `done` (crashed or panicked?)".to_owned());
    }
    outcome
}

/// The size of the terminal on standard input, if it is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer.
    let rc = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// Copies the command's output (the guest's ttyS2 file) to standard
/// output as it grows.
struct OutputEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutputEcho {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Only what was appended since the last look is read.
            let mut follower = boot::ByteFollower::default();
            loop {
                let last = flag.load(Ordering::Acquire);
                let bytes = follower.new_bytes(&path);
                if !bytes.is_empty() {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                if last {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_as_the_driver_names_them() {
        assert_eq!(device_name(0), "vda");
        assert_eq!(device_name(1), "vdb");
        assert_eq!(device_name(25), "vdz");
        assert_eq!(device_name(26), "vdaa");
    }

    #[test]
    fn what_cannot_run_is_refused_with_the_fix() {
        assert!(validate(2, Some("true")).is_ok());
        assert!(
            validate(0, None)
                .unwrap_err()
                .to_string()
                .contains("1 to 16")
        );
        let long = "x".repeat(MAX_COMMAND + 1);
        let error = validate(1, Some(&long)).unwrap_err().to_string();
        assert!(error.contains("script in the --share directory"), "{error}");
        assert!(
            validate(1, Some("  "))
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
