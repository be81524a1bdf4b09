//! Starting `icelab serve` (and other vhost-user backends): a typed
//! configuration, the command line it becomes, and the running process,
//! waited for until its socket exists and killed when dropped. The one
//! launcher of the lab, the benches and the tests; also of a vendor's
//! device started from a shell command template ([`CommandTemplate`],
//! `icelab run --device-cmd`).

use anyhow::{Context, bail};
use icelab_contract::device::KeyUsageLimit;
use icelab_emulator::engine::{Fault, ProfileName};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
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
    /// `--key-manager-state`: the key manager's device secret
    /// (hardware-wrapped keys).
    pub key_manager_state: Option<PathBuf>,
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
        if let Some(state) = &self.key_manager_state {
            args.push("--key-manager-state".into());
            args.push(state.into());
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

/// A device started by a shell command (`icelab run --device-cmd`): the
/// template's `{socket}` and `{image}` become a boot's paths, shell-quoted,
/// and the result runs under `sh -c` in a process group of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandTemplate(String);

impl CommandTemplate {
    /// The placeholder of the vhost-user socket's path.
    pub const SOCKET: &'static str = "{socket}";
    /// The placeholder of the disk image's path.
    pub const IMAGE: &'static str = "{image}";

    /// Checks that `template` names both placeholders (every boot has its
    /// own socket and image).
    pub fn new(template: &str) -> anyhow::Result<Self> {
        for placeholder in [Self::SOCKET, Self::IMAGE] {
            if !template.contains(placeholder) {
                bail!(
                    "--device-cmd {template:?} has no {placeholder}: the lab gives every boot its \
                     own socket and image, e.g. --device-cmd \"mydevice --socket {{socket}} \
                     --image {{image}}\""
                );
            }
        }
        Ok(Self(template.to_owned()))
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shell command for `image` and `socket`: each placeholder
    /// replaced by the shell-quoted path, in one pass (a path containing a
    /// placeholder's text stays as it is).
    pub fn render(&self, image: &Path, socket: &Path) -> OsString {
        let mut out = Vec::new();
        let mut rest = self.0.as_str();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix(Self::SOCKET) {
                out.extend_from_slice(&shell_quote(socket.as_os_str()));
                rest = after;
            } else if let Some(after) = rest.strip_prefix(Self::IMAGE) {
                out.extend_from_slice(&shell_quote(image.as_os_str()));
                rest = after;
            } else {
                let c = rest.chars().next().unwrap_or_default();
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
        OsString::from_vec(out)
    }

    /// `sh -c` with [`CommandTemplate::render`], in a new process group
    /// (so that killing the group reaches what `sh` started).
    pub fn command(&self, image: &Path, socket: &Path) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(self.render(image, socket));
        command.process_group(0);
        command
    }
}

/// `text` as one POSIX shell word: as it is when it holds only characters
/// no shell treats specially, else in single quotes (a `'` becomes `'\''`).
pub fn shell_quote(text: &OsStr) -> Vec<u8> {
    let bytes = text.as_bytes();
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"_-./+,:@%=".contains(b);
    if !bytes.is_empty() && bytes.iter().all(plain) {
        return bytes.to_vec();
    }
    let mut quoted = vec![b'\''];
    for &b in bytes {
        if b == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    quoted
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
    /// It leads a process group of its own: signals go to the group.
    group: bool,
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

    /// Starts the device of `template` on `image` and `socket` (`sh -c`,
    /// its own process group, named `command`) and waits up to `timeout`
    /// for its socket. An old socket file is removed first.
    pub fn spawn_template(
        template: &CommandTemplate,
        image: &Path,
        socket: &Path,
        logs: Logs,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(socket);
        Self::launch(
            "command",
            template.command(image, socket),
            socket,
            logs,
            timeout,
            true,
        )
    }

    /// Starts any backend with `command` and waits up to `timeout` for it
    /// to create `socket`. Its stdin is closed.
    pub fn spawn(
        name: &str,
        command: Command,
        socket: &Path,
        logs: Logs,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::launch(name, command, socket, logs, timeout, false)
    }

    /// [`ServeProcess::spawn`]; `group`: `command` makes a new process
    /// group, and signals go to all of it.
    fn launch(
        name: &str,
        mut command: Command,
        socket: &Path,
        logs: Logs,
        timeout: Duration,
        group: bool,
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
            group,
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

    /// Kills it (SIGKILL) if it still runs, and reaps it. A process
    /// group gets SIGKILL even when its leader has exited: what it
    /// started may still run.
    pub fn kill(&mut self) {
        if self.group {
            self.signal_group(libc::SIGKILL);
            // Once is enough: every member is dead.
            self.group = false;
        }
        if self.try_wait().is_none() {
            // Failing to kill means it exited meanwhile; wait() reaps it.
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Stops it politely: SIGTERM (to its process group, if it has one),
    /// up to `timeout` for it to exit, then [`ServeProcess::kill`]. Its
    /// exit status after SIGTERM; `None` when it had to be killed. Only
    /// SIGKILL when it has already exited.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_wait() {
            self.kill();
            return Some(status);
        }
        if self.group {
            self.signal_group(libc::SIGTERM);
        } else {
            self.signal(libc::SIGTERM);
        }
        let status = self.wait_timeout(timeout);
        self.kill();
        status
    }

    /// Sends `signal` to the process (while it is not reaped).
    fn signal(&self, signal: libc::c_int) {
        if self.status.is_none()
            && let Ok(pid) = libc::pid_t::try_from(self.child.id())
        {
            // SAFETY: kill(2) has no memory effects; the child is not
            // reaped yet, so its pid is still ours.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Sends `signal` to the process group it leads.
    fn signal_group(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory effects. The group id stays
            // ours while any member lives; once it is empty this is ESRCH.
            unsafe { libc::kill(-pid, signal) };
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

    #[test]
    fn a_template_gets_the_paths_shell_quoted() {
        let template =
            CommandTemplate::new("mydev --socket {socket} --image={image} -v").expect("valid");
        let rendered = template.render(
            Path::new("/tmp/my disk/it's {socket}.img"),
            Path::new("/run/icelab/s.sock"),
        );
        assert_eq!(
            rendered,
            OsStr::new(
                "mydev --socket /run/icelab/s.sock --image='/tmp/my disk/it'\\''s {socket}.img' -v"
            )
        );
        assert_eq!(shell_quote(OsStr::new("")), b"''");
        assert_eq!(shell_quote(OsStr::new("a$b")), b"'a$b'");
        for missing in ["dev --image {image}", "dev --socket {socket}"] {
            let error = format!("{:#}", CommandTemplate::new(missing).expect_err("refused"));
            assert!(error.contains("has no {"), "{error}");
        }
    }

    #[test]
    fn a_template_runs_under_sh_and_its_whole_group_is_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spaced = dir.path().join("a dir");
        std::fs::create_dir(&spaced).expect("mkdir");
        let socket = spaced.join("s.sock");
        let pid_file = spaced.join("the image");
        // The "device": a child of sh that would outlive it, its pid in
        // {image}; the test plays the device's listening socket.
        let template =
            CommandTemplate::new("test -n {socket}; sleep 300 & echo $! > {image}; wait")
                .expect("valid");
        let listen = {
            let socket = socket.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                std::os::unix::net::UnixListener::bind(&socket).expect("bind")
            })
        };
        let mut process = ServeProcess::spawn_template(
            &template,
            &pid_file,
            &socket,
            Logs::combined(dir.path().join("log")),
            Duration::from_secs(10),
        )
        .expect("starts");
        let _listener = listen.join().expect("listener");
        assert_eq!(process.name(), "command");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("the quoted path was written")
            .trim()
            .parse()
            .expect("a pid");
        let status = process.terminate(Duration::from_secs(10)).expect("exits");
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(libc::SIGTERM) || status.code() == Some(143),
            "{status}"
        );
        // The background child got the group's SIGTERM too (gone, or a
        // zombie waiting for init).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'));
            if !running {
                break;
            }
            assert!(Instant::now() < deadline, "sleep {pid} survived: {state}");
            std::thread::sleep(POLL);
        }
    }
}
