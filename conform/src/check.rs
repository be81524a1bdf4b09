//! What a check is, what it concludes, and the table of every check.

use std::fmt;

use serde::Serialize;

use crate::session::Ctx;

/// The `##` headings of docs/PROTOCOL.md that checks point to.
pub mod section {
    /// "Feature negotiation".
    pub const FEATURES: &str = "Feature negotiation";
    /// "Virtqueues".
    pub const VIRTQUEUES: &str = "Virtqueues";
    /// "Request framing".
    pub const FRAMING: &str = "Request framing";
    /// "Configuration space".
    pub const CONFIG: &str = "Configuration space";
    /// "Requests".
    pub const REQUESTS: &str = "Requests";
    /// "Device rules".
    pub const RULES: &str = "Device rules";
    /// "Hardware-wrapped keys".
    pub const WRAPPED: &str = "Hardware-wrapped keys";
    /// "Relation to the public drafts" (the table of icelab's choices).
    pub const DRAFTS: &str = "Relation to the public drafts";
}

/// How binding the tested behaviour is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Requirement {
    /// Required by the draft (or by VIRTIO 1.2 for plain block requests).
    #[serde(rename = "MUST")]
    Must,
    /// icelab's documented choice where the draft is silent (the table in
    /// docs/PROTOCOL.md, "Relation to the public drafts").
    #[serde(rename = "CHOICE")]
    Choice,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Must => "MUST",
            Self::Choice => "CHOICE",
        })
    }
}

/// How often a check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// Once.
    Once,
    /// Once per data unit size the device advertises (GET_CRYPTO_MODES),
    /// as `ID/du-SIZE`.
    PerDataUnitSize,
}

/// A check's body: `Ok(())` is a pass.
pub type CheckFn = fn(&mut Ctx<'_>) -> CheckResult;

/// One conformance check.
#[derive(Clone, Copy)]
pub struct Check {
    /// Stable identifier, `subject/what`.
    pub id: &'static str,
    /// The docs/PROTOCOL.md section (`##` heading) it tests.
    pub section: &'static str,
    /// MUST or icelab's CHOICE.
    pub requirement: Requirement,
    /// One line: what passing means.
    pub summary: &'static str,
    /// Once, or once per data unit size.
    pub param: Param,
    /// The body.
    pub run: CheckFn,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("id", &self.id)
            .field("section", &self.section)
            .field("requirement", &self.requirement)
            .field("param", &self.param)
            .finish_non_exhaustive()
    }
}

/// Why a check failed: what was expected, the request that showed it
/// (never key bytes), and what the device answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// The exact request sent, described.
    pub request: Option<String>,
    /// Status, used length and first bytes of the answer.
    pub response: Option<String>,
}

impl Failure {
    /// A failure with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            request: None,
            response: None,
        }
    }

    /// Adds the request.
    pub fn request(mut self, request: impl Into<String>) -> Self {
        self.request = Some(request.into());
        self
    }

    /// Adds the response.
    pub fn response(mut self, response: impl Into<String>) -> Self {
        self.response = Some(response.into());
        self
    }

    /// Prefixes the message with `context`.
    pub fn context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// Why a check stopped before passing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The device did something the protocol does not allow.
    Fail(Failure),
    /// The device does not advertise what the check needs.
    Skip(String),
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Self {
        Self::Fail(failure)
    }
}

/// What a check body returns.
pub type CheckResult = Result<(), Stop>;

/// A check's conclusion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device behaved as docs/PROTOCOL.md says.
    Pass,
    /// It did not.
    Fail(Failure),
    /// The check does not apply to this device.
    Skip {
        /// Why (the feature or capability the device does not advertise).
        reason: String,
    },
}

impl Outcome {
    /// "pass", "fail" or "skip".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail(_) => "fail",
            Self::Skip { .. } => "skip",
        }
    }
}

impl From<CheckResult> for Outcome {
    fn from(result: CheckResult) -> Self {
        match result {
            Ok(()) => Self::Pass,
            Err(Stop::Fail(failure)) => Self::Fail(failure),
            Err(Stop::Skip(reason)) => Self::Skip { reason },
        }
    }
}

/// Every check, in the order they run: plain block first, then features,
/// config, keyslots, crypto, refusals, reset, wrapped keys.
pub fn all() -> Vec<Check> {
    [
        crate::plain::CHECKS,
        crate::features::CHECKS,
        crate::config::CHECKS,
        crate::keyslots::CHECKS,
        crate::crypto::CHECKS,
        crate::refusals::CHECKS,
        crate::reset::CHECKS,
        crate::wrapped::CHECKS,
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sections_are_headings_of_protocol_md() {
        let protocol = include_str!("../../docs/PROTOCOL.md");
        let checks = all();
        let mut ids: Vec<&str> = checks.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "duplicate check id");
        for check in &checks {
            assert!(
                protocol.contains(&format!("\n## {}\n", check.section)),
                "{}: section {:?} is not a heading of docs/PROTOCOL.md",
                check.id,
                check.section
            );
            assert!(
                check.id.split('/').count() == 2
                    && check
                        .id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-/".contains(c)),
                "{}: ids are subject/what in lowercase",
                check.id
            );
        }
    }
}
