//! One boot's timeline: the device's trace (`icelab serve --trace`, one
//! [`TraceLine`] per line) with the guest's marks placed in it.
//!
//! The guest marks points in time by reading its disk's serial: each read
//! is one GET_ID, and the device writes a `get_id` event for each into
//! its trace before the guest sees the answer. A guest test records its
//! [`Mark`]s (label, serial reads so far) in its facts; the n-th `get_id`
//! event is that mark's point of the trace, so the keyslot events
//! (`program`, `evict`) between two marks are exactly those the device saw
//! while the guest did what lies between them. The checks against the
//! timeline are in [`crate::marks`].

use anyhow::{Context, bail};
use icelab_contract::device::{EvictCause, EvictEvent, ProgramEvent, TraceEvent, TraceLine};
use icelab_contract::marks::{Mark, MarksFact};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The trace's events (in order) with the positions of the marks.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Every event of the trace.
    pub events: Vec<TraceEvent>,
    /// Index in `events` of the n-th `get_id` (0-based n).
    get_ids: Vec<usize>,
}

impl Timeline {
    /// Reads the device's trace file.
    pub fn read(path: &Path) -> anyhow::Result<Timeline> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the device trace {} (was icelab serve started with --trace?)",
                path.display()
            )
        })?;
        Timeline::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses a trace's text (JSON lines; blank lines are skipped).
    pub fn parse(text: &str) -> anyhow::Result<Timeline> {
        let mut timeline = Timeline::default();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let event = TraceLine::from_json(line)
                .with_context(|| format!("line {}: malformed event {line}", number + 1))?
                .event;
            if matches!(event, TraceEvent::GetId(_)) {
                timeline.get_ids.push(timeline.events.len());
            }
            timeline.events.push(event);
        }
        Ok(timeline)
    }

    /// The `get_id` events: the marks the guest can have left.
    pub fn get_ids(&self) -> usize {
        self.get_ids.len()
    }

    /// Index of the event of mark `label`, the `ordinal`-th (1-based)
    /// `get_id`.
    pub fn at(&self, label: &str, ordinal: u64) -> anyhow::Result<usize> {
        let index = usize::try_from(ordinal)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| self.get_ids.get(n).copied());
        match index {
            Some(i) => Ok(i),
            None => bail!(
                "mark {label:?} is serial read {ordinal}, but the trace has {} get_id events \
                 (a device without the get_id trace event, or reads the guest did not count)",
                self.get_ids.len()
            ),
        }
    }

    /// The events strictly between two positions.
    pub fn between(&self, from: usize, to: usize) -> &[TraceEvent] {
        self.events.get(from + 1..to).unwrap_or(&[])
    }

    /// The events from position `pos` on.
    pub fn since(&self, pos: usize) -> &[TraceEvent] {
        self.events.get(pos..).unwrap_or(&[])
    }

    /// Slot contents (slot → fingerprint) after replaying the events
    /// before `pos`.
    pub fn slots_at(&self, pos: usize) -> HashMap<u32, String> {
        let mut slots = HashMap::new();
        for event in &self.events[..pos.min(self.events.len())] {
            match event {
                TraceEvent::Program(program) => {
                    slots.insert(program.slot, program.fingerprint.clone());
                }
                TraceEvent::Evict(evict) => {
                    slots.remove(&evict.slot);
                }
                TraceEvent::Reject(_)
                | TraceEvent::GetId(_)
                | TraceEvent::Truncated(_)
                | TraceEvent::KeyUsageLimit(_) => {}
            }
        }
        slots
    }
}

/// The programs among `events`.
pub fn programs(events: &[TraceEvent]) -> impl Iterator<Item = &ProgramEvent> {
    events.iter().filter_map(|e| match e {
        TraceEvent::Program(program) => Some(program),
        _ => None,
    })
}

/// The evictions among `events` with `cause`.
pub fn evicts(events: &[TraceEvent], cause: EvictCause) -> impl Iterator<Item = &EvictEvent> {
    events.iter().filter_map(move |e| match e {
        TraceEvent::Evict(evict) if evict.cause == cause => Some(evict),
        _ => None,
    })
}

/// The fingerprints of the keys the guest evicted among `events`.
pub fn explicit_evicts(events: &[TraceEvent]) -> impl Iterator<Item = &String> {
    evicts(events, EvictCause::Guest).filter_map(|e| e.fingerprint.as_ref())
}

/// Every mark of the boot's guest tests: label → serial read ordinal.
#[derive(Debug, Default)]
pub struct Marks(BTreeMap<String, u64>);

impl Marks {
    /// The marks in the guest tests' `facts` (a test without marks, or
    /// whose facts are not an object, has none).
    pub fn from_facts(facts: &[&Value]) -> Marks {
        let marks = facts
            .iter()
            .filter_map(|f| MarksFact::deserialize(*f).ok())
            .flat_map(|f| f.marks)
            .map(
                |Mark {
                     label,
                     serial_reads,
                 }| (label, serial_reads),
            )
            .collect();
        Marks(marks)
    }

    /// True when some label starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.keys().any(|k| k.starts_with(prefix))
    }

    /// The trace position of mark `label`.
    pub fn pos(&self, timeline: &Timeline, label: &str) -> anyhow::Result<usize> {
        let Some(&n) = self.0.get(label) else {
            bail!("the guest left no mark {label:?} (its test stopped before it?)");
        };
        timeline.at(label, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_contract::device::{GetIdEvent, KeyMode, RejectEvent, RejectStatus};
    use icelab_contract::marks::MARKS_FACT;
    use serde_json::json;

    fn line(event: TraceEvent) -> String {
        TraceLine { t: 0.0, event }.to_json().expect("serializes") + "\n"
    }

    fn program(slot: u32, fingerprint: &str) -> TraceEvent {
        TraceEvent::Program(ProgramEvent {
            slot,
            queue: 0,
            fingerprint: fingerprint.to_owned(),
            mode: KeyMode::Aes256Xts,
            data_unit_size: 4096,
            dun_bytes: 8,
            replaced: None,
        })
    }

    fn evict(slot: u32, fingerprint: &str, cause: EvictCause) -> TraceEvent {
        TraceEvent::Evict(EvictEvent {
            slot,
            queue: None,
            cause,
            fingerprint: Some(fingerprint.to_owned()),
        })
    }

    fn get_id() -> TraceEvent {
        TraceEvent::GetId(GetIdEvent { queue: 0 })
    }

    #[test]
    fn marks_are_the_get_id_events_in_order() {
        let reject = TraceEvent::Reject(RejectEvent {
            queue: 0,
            request: None,
            sector: None,
            kind: "short-header".to_owned(),
            status: RejectStatus::IoErr,
            message: "m".to_owned(),
        });
        let text: String = [
            get_id(),
            program(0, "a"),
            reject,
            get_id(),
            program(1, "b"),
            evict(0, "a", EvictCause::Guest),
            get_id(),
            evict(1, "b", EvictCause::Reset),
        ]
        .into_iter()
        .map(line)
        .collect::<String>()
            + "\n";
        let t = Timeline::parse(&text).expect("parses");
        assert_eq!(t.events.len(), 8);
        assert_eq!(t.get_ids(), 3);
        assert_eq!(t.at("x", 1).expect("first"), 0);
        assert_eq!(t.at("x", 3).expect("third"), 6);
        let error = t.at("x", 4).expect_err("only 3").to_string();
        assert!(error.contains("the trace has 3 get_id events"), "{error}");
        assert!(t.at("x", 0).is_err());
        assert_eq!(t.between(3, 6).len(), 2);
        assert_eq!(programs(t.between(0, 3)).count(), 1);
        assert_eq!(t.slots_at(3), HashMap::from([(0, "a".to_owned())]));
        assert_eq!(t.slots_at(6), HashMap::from([(1, "b".to_owned())]));
        assert!(t.slots_at(99).is_empty());
        assert_eq!(explicit_evicts(&t.events).collect::<Vec<_>>(), ["a"]);
        assert_eq!(evicts(&t.events, EvictCause::Reset).count(), 1);
        assert_eq!(t.since(7).len(), 1);
    }

    #[test]
    fn a_malformed_line_names_its_number() {
        let text = line(get_id()) + "{\"t\":1.0,\"event\":\"program\",\"slot\":1}\n";
        let error = format!("{:#}", Timeline::parse(&text).expect_err("malformed"));
        assert!(error.contains("line 2: malformed event"), "{error}");
        let error = format!("{:#}", Timeline::parse("not json\n").expect_err("not JSON"));
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn marks_come_from_every_tests_facts() {
        let a = json!({MARKS_FACT: [{"label": "p/start", "serial_reads": 2}], "x": 1});
        let b = json!({MARKS_FACT: [{"label": "p/end", "serial_reads": 5}]});
        let none = json!({"y": 2});
        let marks = Marks::from_facts(&[&a, &Value::Null, &none, &b]);
        assert!(marks.has_prefix("p/"));
        assert!(!marks.has_prefix("q/"));
        let text: String = (0..5).map(|_| line(get_id())).collect();
        let t = Timeline::parse(&text).expect("parses");
        assert_eq!(marks.pos(&t, "p/start").expect("mark"), 1);
        assert_eq!(marks.pos(&t, "p/end").expect("mark"), 4);
        let error = marks.pos(&t, "p/middle").expect_err("none").to_string();
        assert!(error.contains("no mark \"p/middle\""), "{error}");
    }
}
