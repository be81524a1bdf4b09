//! Guest → host: the marks the guest leaves in the device's trace.
//!
//! The guest marks a point in time by reading its disk's serial: one
//! GET_ID, which the device traces as a `get_id` event
//! ([`crate::device::TraceEvent::GetId`]) before the guest sees the answer.
//! A guest test records each mark in its facts as a [`Mark`] (the label and
//! the count of serial reads so far, so the n-th `get_id` event of the
//! trace is that point); the host finds the keyslot events between two
//! marks and checks them ([`TraceCheckKind`]: one check per family of
//! labels, run only when the guest left a mark with its prefix).
//!
//! The labels are defined here once: the guest emits these constants and
//! the host looks for the same ones.

use serde::{Deserialize, Serialize};

/// The key of a guest test's facts holding its [`Mark`]s, in order.
pub const MARKS_FACT: &str = "marks";

/// One mark in a guest test's facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// What the guest was about to do or had done (one of this module's
    /// labels).
    pub label: String,
    /// The guest's successful serial reads (GET_IDs) so far, this one
    /// included: the mark is the trace's `serial_reads`-th `get_id` event.
    pub serial_reads: u64,
}

/// The part of a guest test's facts the host reads for the trace checks:
/// `{"marks": [Mark, ...], ...}` (other facts are ignored; no marks, no
/// entry).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarksFact {
    /// The test's marks, in the order it left them.
    #[serde(default)]
    pub marks: Vec<Mark>,
}

// --- path selection -------------------------------------------------------------------

/// The prefix of the path-selection marks.
pub const PATH_PREFIX: &str = "path/";
/// Path selection under the default (per-file keys) policy.
pub const PATH_DEFAULT: &str = "default";
/// Path selection under IV_INO_LBLK_32.
pub const PATH_LBLK32: &str = "lblk32";
/// Path selection under IV_INO_LBLK_64.
pub const PATH_LBLK64: &str = "lblk64";
/// Every policy the path-selection test marks, in its order.
pub const PATH_POLICIES: [&str; 3] = [PATH_DEFAULT, PATH_LBLK32, PATH_LBLK64];

/// Which end of a window a mark is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathEdge {
    /// Before the test's I/O under the policy.
    Start,
    /// After it (written, synced, read back).
    End,
}

impl PathEdge {
    /// The last component of the label.
    pub const fn as_str(self) -> &'static str {
        match self {
            PathEdge::Start => "start",
            PathEdge::End => "end",
        }
    }
}

/// The label `path/<policy>/<edge>` (`policy`: one of [`PATH_POLICIES`]).
pub fn path(policy: &str, edge: PathEdge) -> String {
    format!("{PATH_PREFIX}{policy}/{}", edge.as_str())
}

// --- key removal ----------------------------------------------------------------------

/// The prefix of the key-removal marks.
pub const REMOVAL_PREFIX: &str = "removal/";
/// No file open: before the files are written.
pub const REMOVAL_IDLE_START: &str = "removal/idle/start";
/// No file open: their keys are in keyslots (files read back).
pub const REMOVAL_IDLE_KEYS_IN_USE: &str = "removal/idle/keys-in-use";
/// No file open: the key was removed.
pub const REMOVAL_IDLE_REMOVED: &str = "removal/idle/removed";
/// A file held open: before it is written.
pub const REMOVAL_BUSY_START: &str = "removal/busy/start";
/// A file held open: it is open and its key in a keyslot.
pub const REMOVAL_BUSY_OPEN: &str = "removal/busy/open";
/// A file held open: the removal said the key is busy.
pub const REMOVAL_BUSY_BUSY: &str = "removal/busy/busy";
/// A file held open: it was closed.
pub const REMOVAL_BUSY_CLOSED: &str = "removal/busy/closed";
/// A file held open: the key was removed again, for good.
pub const REMOVAL_BUSY_REMOVED: &str = "removal/busy/removed";

// --- removal of a hardware-wrapped key --------------------------------------------

/// The prefix of the hardware-wrapped key removal marks.
pub const WRAPPED_REMOVAL_PREFIX: &str = "wrapped-removal/";
/// Before the files under the hardware-wrapped key are written.
pub const WRAPPED_REMOVAL_START: &str = "wrapped-removal/start";
/// Its files read back: the key is in a keyslot.
pub const WRAPPED_REMOVAL_KEYS_IN_USE: &str = "wrapped-removal/keys-in-use";
/// The key was removed (no file open).
pub const WRAPPED_REMOVAL_REMOVED: &str = "wrapped-removal/removed";

// --- keyslot pressure -----------------------------------------------------------------

/// The prefix of the keyslot-pressure marks.
pub const PRESSURE_PREFIX: &str = "pressure/";
/// Before the many keys' I/O.
pub const PRESSURE_START: &str = "pressure/start";
/// After it.
pub const PRESSURE_END: &str = "pressure/end";

// --- Google's fscrypt tool ------------------------------------------------------------

/// The prefix of the fscrypt-tool marks.
pub const FSCRYPT_TOOL_PREFIX: &str = "fscrypt-tool/";
/// Before the tool's directory is used.
pub const FSCRYPT_TOOL_START: &str = "fscrypt-tool/start";
/// After it.
pub const FSCRYPT_TOOL_END: &str = "fscrypt-tool/end";

/// Every fixed label (the path-selection labels come from [`path`]).
pub const FIXED_LABELS: [&str; 15] = [
    REMOVAL_IDLE_START,
    REMOVAL_IDLE_KEYS_IN_USE,
    REMOVAL_IDLE_REMOVED,
    REMOVAL_BUSY_START,
    REMOVAL_BUSY_OPEN,
    REMOVAL_BUSY_BUSY,
    REMOVAL_BUSY_CLOSED,
    REMOVAL_BUSY_REMOVED,
    WRAPPED_REMOVAL_START,
    WRAPPED_REMOVAL_KEYS_IN_USE,
    WRAPPED_REMOVAL_REMOVED,
    PRESSURE_START,
    PRESSURE_END,
    FSCRYPT_TOOL_START,
    FSCRYPT_TOOL_END,
];

// --- the host's checks ----------------------------------------------------------------

/// The host's checks of the trace against the marks; each runs when a
/// guest test of the boot left a mark with its [`mark_prefix`](Self::mark_prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TraceCheckKind {
    /// Which policies reached the engine, with how many DUN bytes.
    PathSelection,
    /// Removing a key evicts it at the device, not while a file is open.
    KeyRemoval,
    /// Removing a hardware-wrapped key evicts it at the device.
    WrappedKeyRemoval,
    /// Many keys through few keyslots: replaced and programmed again.
    KeyslotPressure,
    /// Google's `fscrypt` tool's files went through the engine.
    FscryptTool,
}

impl TraceCheckKind {
    /// Every check, in the order the host runs them.
    pub const ALL: [TraceCheckKind; 5] = [
        TraceCheckKind::PathSelection,
        TraceCheckKind::KeyRemoval,
        TraceCheckKind::WrappedKeyRemoval,
        TraceCheckKind::KeyslotPressure,
        TraceCheckKind::FscryptTool,
    ];

    /// The result's name (the host prefixes the boot: `ufs/trace/...`).
    pub const fn name(self) -> &'static str {
        match self {
            TraceCheckKind::PathSelection => "trace/path-selection",
            TraceCheckKind::KeyRemoval => "trace/key-removal",
            TraceCheckKind::WrappedKeyRemoval => "trace/wrapped-key-removal",
            TraceCheckKind::KeyslotPressure => "trace/keyslot-pressure",
            TraceCheckKind::FscryptTool => "trace/fscrypt-tool",
        }
    }

    /// The prefix of the labels of its marks.
    pub const fn mark_prefix(self) -> &'static str {
        match self {
            TraceCheckKind::PathSelection => PATH_PREFIX,
            TraceCheckKind::KeyRemoval => REMOVAL_PREFIX,
            TraceCheckKind::WrappedKeyRemoval => WRAPPED_REMOVAL_PREFIX,
            TraceCheckKind::KeyslotPressure => PRESSURE_PREFIX,
            TraceCheckKind::FscryptTool => FSCRYPT_TOOL_PREFIX,
        }
    }

    /// The check a label belongs to.
    pub fn of_label(label: &str) -> Option<TraceCheckKind> {
        Self::ALL
            .into_iter()
            .find(|check| label.starts_with(check.mark_prefix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_labels() {
        assert_eq!(path(PATH_DEFAULT, PathEdge::Start), "path/default/start");
        assert_eq!(path(PATH_LBLK64, PathEdge::End), "path/lblk64/end");
        for policy in PATH_POLICIES {
            for edge in [PathEdge::Start, PathEdge::End] {
                assert_eq!(
                    TraceCheckKind::of_label(&path(policy, edge)),
                    Some(TraceCheckKind::PathSelection)
                );
            }
        }
    }

    #[test]
    fn every_label_belongs_to_exactly_one_check() {
        for label in FIXED_LABELS {
            let owners: Vec<_> = TraceCheckKind::ALL
                .into_iter()
                .filter(|c| label.starts_with(c.mark_prefix()))
                .collect();
            assert_eq!(owners.len(), 1, "{label}: {owners:?}");
        }
        let mut labels = FIXED_LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), FIXED_LABELS.len(), "labels are distinct");
        for check in TraceCheckKind::ALL {
            assert!(check.name().starts_with("trace/"), "{check:?}");
            assert!(check.mark_prefix().ends_with('/'), "{check:?}");
        }
        assert_eq!(TraceCheckKind::of_label("matrix/x"), None);
    }

    #[test]
    fn marks_in_facts() {
        let marks = vec![
            Mark {
                label: PRESSURE_START.to_owned(),
                serial_reads: 3,
            },
            Mark {
                label: PRESSURE_END.to_owned(),
                serial_reads: 4,
            },
        ];
        let value = serde_json::to_value(&marks).expect("serializes");
        assert_eq!(
            value,
            json!([
                {"label": "pressure/start", "serial_reads": 3},
                {"label": "pressure/end", "serial_reads": 4}
            ])
        );
        let facts = json!({"other": 1, MARKS_FACT: value});
        let read: MarksFact = serde_json::from_value(facts).expect("parses");
        assert_eq!(read.marks, marks);
        let none: MarksFact = serde_json::from_value(json!({"x": 1})).expect("parses");
        assert!(none.marks.is_empty());
    }
}
