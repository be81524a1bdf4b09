//! Results of a lab run: the human summary (last line `N passed, N
//! failed`) and the JSON report.

use serde_json::{Value, json};
use std::time::Duration;

/// Outcome of one named test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It failed; the message says why.
    Fail,
}

/// One test result, from the guest or from the host.
#[derive(Clone, Debug)]
pub struct TestResult {
    /// Boot it belongs to.
    pub boot: String,
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
            name: name.to_owned(),
            outcome: if passed { Outcome::Pass } else { Outcome::Fail },
            duration: Duration::ZERO,
            message,
            facts,
        }
    }

    /// Parses a guest `{"type":"test",...}` line.
    pub fn from_guest(boot: &str, line: &Value) -> Self {
        let passed = line["status"].as_str() == Some("pass");
        Self {
            boot: boot.to_owned(),
            name: line["name"].as_str().unwrap_or("unnamed").to_owned(),
            outcome: if passed { Outcome::Pass } else { Outcome::Fail },
            duration: Duration::from_millis(line["duration_ms"].as_u64().unwrap_or(0)),
            message: line["message"].as_str().unwrap_or_default().to_owned(),
            facts: line.get("facts").cloned().unwrap_or(Value::Null),
        }
    }

    /// `PASS boot/name (1.2 s)` or `FAIL boot/name: message`.
    pub fn line(&self) -> String {
        match self.outcome {
            Outcome::Pass => format!(
                "PASS {}/{} ({:.1} s)",
                self.boot,
                self.name,
                self.duration.as_secs_f64()
            ),
            Outcome::Fail => format!("FAIL {}/{}: {}", self.boot, self.name, self.message),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "boot": self.boot,
            "name": self.name,
            "status": if self.outcome == Outcome::Pass { "pass" } else { "fail" },
            "duration_ms": self.duration.as_millis() as u64,
            "message": self.message,
            "facts": self.facts,
        })
    }
}

/// One boot's record for the JSON report.
#[derive(Clone, Debug)]
pub struct BootRecord {
    /// Boot name (e.g. `native`, `control`).
    pub name: String,
    /// Device arguments used.
    pub device_args: Vec<String>,
    /// The runner's hello line.
    pub hello: Value,
    /// The device's final stats.
    pub stats: Value,
    /// Wall time of the boot.
    pub duration: Duration,
}

/// Counts of a run.
pub fn counts(results: &[TestResult]) -> (usize, usize) {
    let passed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .count();
    (passed, results.len() - passed)
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
                "device_args": boot.device_args,
                "guest": boot.hello,
                "device_stats": boot.stats,
                "duration_ms": boot.duration.as_millis() as u64,
            })
        })
        .collect();
    report["tests"] = results.iter().map(TestResult::to_json).collect();
    report["passed"] = passed.into();
    report["failed"] = failed.into();
    report
}
