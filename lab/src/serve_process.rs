//! Starting `icelab serve` (and other vhost-user backends): a typed
//! configuration, the command line it becomes, and the running process,
//! waited for until its socket exists and killed when dropped. The one
//! launcher of the lab, the benches and the tests.

use anyhow::{Context, bail};
use icelab_contract::device::KeyUsageLimit;
use icelab_emulator::engine::{Fault, ProfileName};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a backend may take to create its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(10);

/// What the device is: every `icelab serve` option besides the files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceOptions {
    /// `--size`: the size of a new image (none: the image exists).
    pub size: Option<u64>,
    /// `--queues`.
    pub queues: Option<u16>,
    /// `--profile`; `None` with `inline_encryption` false.
    pub profile: Option<ProfileName>,
    /// `--slots`, overriding the profile's.
    pub slots: Option<u16>,
    /// `--no-inline-encryption` when false.
    pub no_inline_encryption: bool,
    /// `--fault`.
    pub fault: Option<Fault>,
    /// `--persist`.
    pub persist: bool,
    /// `--default-key`: the file of the device default key.
    pub default_key: Option<PathBuf>,
    /// `--key-usage-limit` and `--key-usage-limit-action`.
    pub key_usage_limit: Option<KeyUsageLimit>,
    /// Anything else, verbatim, after the typed options (tests of the
    /// command line itself).
    pub extra: Vec<OsString>,
}

impl DeviceOptions {
    /// The options as `icelab serve` arguments, in a fixed order.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |words: &[&str]| args.extend(words.iter().map(OsString::from));
        if let Some(queues) = self.queues {
            push(&["--queues", &queues.to_string()]);
        }
        if let Some(size) = self.size {
            push(&["--size", &crate::size::format_size(size)]);
        }
        if self.no_inline_encryption {
            push(&["--no-inline-encryption"]);
        }
        if let Some(profile) = self.profile {
            push(&["--profile", profile.name()]);
        }
        if let Some(slots) = self.slots {
            push(&["--slots", &slots.to_string()]);
        }
        if let Some(fault) = self.fault {
            push(&["--fault", fault.name()]);
        }
        if self.persist {
            push(&["--persist"]);
        }
        if let Some(limit) = self.key_usage_limit {
            push(&[
                "--key-usage-limit",
                &limit.bytes.to_string(),
                "--key-usage-limit-action",
                limit.action.name(),
            ]);
        }
        if let Some(key) = &self.default_key {
            args.push("--default-key".into());
            args.push(key.into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// [`DeviceOptions::args`] as strings, for reports.
    pub fn arg_strings(&self) -> Vec<String> {
        self.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

/// One `icelab serve`: its files and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// `--image`.
    pub image: PathBuf,
    /// `--socket`.
    pub socket: PathBuf,
    /// `--stats`.
    pub stats: Option<PathBuf>,
    /// `--trace`.
    pub trace: Option<PathBuf>,
    /// The rest.
    pub device: DeviceOptions,
    /// Environment variables for the process (e.g. `RUST_LOG`).
    pub env: Vec<(OsString, OsString)>,
}

impl ServeConfig {
    /// A device on `image` listening on `socket`, default options.
    pub fn new(image: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            socket: socket.into(),
            stats: None,
            trace: None,
            device: DeviceOptions::default(),
            env: Vec::new(),
        }
    }

    /// The command that runs it with the `icelab` binary `exe`.
    pub fn command(&self, exe: &Path) -> Command {
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--image")
            .arg(&self.image)
            .arg("--socket")
            .arg(&self.socket);
        if let Some(stats) = &self.stats {
            command.arg("--stats").arg(stats);
        }
        if let Some(trace) = &self.trace {
            command.arg("--trace").arg(trace);
        }
        command.args(self.device.args());
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// Where a backend's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logs {
    /// Standard output.
    pub stdout: PathBuf,
    /// Standard error.
    pub stderr: PathBuf,
}

impl Logs {
    /// Both streams into one file.
    pub fn combined(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            stdout: path.clone(),
            stderr: path,
        }
    }
}

/// A running backend serving a vhost-user socket; killed when dropped.
#[derive(Debug)]
pub struct ServeProcess {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    socket: PathBuf,
    logs: Logs,
}

impl ServeProcess {
    /// Starts `icelab serve` (the binary `exe`) as `config` says and waits
    /// up to `timeout` for its socket. An old socket file is removed first.
    pub fn spawn_icelab(
        exe: &Path,
        config: &ServeConfig,
        logs: Logs,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(&config.socket);
        Self::spawn(
            "icelab serve",
            config.command(exe),
            &config.socket,
            logs,
            timeout,
        )
    }

    /// Starts any backend with `command` and waits up to `timeout` for it
    /// to create `socket`. Its stdin is closed.
    pub fn spawn(
        name: &str,
        mut command: Command,
        socket: &Path,
        logs: Logs,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let create = |path: &Path| {
            File::create(path).with_context(|| format!("cannot create log {}", path.display()))
        };
        let stdout = create(&logs.stdout)?;
        let stderr = if logs.stderr == logs.stdout {
            stdout.try_clone()?
        } else {
            create(&logs.stderr)?
        };
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        let mut process = Self {
            name: name.to_owned(),
            child,
            status: None,
            socket: socket.to_owned(),
            logs,
        };
        let deadline = Instant::now() + timeout;
        while !is_socket(socket) {
            if let Some(status) = process.try_wait() {
                bail!(
                    "{name} exited ({status}) before creating its socket {}:\n{}",
                    socket.display(),
                    process.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                process.kill();
                bail!(
                    "{name} did not create its socket {} within {} s; killed it:\n{}",
                    socket.display(),
                    timeout.as_secs(),
                    process.log_tail(20)
                );
            }
            std::thread::sleep(POLL);
        }
        Ok(process)
    }

    /// The name it was started under (`icelab serve`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its exit status, if it has exited (does not block).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for it to exit; `None` if it still runs (it
    /// is left running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills it (SIGKILL) if it still runs, and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            // Failing to kill means it exited meanwhile; wait() reaps it.
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Where its output goes.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// Its standard error's file.
    pub fn stderr_log(&self) -> &Path {
        &self.logs.stderr
    }

    /// The last `lines` lines of its standard error (and standard output
    /// when it goes elsewhere).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if self.logs.stdout != self.logs.stderr {
            text.push_str(&crate::boot::tail(&self.logs.stdout, lines));
            text.push('\n');
        }
        text.push_str(&crate::boot::tail(&self.logs.stderr, lines));
        text
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_arguments_in_a_fixed_order() {
        let options = DeviceOptions {
            size: Some(1 << 30),
            queues: Some(2),
            profile: Some(ProfileName::Ufs),
            slots: Some(2),
            fault: Some(Fault::Plaintext),
            extra: vec!["--trace-max-bytes".into(), "1M".into()],
            ..DeviceOptions::default()
        };
        assert_eq!(
            options.arg_strings(),
            [
                "--queues",
                "2",
                "--size",
                "1G",
                "--profile",
                "ufs",
                "--slots",
                "2",
                "--fault",
                "plaintext",
                "--trace-max-bytes",
                "1M"
            ]
        );
        let plain = DeviceOptions {
            no_inline_encryption: true,
            persist: true,
            ..DeviceOptions::default()
        };
        assert_eq!(plain.arg_strings(), ["--no-inline-encryption", "--persist"]);
    }

    #[test]
    fn a_backend_that_exits_or_never_listens_is_an_error_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("s.sock");
        let mut command = Command::new("sh");
        command.args(["-c", "echo cannot open the image >&2; exit 3"]);
        let error = ServeProcess::spawn(
            "backend",
            command,
            &socket,
            Logs::combined(dir.path().join("log")),
            Duration::from_secs(5),
        )
        .expect_err("it exits");
        let message = format!("{error:#}");
        assert!(message.contains("exited"), "{message}");
        assert!(message.contains("cannot open the image"), "{message}");

        let mut command = Command::new("sleep");
        command.arg("30");
        let error = ServeProcess::spawn(
            "backend",
            command,
            &socket,
            Logs::combined(dir.path().join("log")),
            Duration::from_millis(100),
        )
        .expect_err("no socket");
        assert!(format!("{error:#}").contains("did not create its socket"));
    }
}
