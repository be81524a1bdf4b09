//! Runs a suite: each test in a worker thread with a deadline, in order,
//! with dependencies, reporting every verdict.
//!
//! A test is a plain function `fn(&Ctx, &mut State, &mut Facts) ->
//! Result<String, Failure>`: it records what it observes in `facts` as it
//! goes (so a failure still reports what was seen before it), returns a
//! one-line message on success, and any error (its `Display` chain is the
//! message) on failure.
//!
//! Rules:
//! - a test whose `needs` include a test that failed is reported as failed
//!   with "not run: needs X, which failed", without running;
//! - a `fatal` test that fails ends the suite there (later tests are not
//!   reported: the suite cannot mean anything without it);
//! - a test that passes its deadline is reported as failed with the step it
//!   was in; its thread cannot be stopped and owns the suite's state, so
//!   every later test is reported as failed with "not run".

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmdline::{Config, Fault, FaultKind};
use crate::fscrypt::KeyIdentifier;
use crate::report::{self, Facts, Status};
use crate::sys::Uname;

/// What every test may read: the configuration and the environment.
#[derive(Debug)]
pub struct Ctx {
    /// The checked parameters.
    pub config: Config,
    /// The running kernel.
    pub uname: Uname,
    /// Whether the runner is PID 1 (it loaded nothing yet, owns the box).
    pub init: bool,
    step: Mutex<String>,
}

impl Ctx {
    /// A context for a run.
    pub fn new(config: Config, uname: Uname, init: bool) -> Ctx {
        Ctx {
            config,
            uname,
            init,
            step: Mutex::new(String::new()),
        }
    }

    /// Records what the current test is doing now; a timeout message
    /// names it.
    pub fn step(&self, what: impl Into<String>) {
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) = what.into();
    }

    fn current_step(&self) -> String {
        self.step.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A test's base timeout scaled by `icelab.timeout_factor`.
    pub fn scaled(&self, base: Duration) -> Duration {
        base.saturating_mul(self.config.timeout_factor)
    }
}

/// What the tests of a suite hand to each other.
#[derive(Debug, Default)]
pub struct State {
    /// Seed of the file contents (reported, so the host can regenerate
    /// the plaintext).
    pub seed: u64,
    /// Whether the suite's filesystem is mounted at the mount point.
    pub mounted: bool,
    /// The master key added to that filesystem, until it is removed.
    pub key: Option<KeyIdentifier>,
    /// Further master keys added to that filesystem (the lab suite adds
    /// one per test), in order; the suite's last test removes them all.
    pub keys: Vec<KeyIdentifier>,
}

/// A failed test's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl<E: StdError> From<E> for Failure {
    fn from(err: E) -> Failure {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            let text = s.to_string();
            // thiserror messages often embed their source already.
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Failure(message)
    }
}

/// Builds a [`Failure`] from a message.
pub fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(message.into()))
}

/// A test's body.
pub type TestFn = fn(&Ctx, &mut State, &mut Facts) -> Result<String, Failure>;

/// One test of a suite.
#[derive(Debug, Clone, Copy)]
pub struct TestDef {
    /// Its stable name.
    pub name: &'static str,
    /// Its deadline before `icelab.timeout_factor`.
    pub timeout: Duration,
    /// Tests that must have passed for it to run.
    pub needs: &'static [&'static str],
    /// Whether its failure ends the suite.
    pub fatal: bool,
    /// Its body.
    pub run: TestFn,
}

/// The name of the test running now, for the panic hook.
static CURRENT: Mutex<Option<&'static str>> = Mutex::new(None);

/// The test running now, if any (for the panic hook; never blocks).
pub fn current_test() -> Option<&'static str> {
    CURRENT.try_lock().ok().and_then(|g| *g)
}

fn set_current(name: Option<&'static str>) {
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = name;
}

/// One finished test.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The test.
    pub name: &'static str,
    /// Pass or fail.
    pub status: Status,
    /// Wall time.
    pub duration_ms: u64,
    /// The message.
    pub message: String,
    /// What it observed.
    pub facts: Facts,
}

/// Runs `tests` in order and hands each verdict to `sink` as soon as it is
/// known. Returns the verdicts.
pub fn run_tests(
    ctx: &Arc<Ctx>,
    tests: &[TestDef],
    state: State,
    mut sink: impl FnMut(&Verdict),
) -> Vec<Verdict> {
    let mut verdicts: Vec<Verdict> = Vec::new();
    let mut state = Some(state);
    for test in tests {
        let failed_need = test.needs.iter().find(|n| {
            verdicts
                .iter()
                .any(|v| v.name == **n && v.status == Status::Fail)
        });
        let verdict = match (&mut state, failed_need) {
            (None, _) => skipped(
                test,
                "not run: an earlier test timed out and still holds the suite's state",
            ),
            (Some(_), Some(need)) => skipped(test, &format!("not run: needs {need}, which failed")),
            (Some(_), None) => {
                set_current(Some(test.name));
                let (verdict, back) = run_one(ctx, test, state.take().unwrap_or_default());
                set_current(None);
                state = back;
                verdict
            }
        };
        sink(&verdict);
        let stop = test.fatal && verdict.status == Status::Fail;
        verdicts.push(verdict);
        if stop {
            break;
        }
    }
    verdicts
}

fn skipped(test: &TestDef, message: &str) -> Verdict {
    Verdict {
        name: test.name,
        status: Status::Fail,
        duration_ms: 0,
        message: message.to_owned(),
        facts: Facts::new(),
    }
}

/// Runs one test in a worker thread; returns its verdict and, unless it
/// timed out, the state.
fn run_one(ctx: &Arc<Ctx>, test: &TestDef, mut state: State) -> (Verdict, Option<State>) {
    let timeout = ctx.scaled(test.timeout);
    ctx.step("starting");
    let (tx, rx) = mpsc::channel();
    let worker_ctx = Arc::clone(ctx);
    let body = test.run;
    let start = Instant::now();
    let name = test.name;
    let spawned = thread::Builder::new()
        .name(test.name.to_owned())
        .spawn(move || {
            inject_fault(&worker_ctx, name);
            let mut facts = Facts::new();
            let result = body(&worker_ctx, &mut state, &mut facts);
            // The receiver is gone only if the runner gave up on us.
            let _ = tx.send((result, facts, state));
        });
    if let Err(e) = spawned {
        let v = Verdict {
            name: test.name,
            status: Status::Fail,
            duration_ms: 0,
            message: format!("cannot start the test's thread: {e}"),
            facts: Facts::new(),
        };
        return (v, None);
    }
    let received = rx.recv_timeout(timeout);
    let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    match received {
        Ok((result, facts, state)) => {
            let (status, message) = match result {
                Ok(m) => (Status::Pass, m),
                Err(Failure(m)) => (Status::Fail, m),
            };
            let v = Verdict {
                name: test.name,
                status,
                duration_ms,
                message,
                facts,
            };
            (v, Some(state))
        }
        Err(_) => {
            let mut facts = Facts::new();
            facts.set(
                "timeout_ms",
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            );
            let v = Verdict {
                name: test.name,
                status: Status::Fail,
                duration_ms,
                message: format!("timed out after {timeout:?} during: {}", ctx.current_step()),
                facts,
            };
            (v, None)
        }
    }
}

/// Injects `icelab.fault` if it names the test `name`.
fn inject_fault(ctx: &Ctx, name: &str) {
    match &ctx.config.fault {
        Some(Fault {
            kind: FaultKind::Panic,
            test,
        }) if test == name => {
            ctx.step("injected fault: panic");
            panic!("injected fault (icelab.fault=panic:{name})");
        }
        Some(Fault {
            kind: FaultKind::Hang,
            test,
        }) if test == name => {
            ctx.step("injected fault: hang");
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}

/// Runs `tests` and reports each verdict through the process-wide
/// reporter. Returns whether every test passed.
pub fn run_and_report(ctx: &Arc<Ctx>, tests: &[TestDef], state: State) -> bool {
    let verdicts = run_tests(ctx, tests, state, |v| {
        report::with(|r| r.test(v.name, v.status, v.duration_ms, &v.message, &v.facts));
    });
    verdicts.iter().all(|v| v.status == Status::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::Config;

    fn ctx() -> Arc<Ctx> {
        let uname = Uname {
            release: "7.3.4".into(),
            version: "#1".into(),
        };
        Arc::new(Ctx::new(Config::defaults(false), uname, false))
    }

    fn ok(_: &Ctx, s: &mut State, f: &mut Facts) -> Result<String, Failure> {
        s.mounted = true;
        f.set("seen", true);
        Ok("fine".into())
    }

    fn bad(_: &Ctx, s: &mut State, f: &mut Facts) -> Result<String, Failure> {
        assert!(s.mounted, "state is handed on");
        f.set("before_failure", 1);
        Err(std::io::Error::from_raw_os_error(libc::EIO).into())
    }

    fn hang(ctx: &Ctx, _: &mut State, _: &mut Facts) -> Result<String, Failure> {
        ctx.step("sleeping forever");
        thread::sleep(Duration::from_secs(3600));
        Ok(String::new())
    }

    fn def(
        name: &'static str,
        run: TestFn,
        needs: &'static [&'static str],
        fatal: bool,
    ) -> TestDef {
        TestDef {
            name,
            timeout: Duration::from_secs(5),
            needs,
            fatal,
            run,
        }
    }

    #[test]
    fn passes_fails_and_skips_dependents() {
        let tests = [
            def("a", ok, &[], false),
            def("b", bad, &["a"], false),
            def("c", ok, &["b"], false),
            def("d", ok, &["a"], false),
        ];
        let mut seen = Vec::new();
        let v = run_tests(&ctx(), &tests, State::default(), |v| seen.push(v.name));
        assert_eq!(seen, ["a", "b", "c", "d"]);
        assert_eq!(v[0].status, Status::Pass);
        assert_eq!(v[0].message, "fine");
        assert_eq!(v[0].facts.get("seen"), Some(&serde_json::Value::Bool(true)));
        assert_eq!(v[1].status, Status::Fail);
        assert!(
            v[1].message.contains("Input/output error"),
            "{}",
            v[1].message
        );
        assert_eq!(
            v[1].facts.get("before_failure"),
            Some(&serde_json::json!(1))
        );
        assert_eq!(v[2].status, Status::Fail);
        assert_eq!(v[2].message, "not run: needs b, which failed");
        assert_eq!(v[3].status, Status::Pass);
    }

    #[test]
    fn fatal_failure_stops_the_suite() {
        let tests = [
            def("a", ok, &[], false),
            def("b", bad, &[], true),
            def("c", ok, &[], false),
        ];
        let v = run_tests(&ctx(), &tests, State::default(), |_| {});
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn timeout_names_the_step_and_skips_the_rest() {
        let mut hanging = def("h", hang, &[], false);
        hanging.timeout = Duration::from_millis(100);
        let tests = [def("a", ok, &[], false), hanging, def("c", ok, &[], false)];
        let start = Instant::now();
        let v = run_tests(&ctx(), &tests, State::default(), |_| {});
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(v[1].status, Status::Fail);
        assert_eq!(
            v[1].message,
            "timed out after 100ms during: sleeping forever"
        );
        assert_eq!(v[2].status, Status::Fail);
        assert!(
            v[2].message
                .starts_with("not run: an earlier test timed out")
        );
    }

    #[test]
    fn injected_hang_times_out() {
        let mut config = Config::defaults(false);
        config.fault = Some(Fault {
            kind: FaultKind::Hang,
            test: "a".into(),
        });
        let uname = Uname {
            release: "7.3.4".into(),
            version: "#1".into(),
        };
        let ctx = Arc::new(Ctx::new(config, uname, false));
        let mut a = def("a", ok, &[], false);
        a.timeout = Duration::from_millis(100);
        let v = run_tests(&ctx, &[a], State::default(), |_| {});
        assert_eq!(
            v[0].message,
            "timed out after 100ms during: injected fault: hang"
        );
    }

    #[test]
    fn failure_keeps_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let f: Failure = Outer(std::io::Error::other("inner")).into();
        assert_eq!(f.0, "outer: inner");
    }
}
