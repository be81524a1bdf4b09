//! Results: JSON lines to the results device, one human line per test to
//! the console.
//!
//! The wire format (one JSON object per line, `type` first):
//!
//! ```text
//! {"type":"hello","kernel_release":"...","kernel_version":"...","suite":"smoke","expect":"native"}
//! {"type":"test","name":"crypto-sysfs","status":"pass","duration_ms":3,"message":"...","facts":{...}}
//! {"type":"done","passed":6,"failed":0}
//! ```
//!
//! Each line is written with one `write(2)` and then drained (a tty) or
//! fsynced (a file) so that a line the host has not seen was never
//! finished by the guest either.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value};

pub use icelab_contract::record::Status;
use icelab_contract::record::{Record, TestRecord};

/// `PASS` or `FAIL`, for the console.
fn console_label(status: Status) -> &'static str {
    match status {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
    }
}

/// The facts a test reports: what it observed, for the host's checks and
/// the verifier. Never secret material.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Facts(Map<String, Value>);

impl Facts {
    /// No facts.
    pub fn new() -> Facts {
        Facts::default()
    }

    /// Sets one fact, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Facts {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// The value of one fact.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
}

/// Errors opening or configuring the results device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device could not be opened.
    #[error("cannot open results device {path}: {source}")]
    Open {
        /// The device.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is a tty and raw mode could not be set.
    #[error("cannot set raw mode on {path}: {source}")]
    Termios {
        /// The device.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Where the JSON lines go.
#[derive(Debug)]
enum Sink {
    /// Standard output (`icelab.results=-`).
    Stdout,
    /// A device or file; `tty` selects tcdrain over fsync.
    Device { file: File, tty: bool },
}

/// Where the human lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Standard output (as PID 1 this is /dev/console).
    Stdout,
    /// Standard error (when the JSON lines use standard output).
    Stderr,
}

/// Writes the results stream and counts the verdicts.
#[derive(Debug)]
pub struct Reporter {
    sink: Sink,
    console: Console,
    passed: u32,
    failed: u32,
    done: bool,
}

impl Reporter {
    /// Opens the results device at `path` (`-` for standard output).
    ///
    /// A device is opened `O_WRONLY|O_NOCTTY` (and `O_NONBLOCK` while it is
    /// being set up, so a serial line without carrier cannot block the
    /// open); a tty is put in raw mode at 115200 baud with `CLOCAL`. A path
    /// outside /dev that does not exist is created (a file, for debugging);
    /// under /dev it is not, so a missing port is an error, not a file.
    pub fn open(path: &Path) -> Result<Reporter, Error> {
        if path == Path::new(crate::cmdline::STDOUT_RESULTS) {
            return Ok(Reporter::with_sink(Sink::Stdout, Console::Stderr));
        }
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .create(!path.starts_with("/dev"))
            .mode(0o644)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        let fd = file.as_raw_fd();
        // SAFETY: isatty only inspects the open fd.
        let tty = unsafe { libc::isatty(fd) } == 1;
        if tty {
            set_raw(&file).map_err(|source| Error::Termios {
                path: path.to_owned(),
                source,
            })?;
        }
        clear_nonblock(&file).map_err(open_err)?;
        Ok(Reporter::with_sink(
            Sink::Device { file, tty },
            Console::Stdout,
        ))
    }

    /// A reporter writing the JSON lines to standard output and the human
    /// lines to standard error.
    pub fn stdout() -> Reporter {
        Reporter::with_sink(Sink::Stdout, Console::Stderr)
    }

    fn with_sink(sink: Sink, console: Console) -> Reporter {
        Reporter {
            sink,
            console,
            passed: 0,
            failed: 0,
            done: false,
        }
    }

    /// Writes the hello line.
    pub fn hello(&mut self, kernel_release: &str, kernel_version: &str, suite: &str, expect: &str) {
        self.write_record(&Record::Hello {
            kernel_release: kernel_release.to_owned(),
            kernel_version: kernel_version.to_owned(),
            suite: suite.to_owned(),
            expect: expect.to_owned(),
        });
    }

    /// Writes one test's line, counts it and echoes it to the console.
    pub fn test(
        &mut self,
        name: &str,
        status: Status,
        duration_ms: u64,
        message: &str,
        facts: &Facts,
    ) {
        match status {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
        }
        self.write_record(&Record::Test(TestRecord {
            name: name.to_owned(),
            status,
            duration_ms,
            message: message.to_owned(),
            facts: facts.0.clone(),
        }));
        self.say(&format!(
            "{} {name} ({duration_ms} ms): {message}",
            console_label(status)
        ));
    }

    /// Writes the done line (once; later calls do nothing) and returns the
    /// counts.
    pub fn done(&mut self) -> (u32, u32) {
        if !self.done {
            self.done = true;
            let (passed, failed) = (self.passed, self.failed);
            self.write_record(&Record::Done { passed, failed });
            self.say(&format!("{passed} passed, {failed} failed"));
        }
        (self.passed, self.failed)
    }

    /// Writes a signal line: the host acts on it at once.
    pub fn signal(&mut self, name: &str) {
        self.signal_with(name, Facts::new());
    }

    /// Writes a signal line with what the host needs to act on it.
    pub fn signal_with(&mut self, name: &str, facts: Facts) {
        self.write_record(&Record::Signal {
            name: name.to_owned(),
            facts: facts.0,
        });
    }

    /// One human line on the console, prefixed with the runner's name.
    pub fn say(&self, line: &str) {
        say(self.console, line);
    }

    fn write_record(&mut self, record: &Record) {
        let mut line = record.to_line();
        line.push('\n');
        if let Err(e) = self.write_line(line.as_bytes()) {
            // Nowhere else to report it: the console is all there is.
            self.say(&format!(
                "warning: writing results failed: {e}; line was: {}",
                line.trim_end()
            ));
        }
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Sink::Device { file, tty } => {
                file.write_all(line)?;
                if *tty {
                    // SAFETY: tcdrain only waits on the open fd.
                    if unsafe { libc::tcdrain(file.as_raw_fd()) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                } else {
                    match file.sync_data() {
                        // Pipes and some character devices cannot be
                        // synced; the write itself is all there is.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EROFS)) => {
                            Ok(())
                        }
                        other => other,
                    }
                }
            }
        }
    }
}

/// Writes one human line (`icelab-guest: ...`) to the console.
pub fn say(console: Console, line: &str) {
    let text = format!("icelab-guest: {}\n", line.replace('\n', " "));
    // A console that cannot be written to has no one to complain to.
    let _ = match console {
        Console::Stdout => io::stdout().lock().write_all(text.as_bytes()),
        Console::Stderr => io::stderr().lock().write_all(text.as_bytes()),
    };
}

/// Puts a tty in raw mode, 8N1 at 115200 baud, ignoring modem lines.
pub fn set_raw(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: termios is plain old data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios and `fd` an open tty.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `t` is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    // The speed goes into c_cflag's CBAUD bits directly: the libc crate
    // binds cfset[io]speed to versioned glibc symbols that a static link
    // cannot resolve. Input speed 0 in c_cflag means "same as output".
    t.c_cflag = (t.c_cflag & !libc::CBAUD) | libc::B115200;
    t.c_cflag |= libc::CLOCAL | libc::CREAD;
    t.c_cflag &= !libc::CRTSCTS;
    // SAFETY: `t` is a valid termios and `fd` an open tty.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an open fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The process-wide reporter, reachable from the panic hook.
static REPORTER: Mutex<Option<Reporter>> = Mutex::new(None);

/// Makes `reporter` the process-wide reporter.
pub fn install(reporter: Reporter) {
    *REPORTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(reporter);
}

/// Runs `f` on the process-wide reporter; `None` if none is installed.
pub fn with<T>(f: impl FnOnce(&mut Reporter) -> T) -> Option<T> {
    let mut guard = REPORTER.lock().unwrap_or_else(|p| p.into_inner());
    guard.as_mut().map(f)
}

/// Like [`with`], but gives up instead of waiting when the reporter is
/// busy (the panic hook must not deadlock on a lock its own thread holds).
pub fn try_with<T>(f: impl FnOnce(&mut Reporter) -> T) -> Option<T> {
    let mut guard = match REPORTER.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    guard.as_mut().map(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hello_line_is_exact() {
        let line = Record::Hello {
            kernel_release: "7.3.4+deb14-cloud-amd64".into(),
            kernel_version: "#1 SMP Debian".into(),
            suite: "smoke".into(),
            expect: "native".into(),
        }
        .to_line();
        assert_eq!(
            line,
            r##"{"type":"hello","kernel_release":"7.3.4+deb14-cloud-amd64","kernel_version":"#1 SMP Debian","suite":"smoke","expect":"native"}"##
        );
    }

    #[test]
    fn test_line_is_exact_and_escapes() {
        let mut facts = Facts::new();
        facts
            .set("num_keyslots", 32)
            .set("path", "/sys/block/vda/queue/crypto");
        let line = Record::Test(TestRecord {
            name: "crypto-sysfs".into(),
            status: Status::Fail,
            duration_ms: 12,
            message: "expected \"0x1e00\"\nnewline".into(),
            facts: facts.0.clone(),
        })
        .to_line();
        assert_eq!(
            line,
            r#"{"type":"test","name":"crypto-sysfs","status":"fail","duration_ms":12,"message":"expected \"0x1e00\"\nnewline","facts":{"num_keyslots":32,"path":"/sys/block/vda/queue/crypto"}}"#
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn done_line_is_exact() {
        let line = Record::Done {
            passed: 5,
            failed: 1,
        }
        .to_line();
        assert_eq!(line, r#"{"type":"done","passed":5,"failed":1}"#);
    }

    #[test]
    fn lines_round_trip_through_json() {
        let mut facts = Facts::new();
        facts.set("files", json!([{"name": "a", "size": 1}]));
        let line = Record::Test(TestRecord {
            name: "x".into(),
            status: Status::Pass,
            duration_ms: 0,
            message: String::new(),
            facts: facts.0.clone(),
        })
        .to_line();
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["type"], "test");
        assert_eq!(v["status"], "pass");
        assert_eq!(v["facts"]["files"][0]["size"], 1);
    }

    #[test]
    fn reporter_writes_counts_to_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("results.jsonl");
        let mut r = Reporter::open(&path).expect("open");
        r.hello("r", "v", "smoke", "fallback");
        r.test("a", Status::Pass, 1, "ok", &Facts::new());
        r.test("b", Status::Fail, 2, "bad", &Facts::new());
        assert_eq!(r.done(), (1, 1));
        assert_eq!(r.done(), (1, 1), "done is written once");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with(r#"{"type":"hello""#));
        assert_eq!(lines[3], r#"{"type":"done","passed":1,"failed":1}"#);
    }

    #[test]
    fn missing_device_under_dev_is_an_error_not_a_file() {
        let err = Reporter::open(Path::new("/dev/icelab-no-such-port")).expect_err("must fail");
        assert!(
            err.to_string().contains("/dev/icelab-no-such-port"),
            "{err}"
        );
        assert!(!Path::new("/dev/icelab-no-such-port").exists());
    }

    #[test]
    fn tty_is_put_in_raw_mode() {
        // SAFETY: plain libc calls on a fresh pseudo-terminal pair.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut name = [0 as libc::c_char; 64];
            assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
            let path = std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned();
            let mut r = Reporter::open(Path::new(&path)).expect("open pty");
            let Sink::Device { file, tty } = &r.sink else {
                panic!("expected a device sink");
            };
            assert!(*tty);
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(file.as_raw_fd(), &mut t), 0);
            assert_eq!(t.c_oflag & libc::OPOST, 0, "output post-processing off");
            assert_eq!(t.c_lflag & libc::ECHO, 0, "echo off");
            assert_ne!(t.c_cflag & libc::CLOCAL, 0);
            r.done();
            let mut buf = [0u8; 128];
            let n = libc::read(master, buf.as_mut_ptr().cast(), buf.len());
            assert!(n > 0);
            let got = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            // Raw mode: "\n" stays "\n" (no "\r\n").
            assert_eq!(got, "{\"type\":\"done\",\"passed\":0,\"failed\":0}\n");
            libc::close(master);
        }
    }
}
