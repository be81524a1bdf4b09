//! External programs (mke2fs, modprobe) run with a deadline: a program
//! that hangs is killed, never waited for forever.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Why a program did not finish successfully.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such program in PATH.
    #[error("{program}: not found in PATH {path:?}")]
    NotFound {
        /// The program.
        program: String,
        /// The PATH searched.
        path: String,
    },
    /// It could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It ran past its deadline and was killed.
    #[error(
        "{command}: killed after {timeout:?} without finishing{}",
        tail(stderr)
    )]
    Timeout {
        /// The command line.
        command: String,
        /// The deadline.
        timeout: Duration,
        /// What it had written to stderr.
        stderr: String,
    },
    /// It exited unsuccessfully.
    #[error("{command}: {status}{}", tail(stderr))]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
}

fn tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        // Keep the message one readable line.
        let last: Vec<&str> = s.lines().rev().take(3).collect();
        let joined: Vec<&str> = last.into_iter().rev().collect();
        format!("; stderr: {}", joined.join(" | "))
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What a finished program wrote.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Finds `program` in PATH (or takes it as is if it contains a `/`).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Runs `program args...` and waits at most `timeout`; succeeds only on
/// exit status 0.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let exe = which(program).ok_or_else(|| Error::NotFound {
        program: program.to_owned(),
        path: std::env::var("PATH").unwrap_or_default(),
    })?;
    let mut child = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    // Drain both pipes in threads so a chatty program cannot block on a
    // full pipe while we wait for it.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_deadline(&mut child, timeout);
    // A descendant that escaped the process group could keep a pipe open:
    // wait for the captures only briefly.
    let grace = Duration::from_secs(2);
    let stdout = out.recv_timeout(grace).unwrap_or_default();
    let stderr = err.recv_timeout(grace).unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(Output { stdout, stderr }),
        Some(status) => Err(Error::Failed {
            command,
            status,
            stderr,
        }),
        None => Err(Error::Timeout {
            command,
            timeout,
            stderr,
        }),
    }
}

/// Reads `pipe` to its end in a thread; the text arrives on the channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut p) = pipe {
            // A read error just ends the capture.
            let _ = p.read_to_end(&mut text);
        }
        // The receiver may have given up; nothing to do then.
        let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
    });
    rx
}

/// Waits for `child` until `timeout`; kills and reaps it past that and
/// returns `None`.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            // Past the deadline, or try_wait failed (nothing to wait for).
            _ => {
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: kill(2) on the child's own process group.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_captures_output() {
        let out = run(
            "sh",
            &["-c", "echo hi; echo err >&2"],
            Duration::from_secs(10),
        )
        .expect("runs");
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn failure_names_command_status_and_stderr() {
        let e = run(
            "sh",
            &["-c", "echo boom >&2; exit 3"],
            Duration::from_secs(10),
        )
        .expect_err("fails");
        let text = e.to_string();
        assert!(
            text.starts_with("sh -c echo boom >&2; exit 3: exit status: 3"),
            "{text}"
        );
        assert!(text.ends_with("stderr: boom"), "{text}");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let start = Instant::now();
        let e = run(
            "sh",
            &["-c", "sleep 30 & sleep 30"],
            Duration::from_millis(200),
        )
        .expect_err("times out");
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_named() {
        let e = run("icelab-no-such-program", &[], Duration::from_secs(1)).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("icelab-no-such-program: not found in PATH"),
            "{e}"
        );
    }
}
