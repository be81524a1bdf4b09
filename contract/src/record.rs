//! The guest runner's results stream: one JSON object per line on the
//! guest's second serial port, written by the guest and read by the host.
//!
//! ```text
//! {"type":"hello","kernel_release":"...","kernel_version":"...","suite":"smoke","expect":"native"}
//! {"type":"test","name":"crypto-sysfs","status":"pass","duration_ms":22,"message":"...","facts":{...}}
//! {"type":"signal","name":"restart-device"}
//! {"type":"done","passed":6,"failed":0}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a test observed: named JSON values (never key material). The
/// host reads the ones it knows ([`FACT_MANIFEST`], [`FACT_MARKS`]) through
/// their types.
pub type Facts = Map<String, Value>;

/// The fact holding the files the verifier checks
/// ([`crate::manifest::Manifest`]).
pub const FACT_MANIFEST: &str = "manifest";
/// The fact holding the marks the test left in the device's trace
/// ([`crate::marks`]).
pub const FACT_MARKS: &str = "marks";

/// The signal of the `lab-restart` suite: kill the device and start it
/// again.
pub const SIGNAL_RESTART_DEVICE: &str = "restart-device";

/// Pass or fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Pass,
    /// It failed (or could not run: the message starts with `not run:`).
    Fail,
}

impl Status {
    /// `pass` or `fail`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
        }
    }
}

/// One test's line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    /// The test's name (stable; the host matches on it).
    pub name: String,
    /// Pass or fail.
    pub status: Status,
    /// Wall time the test took.
    pub duration_ms: u64,
    /// One line for humans: what was checked or what went wrong.
    pub message: String,
    /// What the test observed.
    #[serde(default)]
    pub facts: Facts,
}

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    /// First line: who runs what.
    Hello {
        /// `uname -r`.
        kernel_release: String,
        /// `uname -v`.
        kernel_version: String,
        /// The suite's name.
        suite: String,
        /// `native` or `fallback`.
        expect: String,
    },
    /// One per test, in the order they ran.
    Test(TestRecord),
    /// Asks the host to act now, in the middle of a test.
    Signal {
        /// What to do, e.g. [`SIGNAL_RESTART_DEVICE`].
        name: String,
        /// What the host needs to do it (e.g.
        /// [`crate::memory_scan::FACT_MEMORY_SCAN`]).
        #[serde(default, skip_serializing_if = "Facts::is_empty")]
        facts: Facts,
    },
    /// Last line.
    Done {
        /// Tests that passed.
        passed: u32,
        /// Tests that failed.
        failed: u32,
    },
}

impl Record {
    /// The record as one line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        // Cannot fail: every key is a string, every value a string, a
        // number or a JSON value already.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"type":"error","message":{:?}}}"#, e.to_string()))
    }

    /// Reads one line; `None` for anything that is not a record (a
    /// console glitch, a NUL from the serial port's reset).
    pub fn from_line(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim().trim_start_matches('\0')).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_line_round_trips() {
        let mut facts = Facts::new();
        facts.insert("slots".into(), Value::from(32));
        let records = [
            Record::Hello {
                kernel_release: "7.3.4".into(),
                kernel_version: "#1 SMP".into(),
                suite: "smoke".into(),
                expect: "native".into(),
            },
            Record::Test(TestRecord {
                name: "crypto-sysfs".into(),
                status: Status::Pass,
                duration_ms: 22,
                message: "32 keyslots".into(),
                facts,
            }),
            Record::Signal {
                name: SIGNAL_RESTART_DEVICE.into(),
                facts: Facts::new(),
            },
            Record::Done {
                passed: 6,
                failed: 0,
            },
        ];
        for record in records {
            assert_eq!(Record::from_line(&record.to_line()), Some(record));
        }
    }

    #[test]
    fn the_wire_format_is_the_documented_one() {
        let line = r#"{"type":"test","name":"x","status":"fail","duration_ms":1,"message":"m","facts":{"a":1}}"#;
        let Some(Record::Test(test)) = Record::from_line(line) else {
            panic!("a test line");
        };
        assert_eq!(test.status, Status::Fail);
        assert_eq!(test.facts["a"], 1);
        assert_eq!(
            Record::from_line("\0{\"type\":\"done\",\"passed\":1,\"failed\":2}\n"),
            Some(Record::Done {
                passed: 1,
                failed: 2
            })
        );
        assert_eq!(
            Record::from_line(r#"{"type":"signal","name":"restart-device"}"#),
            Some(Record::Signal {
                name: SIGNAL_RESTART_DEVICE.into(),
                facts: Facts::new()
            }),
            "a signal without facts"
        );
        assert_eq!(Record::from_line("garbage"), None);
        assert_eq!(Record::from_line(r#"{"type":"unknown"}"#), None);
    }
}
