//! Shared helpers for the root package's integration tests.
//!
//! - [`Process`]: a child process with its output in log files, waits with
//!   timeouts, and a kill on drop, so that a failing test never leaves a
//!   device or a VM behind;
//! - [`Device`] and [`DeviceBuilder`]: `icelab serve` on an image, started
//!   and waited for until its vhost-user socket exists;
//! - image files: [`create_image`], [`write_at`], [`read_at`];
//! - host tools: [`require_tool`] fails (never skips) with a pointer to
//!   `scripts/install-deps`;
//! - the `--stats` file: [`read_stats`] and [`stat_u64`].
//!
//! Every helper panics with a message that says what went wrong and shows
//! the relevant log tail: these are test fixtures, not library code.
//!
//! Use it from a test file with `mod support;`.

// Each integration test is its own crate and uses only part of this module.
#![allow(dead_code)]

use icelab_lab::serve_process::{Logs, ServeConfig, ServeProcess};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long `icelab serve` may take to create its socket.
pub const DEVICE_START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `icelab serve` may take to exit once its frontend is gone.
pub const DEVICE_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often waits poll.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Lines of a log shown in a failure message.
const TAIL_LINES: usize = 40;

/// The `icelab` binary that cargo built for this test run.
pub fn icelab_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_icelab"))
}

/// A fresh temporary directory, removed when dropped.
///
/// Set `ICELAB_KEEP_TEST_DIRS=1` to keep it for a post-mortem; its path is
/// printed (shown by `cargo test` for failing tests, or with
/// `--nocapture`).
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("ICELAB_KEEP_TEST_DIRS").is_some_and(|v| v == "1");
    let dir = ok_or_panic(
        tempfile::Builder::new()
            .prefix(&format!("icelab-{prefix}-"))
            .disable_cleanup(keep)
            .tempdir(),
        || "cannot create a temporary directory".to_owned(),
    );
    eprintln!(
        "test directory {}{}",
        dir.path().display(),
        if keep { " (kept)" } else { "" }
    );
    dir
}

/// The path of host tool `name` on `PATH`.
///
/// # Panics
///
/// When the tool is missing, with a message naming `scripts/install-deps`:
/// a test that needs a tool fails rather than passing vacuously.
#[track_caller]
pub fn require_tool(name: &str) -> PathBuf {
    match find_on_path(name) {
        Some(path) => path,
        None => panic!(
            "`{name}` is not installed (not found on PATH); \
             run `scripts/install-deps` (as root) to install the test suite's dependencies"
        ),
    }
}

/// The path of executable `name` on `PATH`, if any.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// --- image files --------------------------------------------------------

/// Bytes per sector of the virtio-blk wire format.
pub const SECTOR_SIZE: u64 = 512;

/// Creates (or truncates) a sparse, zero-filled image file of `size` bytes.
#[track_caller]
pub fn create_image(path: &Path, size: u64) {
    let file = ok_or_panic(File::create(path), || {
        format!("cannot create image {}", path.display())
    });
    ok_or_panic(file.set_len(size), || {
        format!("cannot size image {} to {size} bytes", path.display())
    });
}

/// Writes `data` into the image at byte `offset`.
#[track_caller]
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = ok_or_panic(OpenOptions::new().write(true).open(path), || {
        format!("cannot open image {} for writing", path.display())
    });
    ok_or_panic(file.write_all_at(data, offset), || {
        let len = data.len();
        format!(
            "cannot write {len} bytes at offset {offset} of {}",
            path.display()
        )
    });
}

/// Reads `len` bytes of the image from byte `offset`.
#[track_caller]
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = ok_or_panic(File::open(path), || {
        format!("cannot open image {}", path.display())
    });
    let mut buf = vec![0; len];
    ok_or_panic(file.read_exact_at(&mut buf, offset), || {
        format!(
            "cannot read {len} bytes at offset {offset} of {}",
            path.display()
        )
    });
    buf
}

/// Unwraps `result`, or panics at the caller's location with `what` and the
/// error.
#[track_caller]
pub fn ok_or_panic<T, E: std::fmt::Display>(
    result: Result<T, E>,
    what: impl FnOnce() -> String,
) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{}: {error}", what()),
    }
}

/// Deterministic filler bytes (xorshift64), distinct for each `seed`:
/// data that a lost, shifted or zeroed sector cannot imitate.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

// --- processes ----------------------------------------------------------

/// A child process whose stdout and stderr go to log files, killed (and
/// reaped) on drop unless it has already exited.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl Process {
    /// Spawns `command`, sending its output to `LOG_DIR/NAME.stdout` and
    /// `LOG_DIR/NAME.stderr`. Its stdin is closed.
    #[track_caller]
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Self {
        let stdout_log = log_dir.join(format!("{name}.stdout"));
        let stderr_log = log_dir.join(format!("{name}.stderr"));
        let open = |path: &Path| {
            ok_or_panic(File::create(path), || {
                format!("cannot create log file {}", path.display())
            })
        };
        command
            .stdin(Stdio::null())
            .stdout(open(&stdout_log))
            .stderr(open(&stderr_log));
        let child = ok_or_panic(command.spawn(), || {
            format!("cannot start {name} ({command:?})")
        });
        Self {
            name: name.to_owned(),
            child,
            status: None,
            stdout_log,
            stderr_log,
        }
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited (does not block).
    #[track_caller]
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot poll {}: {e}", self.name));
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is
    /// still running then (it is left running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    ///
    /// # Panics
    ///
    /// On timeout, after killing the process, with its log tails and
    /// `context` (e.g. other processes' logs) in the message.
    #[track_caller]
    pub fn wait_or_kill(&mut self, timeout: Duration, context: &str) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}; killed it\n{}{context}",
                    self.name,
                    self.logs()
                );
            }
        }
    }

    /// Kills the process (SIGKILL) if it is still running, and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            // Failing to kill means it exited meanwhile; wait() reaps either way.
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Path of the stdout log.
    pub fn stdout_log(&self) -> &Path {
        &self.stdout_log
    }

    /// Path of the stderr log.
    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// The last lines of stdout and stderr, labelled, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} stdout ({out}) ---\n{}--- {name} stderr ({err}) ---\n{}",
            tail(&self.stdout_log, TAIL_LINES),
            tail(&self.stderr_log, TAIL_LINES),
            name = self.name,
            out = self.stdout_log.display(),
            err = self.stderr_log.display(),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a text file (lossy UTF-8), each ending in a
/// newline; a note instead when the file cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return format!("(cannot read {}: {e})\n", path.display()),
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("({start} earlier lines omitted)\n"));
    }
    for line in &all[start..] {
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("(empty)\n");
    }
    out
}

/// Polls `condition` every few milliseconds until it holds (true) or
/// `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

// --- the device ---------------------------------------------------------

/// Options for starting `icelab serve`: a [`ServeConfig`] whose options
/// are given as command-line words, started by the lab's [`ServeProcess`]
/// with the test binary's `icelab`.
#[derive(Debug, Clone)]
pub struct DeviceBuilder {
    config: ServeConfig,
    start_timeout: Duration,
}

impl DeviceBuilder {
    /// `icelab serve --image IMAGE --socket SOCKET`; logs go next to the
    /// socket.
    pub fn new(image: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        Self {
            config: ServeConfig::new(image, socket),
            start_timeout: DEVICE_START_TIMEOUT,
        }
    }

    /// Adds `--stats PATH`; read it back with [`Device::stats`].
    pub fn stats(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.stats = Some(path.into());
        self
    }

    /// Adds one more command-line argument (e.g. `--queues`, `2`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.config.device.extra.push(arg.as_ref().to_owned());
        self
    }

    /// Adds command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.config
            .device
            .extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the device (e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.config
            .env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// How long to wait for the socket (default [`DEVICE_START_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The command line this builder runs (for messages and debugging).
    pub fn command(&self) -> Command {
        self.config.command(icelab_bin())
    }

    /// Starts the device and waits until its socket exists.
    ///
    /// # Panics
    ///
    /// If the device exits before creating its socket, or does not create
    /// it within the start timeout; the message shows its log.
    #[track_caller]
    pub fn spawn(self) -> Device {
        let log_dir = self
            .config
            .socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let logs = Logs {
            stdout: log_dir.join("icelab-serve.stdout"),
            stderr: log_dir.join("icelab-serve.stderr"),
        };
        let description = format!("{:?}", self.command());
        let process = ok_or_panic(
            ServeProcess::spawn_icelab(icelab_bin(), &self.config, logs, self.start_timeout),
            || format!("command: {description}"),
        );
        Device {
            process,
            socket: self.config.socket,
            stats: self.config.stats,
        }
    }
}

/// A running `icelab serve`, killed on drop.
///
/// Its socket accepts one frontend: do not probe it with a test connection.
#[derive(Debug)]
pub struct Device {
    process: ServeProcess,
    socket: PathBuf,
    stats: Option<PathBuf>,
}

impl Device {
    /// Shorthand for [`DeviceBuilder::new`].
    pub fn builder(image: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> DeviceBuilder {
        DeviceBuilder::new(image, socket)
    }

    /// The vhost-user socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The underlying process (logs, pid, waits).
    pub fn process(&mut self) -> &mut ServeProcess {
        &mut self.process
    }

    /// The device's log tails, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- icelab serve ({} and .stderr) ---\n{}",
            self.process.logs().stdout.display(),
            self.process.log_tail(TAIL_LINES)
        )
    }

    /// Waits for the device to exit on its own (it does once its frontend
    /// disconnects), within [`DEVICE_EXIT_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// On timeout, after killing it, with its logs and `context`.
    #[track_caller]
    pub fn wait_exit(&mut self, context: &str) -> ExitStatus {
        match self.process.wait_timeout(DEVICE_EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                self.process.kill();
                panic!(
                    "icelab serve did not exit within {DEVICE_EXIT_TIMEOUT:?}; killed it\n{}{context}",
                    self.logs()
                );
            }
        }
    }

    /// Waits for the device to exit and asserts that it exited with status 0.
    #[track_caller]
    pub fn assert_clean_exit(&mut self, context: &str) {
        let status = self.wait_exit(context);
        assert!(
            status.success(),
            "icelab serve exited with {status}, expected status 0\n{}{context}",
            self.logs()
        );
    }

    /// The `--stats` file's JSON.
    ///
    /// # Panics
    ///
    /// If the device was started without `--stats`, or the file is missing
    /// or not JSON.
    #[track_caller]
    pub fn stats(&self) -> serde_json::Value {
        let path = self
            .stats
            .as_deref()
            .expect("the device was started without DeviceBuilder::stats");
        read_stats(path)
    }
}

// --- stats --------------------------------------------------------------

/// Reads and parses a `--stats` JSON file (`icelab serve` writes it at
/// exit and on SIGUSR1: `{"device": {..}, "stats": {..}}`).
#[track_caller]
pub fn read_stats(path: &Path) -> serde_json::Value {
    let text = ok_or_panic(fs::read_to_string(path), || {
        format!("cannot read stats file {}", path.display())
    });
    match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(e) => panic!("stats file {} is not JSON: {e}\n{text}", path.display()),
    }
}

/// The unsigned integer at a dotted path of a stats document, e.g.
/// `stat_u64(&stats, "stats.plain_in.bytes")`.
///
/// # Panics
///
/// If the path does not lead to an unsigned integer; the message shows
/// the document.
#[track_caller]
pub fn stat_u64(stats: &serde_json::Value, dotted_path: &str) -> u64 {
    let value = dotted_path
        .split('.')
        .try_fold(stats, |node, key| node.get(key))
        .and_then(serde_json::Value::as_u64);
    match value {
        Some(value) => value,
        None => panic!("stats have no unsigned integer at `{dotted_path}`:\n{stats:#}"),
    }
}
