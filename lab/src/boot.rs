//! One guest boot: start `icelab serve` (or the user's device command) on
//! an image, boot the lab guest against it under QEMU, stream the in-guest
//! runner's results until it powers off, wait for the device to exit.
//!
//! Checks nothing itself beyond "the guest finished": `icelab run` adds the
//! host checks and the verifier, `icelab bench guest` its measurements.

use super::artifacts::Artifacts;
use super::memory_scan::{self, MemoryScan};
use super::qemu::{self, Accel, VmSpec};
use super::report::TestResult;
use super::serve_process::{
    CommandTemplate, DeviceOptions, Logs, START_TIMEOUT, ServeConfig, ServeProcess,
};
use anyhow::Context;
use icelab_contract::memory_scan::SIGNAL_SCAN_GUEST_MEMORY;
use icelab_contract::record::{Facts, Record, SIGNAL_RESTART_DEVICE};
use serde_json::Value;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// What to boot.
pub struct BootSpec<'a> {
    /// Name of the boot; prefixes its test results.
    pub name: &'a str,
    /// Directory for the socket, logs, stats and trace (created).
    pub dir: &'a Path,
    /// The disk image the device serves.
    pub image: &'a Path,
    /// Delete `image` first (a fresh image; `device` then needs a size).
    pub fresh_image: bool,
    /// `icelab serve` options besides image, socket, stats and trace.
    /// With `device_cmd`, only `queues` (QEMU's) and `size` (of a fresh
    /// image, which the lab then creates) count.
    pub device: &'a DeviceOptions,
    /// Start the device with this command instead of `icelab serve`.
    pub device_cmd: Option<&'a CommandTemplate>,
    /// The guest's kernel parameters (`icelab.*`).
    pub cmdline: &'a str,
    /// Ask QEMU to forward inline encryption to the guest.
    pub inline_encryption: bool,
    /// Longest the guest may run.
    pub timeout: Duration,
    /// Kill the device and start it again when the guest signals
    /// [`SIGNAL_RESTART_DEVICE`]; QEMU reconnects.
    pub restart_device: bool,
    /// Scan guest memory when the guest signals
    /// [`memory_scan::SIGNAL_SCAN_GUEST_MEMORY`](icelab_contract::memory_scan::SIGNAL_SCAN_GUEST_MEMORY).
    pub scan_memory: bool,
}

/// How long the guest writes on after its signal before the device is
/// killed: long enough for requests to be in flight.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Longest wait for the device to exit once QEMU has (icelab serve exits
/// by itself when its frontend leaves), or after SIGTERM.
pub const DEVICE_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a device started by a command may take to exit by itself
/// after QEMU's exit before it gets SIGTERM.
const COMMAND_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Longest wait for QEMU to reconnect to the restarted device.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the device restart did.
#[derive(Clone, Debug, Default)]
pub struct DeviceRestart {
    /// Why it failed, if it did.
    pub problem: Option<String>,
    /// From SIGKILL to the new device listening.
    pub listening_after: Option<Duration>,
    /// From SIGKILL to QEMU connected to the new device.
    pub reconnected_after: Option<Duration>,
}

/// The vhost-user socket's name in a boot's directory.
pub const SOCKET_NAME: &str = "icelab.sock";

/// The files of one boot.
#[derive(Clone, Debug)]
pub struct BootPaths {
    /// The image.
    pub image: PathBuf,
    /// vhost-user socket.
    pub socket: PathBuf,
    /// The device's stats (`--stats`).
    pub stats: PathBuf,
    /// The device's keyslot trace (`--trace`).
    pub trace: PathBuf,
    /// The guest's console (ttyS0).
    pub console: PathBuf,
    /// The runner's results (ttyS1).
    pub results: PathBuf,
    /// The device's log.
    pub device_log: PathBuf,
    /// QEMU's own output.
    pub qemu_log: PathBuf,
}

impl BootPaths {
    /// The files of a device in `dir`, its image `dir/disk.img`.
    pub fn in_dir(dir: &Path) -> Self {
        Self::new(dir, &dir.join("disk.img"))
    }

    fn new(dir: &Path, image: &Path) -> Self {
        Self {
            image: image.to_owned(),
            socket: dir.join(SOCKET_NAME),
            stats: dir.join("stats.json"),
            trace: dir.join("trace.jsonl"),
            console: dir.join("console.log"),
            results: dir.join("results.jsonl"),
            device_log: dir.join("device.log"),
            qemu_log: dir.join("qemu.log"),
        }
    }
}

/// What a boot produced.
pub struct BootOutcome {
    /// The runner's `hello` line (`Null` if it never came).
    pub hello: Value,
    /// The guest's test results, plus a failing `guest-completes` when the
    /// guest hung, crashed or reported nothing.
    pub results: Vec<TestResult>,
    /// True when the runner reported `done` with at least one test.
    pub guest_completed: bool,
    /// The device's exit status; `None` when it had to be killed.
    pub device_exit: Option<ExitStatus>,
    /// The lab sent the device SIGTERM: a `device_cmd` device that did not
    /// exit by itself after QEMU's exit; `device_exit` is its status after
    /// that.
    pub device_terminated: bool,
    /// The device's final stats (`Null` when it wrote none).
    pub stats: Value,
    /// Where everything is.
    pub paths: BootPaths,
    /// Wall time of the boot.
    pub duration: Duration,
    /// The device restart, when the spec asked for one and the guest
    /// signalled it.
    pub restart: Option<DeviceRestart>,
    /// The guest-RAM scan, when the spec asked for one and the guest
    /// signalled it.
    pub memory_scan: Option<MemoryScan>,
}

/// Boots once: device, QEMU, results (printed as they arrive), device exit.
/// `Err` only when the device or QEMU cannot be started.
pub fn run_boot(
    artifacts: &Artifacts,
    accel: Accel,
    spec: &BootSpec<'_>,
) -> anyhow::Result<BootOutcome> {
    let started = Instant::now();
    std::fs::create_dir_all(spec.dir)
        .with_context(|| format!("cannot create {}", spec.dir.display()))?;
    let paths = BootPaths::new(spec.dir, spec.image);
    let mut stale = vec![&paths.results, &paths.console, &paths.stats, &paths.trace];
    if spec.fresh_image {
        stale.push(&paths.image);
    }
    for file in stale {
        let _ = std::fs::remove_file(file);
    }
    let serve = serve_config(&paths, spec.device);
    let launcher = Launcher {
        paths: &paths,
        serve: &serve,
        command: spec.device_cmd,
    };
    if spec.device_cmd.is_some() && spec.fresh_image {
        // icelab serve creates a new image itself (--size); another
        // device may not.
        let size = spec
            .device
            .size
            .context("a fresh image needs a size (DeviceOptions::size)")?;
        create_sparse(&paths.image, size)?;
    }
    let mut device = launcher.spawn()?;
    let mut restart = None;
    let mut memory_scan = None;
    let vm_spec = VmSpec {
        artifacts,
        socket: &paths.socket,
        append: spec.cmdline.to_owned(),
        console_log: paths.console.clone(),
        results_log: paths.results.clone(),
        queues: spec.device.queues.unwrap_or(1),
        inline_encryption: spec.inline_encryption,
        accel,
        reconnect: spec.restart_device,
        more_sockets: &[],
        disks: &[],
        console_on_stdio: false,
        output_log: None,
        memory: qemu::MEMORY,
    };
    let qemu_log = std::fs::File::create(&paths.qemu_log)?;
    let mut vm = match qemu::command(&vm_spec)
        .stdout(qemu_log.try_clone()?)
        .stderr(qemu_log)
        .spawn()
    {
        Ok(vm) => vm,
        Err(error) => {
            device.kill();
            return Err(error)
                .with_context(|| format!("cannot start {}", artifacts.qemu.display()));
        }
    };
    let qemu_pid = vm.id();
    let guest = stream_results(
        &mut vm,
        &paths.results,
        spec.name,
        spec.timeout,
        true,
        &mut |signal, facts| {
            if signal == SIGNAL_RESTART_DEVICE && spec.restart_device && restart.is_none() {
                let done = restart_device(&mut device, &launcher);
                println!("{}", done.line());
                restart = Some(done);
            }
            if signal == SIGNAL_SCAN_GUEST_MEMORY && spec.scan_memory && memory_scan.is_none() {
                let scan = memory_scan::scan_guest(qemu_pid, &paths.results, facts);
                println!("{}", scan.line());
                memory_scan = Some(scan);
            }
        },
    );
    let _ = vm.kill();
    let _ = vm.wait();
    let mut device_terminated = false;
    let device_exit = match spec.device_cmd {
        None => {
            let status = device.wait_timeout(DEVICE_EXIT_TIMEOUT);
            device.kill();
            status
        }
        // Another device need not exit when its frontend leaves: after a
        // moment it gets SIGTERM, as a service manager would send.
        Some(_) => match device.wait_timeout(COMMAND_EXIT_GRACE) {
            Some(status) => {
                device.kill();
                Some(status)
            }
            None => {
                device_terminated = true;
                device.terminate(DEVICE_EXIT_TIMEOUT)
            }
        },
    };
    let mut results = guest.results;
    let guest_completed = guest.problem.is_none();
    if let Some(problem) = guest.problem {
        results.push(TestResult::host(
            spec.name,
            "guest-completes",
            false,
            format!("{problem}\n--- console tail:\n{}", tail(&paths.console, 30)),
            Value::Null,
        ));
    }
    let stats = std::fs::read(&paths.stats)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    Ok(BootOutcome {
        hello: guest.hello,
        results,
        guest_completed,
        device_exit,
        device_terminated,
        stats,
        paths,
        duration: started.elapsed(),
        restart,
        memory_scan,
    })
}

impl DeviceRestart {
    /// One line for the run's output.
    fn line(&self) -> String {
        let secs =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
        match &self.problem {
            Some(problem) => format!("device restart failed: {problem}"),
            None => format!(
                "device killed (SIGKILL) and started again: listening after {} s, QEMU \
                 reconnected after {} s",
                secs(self.listening_after),
                secs(self.reconnected_after)
            ),
        }
    }
}

/// Kills the device with SIGKILL after [`RESTART_DELAY`], keeps its log
/// and trace (`*.before-restart.*`), starts it again on the same image and
/// socket and waits for QEMU to reconnect (the new device logs `frontend
/// connected`).
fn restart_device(device: &mut ServeProcess, launcher: &Launcher<'_>) -> DeviceRestart {
    let paths = launcher.paths;
    std::thread::sleep(RESTART_DELAY);
    let killed = Instant::now();
    let mut outcome = DeviceRestart::default();
    device.kill();
    for (path, kept) in [
        (&paths.trace, "trace.before-restart.jsonl"),
        (&paths.device_log, "device.before-restart.log"),
    ] {
        if let Some(dir) = path.parent() {
            let _ = std::fs::rename(path, dir.join(kept));
        }
    }
    match launcher.spawn() {
        Ok(child) => *device = child,
        Err(error) => {
            outcome.problem = Some(format!("cannot start the device again: {error:#}"));
            return outcome;
        }
    }
    outcome.listening_after = Some(killed.elapsed());
    while killed.elapsed() < RECONNECT_TIMEOUT {
        let log = std::fs::read(&paths.device_log).unwrap_or_default();
        if String::from_utf8_lossy(&log).contains("frontend connected") {
            outcome.reconnected_after = Some(killed.elapsed());
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    outcome.problem = Some(format!(
        "QEMU did not reconnect to the restarted device within {} s:\n{}",
        RECONNECT_TIMEOUT.as_secs(),
        tail(&paths.device_log, 20)
    ));
    outcome
}

/// The `icelab serve` of a boot: its files, and `device`.
fn serve_config(paths: &BootPaths, device: &DeviceOptions) -> ServeConfig {
    ServeConfig {
        stats: Some(paths.stats.clone()),
        trace: Some(paths.trace.clone()),
        device: device.clone(),
        ..ServeConfig::new(&paths.image, &paths.socket)
    }
}

/// How a boot starts its device (again, for a restart).
struct Launcher<'a> {
    paths: &'a BootPaths,
    serve: &'a ServeConfig,
    /// The user's command instead of `icelab serve`.
    command: Option<&'a CommandTemplate>,
}

impl Launcher<'_> {
    /// Starts `icelab serve` (this very binary) or the command, and waits
    /// for its socket.
    fn spawn(&self) -> anyhow::Result<ServeProcess> {
        let logs = Logs::combined(&self.paths.device_log);
        match self.command {
            None => {
                ServeProcess::spawn_icelab(&crate::icelab_exe(), self.serve, logs, START_TIMEOUT)
            }
            Some(template) => ServeProcess::spawn_template(
                template,
                &self.paths.image,
                &self.paths.socket,
                logs,
                START_TIMEOUT,
            ),
        }
    }
}

/// Creates `path` as a sparse file of `size` bytes (replacing any file).
pub(crate) fn create_sparse(path: &Path, size: u64) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the image {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("cannot size the image {} to {size} bytes", path.display()))
}

/// What the guest reported.
pub(crate) struct GuestOutcome {
    pub(crate) hello: Value,
    pub(crate) results: Vec<TestResult>,
    /// Why the guest did not finish cleanly, if it did not.
    pub(crate) problem: Option<String>,
}

/// Follows the results file until the runner's `done` line, QEMU's exit or
/// the timeout, printing each test as it arrives (with `print`) and handing
/// each signal line's name and facts to `on_signal`.
pub(crate) fn stream_results(
    vm: &mut Child,
    path: &Path,
    boot: &str,
    timeout: Duration,
    print: bool,
    on_signal: &mut dyn FnMut(&str, &Facts),
) -> GuestOutcome {
    let deadline = Instant::now() + timeout;
    let mut outcome = GuestOutcome {
        hello: Value::Null,
        results: Vec::new(),
        problem: None,
    };
    let mut follower = LineFollower::default();
    let mut done = false;
    loop {
        let exited = matches!(vm.try_wait(), Ok(Some(_)));
        for line in follower.new_lines(path) {
            match Record::from_line(&line) {
                Some(hello @ Record::Hello { .. }) => {
                    outcome.hello = serde_json::to_value(&hello).unwrap_or(Value::Null);
                }
                Some(Record::Test(test)) => {
                    let result = TestResult::from_guest(boot, test);
                    if print {
                        println!("{}", result.line());
                    }
                    outcome.results.push(result);
                }
                Some(Record::Signal { name, facts }) => on_signal(&name, &facts),
                Some(Record::Done { .. }) => done = true,
                None => {}
            }
        }
        if done || exited {
            break;
        }
        if Instant::now() > deadline {
            outcome.problem = Some(format!(
                "the guest did not finish within {} s (hung? raise --timeout if it is only slow)",
                timeout.as_secs()
            ));
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !done {
        outcome.problem =
            Some("the guest stopped before reporting `done` (crashed or panicked?)".to_owned());
    } else if outcome.results.is_empty() {
        outcome.problem = Some(
            "the guest reported no tests (does this initramfs's runner have tests for the suite?)"
                .to_owned(),
        );
    }
    // Give QEMU a moment to power off by itself.
    let _ = wait_child(vm, Duration::from_secs(10));
    outcome
}

/// Reads the whole lines appended to a growing file since the last call.
/// Bytes that are not UTF-8 (a console glitch) are replaced, never a reason
/// to stop reading: the lines after them still arrive.
#[derive(Default)]
pub(crate) struct LineFollower {
    offset: u64,
    partial: Vec<u8>,
}

impl LineFollower {
    pub(crate) fn new_lines(&mut self, path: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        let Ok(mut file) = std::fs::File::open(path) else {
            return lines;
        };
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return lines;
        }
        let mut reader = BufReader::new(file);
        loop {
            match reader.read_until(b'\n', &mut self.partial) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    self.offset += read as u64;
                    if self.partial.ends_with(b"\n") {
                        lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                        self.partial.clear();
                    }
                }
            }
        }
        lines
    }
}

/// Reads the bytes appended to a growing file since the last call.
#[derive(Default)]
pub(crate) struct ByteFollower {
    offset: u64,
}

impl ByteFollower {
    pub(crate) fn new_bytes(&mut self, path: &Path) -> Vec<u8> {
        use std::io::Read;
        let mut bytes = Vec::new();
        let Ok(mut file) = std::fs::File::open(path) else {
            return bytes;
        };
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_ok() {
            // What was read before an error counts as read.
            let _ = file.read_to_end(&mut bytes);
            self.offset += bytes.len() as u64;
        }
        bytes
    }
}

/// Waits up to `timeout` for `child`; kills it after that (`None`).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_byte_follower_reads_only_what_was_appended() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("output.log");
        let mut follower = ByteFollower::default();
        assert!(follower.new_bytes(&path).is_empty());
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(b"one\ntw").expect("write");
        assert_eq!(follower.new_bytes(&path), b"one\ntw");
        assert!(follower.new_bytes(&path).is_empty());
        file.write_all(b"o\n").expect("write");
        assert_eq!(follower.new_bytes(&path), b"o\n");
    }

    #[test]
    fn a_non_utf8_byte_does_not_stop_the_result_stream() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("results.jsonl");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(b"{\"type\":\"hello\"}\n\xff\xfe garbage\n{\"type\":")
            .expect("write");
        let mut follower = LineFollower::default();
        let first = follower.new_lines(&path);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first[1].contains("garbage"));
        file.write_all(b"\"done\"}\n").expect("write");
        let second = follower.new_lines(&path);
        assert_eq!(second, vec!["{\"type\":\"done\"}\n".to_owned()]);
        assert!(follower.new_lines(&path).is_empty());
    }
}
