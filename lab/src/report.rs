//! Results of a lab run: the human summary (last line `N passed, N
//! failed`) and the JSON report (fields in the README, "Reports").

use icelab_contract::record::{Status, TestRecord};
use serde_json::{Value, json};
use std::time::Duration;

/// Outcome of one named test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It failed; the message says why.
    Fail,
    /// It did not run; the message says why (a host check that needs
    /// what only `icelab serve` provides, with `--device-cmd`).
    Skip,
}

impl Outcome {
    /// `pass`, `fail` or `skip`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
        }
    }
}

/// Who ran a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The in-guest runner.
    Guest,
    /// `icelab run` on the host (device checks, verifier, trace checks).
    Host,
}

impl Source {
    /// `guest` or `host`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Guest => "guest",
            Source::Host => "host",
        }
    }
}

/// One test result, from the guest or from the host.
#[derive(Clone, Debug)]
pub struct TestResult {
    /// Boot it belongs to.
    pub boot: String,
    /// Who ran it.
    pub source: Source,
    /// Test name.
    pub name: String,
    /// Pass or fail.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
    /// Why it failed, or a note.
    pub message: String,
    /// Facts the test reported.
    pub facts: Value,
}

impl TestResult {
    /// A host-side result.
    pub fn host(boot: &str, name: &str, passed: bool, message: String, facts: Value) -> Self {
        Self {
            boot: boot.to_owned(),
            source: Source::Host,
            name: name.to_owned(),
            outcome: if passed { Outcome::Pass } else { Outcome::Fail },
            duration: Duration::ZERO,
            message,
            facts,
        }
    }

    /// A host check that did not run, and why.
    pub fn skipped(boot: &str, name: &str, reason: String) -> Self {
        Self {
            outcome: Outcome::Skip,
            ..Self::host(boot, name, true, reason, Value::Null)
        }
    }

    /// A guest test's result, from its line.
    pub fn from_guest(boot: &str, test: TestRecord) -> Self {
        Self {
            boot: boot.to_owned(),
            source: Source::Guest,
            name: test.name,
            outcome: match test.status {
                Status::Pass => Outcome::Pass,
                Status::Fail => Outcome::Fail,
            },
            duration: Duration::from_millis(test.duration_ms),
            message: test.message,
            facts: Value::Object(test.facts),
        }
    }

    /// `PASS boot/name (1.2 s)`, `FAIL boot/name: message` or `SKIP
    /// boot/name: reason`.
    pub fn line(&self) -> String {
        match self.outcome {
            Outcome::Pass => format!(
                "PASS {}/{} ({:.1} s)",
                self.boot,
                self.name,
                self.duration.as_secs_f64()
            ),
            Outcome::Fail => format!("FAIL {}/{}: {}", self.boot, self.name, self.message),
            Outcome::Skip => format!("SKIP {}/{}: {}", self.boot, self.name, self.message),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "boot": self.boot,
            "name": self.name,
            "source": self.source.name(),
            "status": self.outcome.name(),
            "duration_ms": self.duration.as_millis() as u64,
            "message": self.message,
            "facts": self.facts,
        })
    }
}

/// One boot's record for the reports.
#[derive(Clone, Debug)]
pub struct BootRecord {
    /// Boot name (e.g. `ufs`, `native`, `control`).
    pub name: String,
    /// The guest runner's suite.
    pub guest_suite: String,
    /// Engine profile; `None` for a device without inline encryption.
    pub profile: Option<String>,
    /// Seed of the guest's keys and contents.
    pub seed: u64,
    /// `icelab serve` arguments (besides image, socket, stats, trace);
    /// empty for a device command.
    pub device_args: Vec<String>,
    /// The device command as run (`--device-cmd` with the boot's paths).
    pub device_command: Option<String>,
    /// The guest's `icelab.*` kernel parameters.
    pub cmdline: String,
    /// The runner's hello line.
    pub hello: Value,
    /// The device's final stats.
    pub stats: Value,
    /// The verifier's report (`Null` when it did not run).
    pub verifier: Value,
    /// Files of the boot's merged manifest.
    pub manifest_files: usize,
    /// Wall time of the boot.
    pub duration: Duration,
}

/// Counts of a run: passed and failed (skipped tests are neither).
pub fn counts(results: &[TestResult]) -> (usize, usize) {
    let count = |outcome| results.iter().filter(|r| r.outcome == outcome).count();
    (count(Outcome::Pass), count(Outcome::Fail))
}

/// Skipped tests of a run.
pub fn skipped(results: &[TestResult]) -> usize {
    results
        .iter()
        .filter(|r| r.outcome == Outcome::Skip)
        .count()
}

/// The run's last line: `N passed, M failed`, and `, K skipped` when
/// something was.
pub fn summary_line(results: &[TestResult]) -> String {
    let (passed, failed) = counts(results);
    match skipped(results) {
        0 => format!("{passed} passed, {failed} failed"),
        skipped => format!("{passed} passed, {failed} failed, {skipped} skipped"),
    }
}

/// The JSON report.
pub fn to_json(header: Value, boots: &[BootRecord], results: &[TestResult]) -> Value {
    let (passed, failed) = counts(results);
    let mut report = header;
    report["boots"] = boots
        .iter()
        .map(|boot| {
            json!({
                "name": boot.name,
                "guest_suite": boot.guest_suite,
                "profile": boot.profile,
                "seed": format!("{:016x}", boot.seed),
                "device_args": boot.device_args,
                "device_command": boot.device_command,
                "cmdline": boot.cmdline,
                "guest": boot.hello,
                "device_stats": boot.stats,
                "manifest_files": boot.manifest_files,
                "verifier": boot.verifier,
                "duration_ms": boot.duration.as_millis() as u64,
            })
        })
        .collect();
    report["tests"] = results.iter().map(TestResult::to_json).collect();
    let guest: Vec<TestResult> = results
        .iter()
        .filter(|r| r.source == Source::Guest)
        .cloned()
        .collect();
    let (guest_passed, guest_failed) = counts(&guest);
    report["guest_tests"] = json!({"passed": guest_passed, "failed": guest_failed});
    report["passed"] = passed.into();
    report["failed"] = failed.into();
    report["skipped"] = skipped(results).into();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_counts_guest_and_host() {
        let record = |value: Value| serde_json::from_value(value).expect("a test record");
        let guest = TestResult::from_guest(
            "ufs",
            record(
                json!({"name": "policy", "status": "pass", "duration_ms": 1500,
                    "message": "", "facts": {"n": 1}}),
            ),
        );
        let failing = TestResult::from_guest(
            "ufs",
            record(json!({"name": "keys", "status": "fail", "duration_ms": 3,
                    "message": "ENOKEY"})),
        );
        let host = TestResult::host("ufs", "verify", false, "mismatch".into(), json!({}));
        let report = to_json(
            json!({"suite": "lab"}),
            &[],
            &[guest.clone(), failing.clone(), host],
        );
        assert_eq!(report["suite"], "lab");
        assert_eq!(report["passed"], 1);
        assert_eq!(report["failed"], 2);
        assert_eq!(report["guest_tests"], json!({"passed": 1, "failed": 1}));
        assert_eq!(report["tests"][0]["source"], "guest");
        assert_eq!(report["tests"][0]["duration_ms"], 1500);
        assert_eq!(report["tests"][2]["source"], "host");
        assert_eq!(report["tests"][2]["message"], "mismatch");
        assert_eq!(guest.line(), "PASS ufs/policy (1.5 s)");
        assert_eq!(failing.line(), "FAIL ufs/keys: ENOKEY");
    }

    #[test]
    fn a_skip_is_neither_passed_nor_failed() {
        let pass = TestResult::host("ufs", "device-exit", true, String::new(), Value::Null);
        let skip = TestResult::skipped("ufs", "device-stats", "no stats file".into());
        assert_eq!(skip.line(), "SKIP ufs/device-stats: no stats file");
        let results = [pass.clone(), skip.clone()];
        assert_eq!(counts(&results), (1, 0));
        assert_eq!(summary_line(&results), "1 passed, 0 failed, 1 skipped");
        assert_eq!(summary_line(&[pass]), "1 passed, 0 failed");
        let report = to_json(json!({}), &[], &results);
        assert_eq!(report["tests"][1]["status"], "skip");
        assert_eq!(report["skipped"], 1);
        assert_eq!(report["failed"], 0);
    }
}
