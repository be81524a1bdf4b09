//! Host checks of one boot's device trace against the guest's marks,
//! on the boot's [`Timeline`] (the trace with the marks placed in it).
//!
//! The checks, each only when its guest test left marks in this boot
//! (the names and label prefixes are the contract's [`TraceCheckKind`],
//! the labels its `icelab_contract::marks` constants):
//! - `trace/path-selection`: which policies reached the engine and with
//!   how many DUN bytes (eMMC: IV_INO_LBLK_64 never does, IV_INO_LBLK_32
//!   does; UFS: both do, LBLK_64 with 8 DUN bytes);
//! - `trace/key-removal`: removing a key evicts its keys at the device,
//!   not before a busy file is closed, and they never come back;
//! - `trace/wrapped-key-removal`: removing a hardware-wrapped key evicts
//!   the key the engine derived from it, which never comes back;
//! - `trace/keyslot-pressure`: with 2 keyslots and many keys, keys are
//!   replaced and programmed again, no slot beyond the device's, and the
//!   device's counters agree with its trace;
//! - `trace/fscrypt-tool`: Google's fscrypt's files went through the engine.

use super::checks::parse_stats;
use super::report::TestResult;
use super::timeline::{Marks, Timeline, evicts, explicit_evicts, programs};
use anyhow::bail;
use icelab_contract::device::{EvictCause, TraceEvent};
use icelab_contract::marks::{
    self as label, FSCRYPT_TOOL_END, FSCRYPT_TOOL_START, PATH_POLICIES, PRESSURE_END,
    PRESSURE_START, PathEdge, REMOVAL_BUSY_BUSY, REMOVAL_BUSY_OPEN, REMOVAL_BUSY_REMOVED,
    REMOVAL_BUSY_START, REMOVAL_IDLE_KEYS_IN_USE, REMOVAL_IDLE_REMOVED, REMOVAL_IDLE_START,
    TraceCheckKind, WRAPPED_REMOVAL_KEYS_IN_USE, WRAPPED_REMOVAL_REMOVED, WRAPPED_REMOVAL_START,
};
use icelab_emulator::engine::ProfileName;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Host checks of one boot's device trace against the guest's marks.
pub struct TraceCheck<'a> {
    /// The boot's name (results are named `<boot>/trace/...`).
    pub boot: &'a str,
    /// The device's engine profile.
    pub profile: ProfileName,
    /// The device's keyslots.
    pub slots: u16,
    /// The `facts` of every guest test of the boot, in order.
    pub guest_facts: Vec<&'a Value>,
    /// The device's trace file.
    pub trace: &'a std::path::Path,
    /// The device's stats (the `--stats` file's JSON, read as a
    /// `StatsFile`).
    pub stats: &'a Value,
}

/// The checks whose guest tests left marks in a boot (`guest_facts`: the
/// `facts` of its guest tests).
pub fn wanted(guest_facts: &[&Value]) -> Vec<TraceCheckKind> {
    let marks = Marks::from_facts(guest_facts);
    TraceCheckKind::ALL
        .into_iter()
        .filter(|kind| marks.has_prefix(kind.mark_prefix()))
        .collect()
}

/// Runs the checks whose guest tests left marks in this boot.
pub fn check(input: &TraceCheck<'_>) -> Vec<TestResult> {
    let marks = Marks::from_facts(&input.guest_facts);
    let wanted = wanted(&input.guest_facts);
    if wanted.is_empty() {
        return Vec::new();
    }
    let timeline = match Timeline::read(input.trace) {
        Ok(t) => t,
        Err(error) => {
            return wanted
                .iter()
                .map(|kind| {
                    let message = format!("{error:#}");
                    TestResult::host(input.boot, kind.name(), false, message, Value::Null)
                })
                .collect();
        }
    };
    wanted
        .into_iter()
        .map(|kind| {
            let mut facts = serde_json::Map::new();
            let outcome = check_fn(kind)(input, &marks, &timeline, &mut facts);
            let (passed, message) = match outcome {
                Ok(message) => (true, message),
                Err(error) => (false, format!("{error:#}")),
            };
            TestResult::host(
                input.boot,
                kind.name(),
                passed,
                message,
                Value::Object(facts),
            )
        })
        .collect()
}

type Facts = serde_json::Map<String, Value>;
type CheckFn = fn(&TraceCheck<'_>, &Marks, &Timeline, &mut Facts) -> anyhow::Result<String>;

/// The check of each kind.
fn check_fn(kind: TraceCheckKind) -> CheckFn {
    match kind {
        TraceCheckKind::PathSelection => path_selection,
        TraceCheckKind::KeyRemoval => key_removal,
        TraceCheckKind::WrappedKeyRemoval => wrapped_key_removal,
        TraceCheckKind::KeyslotPressure => keyslot_pressure,
        TraceCheckKind::FscryptTool => fscrypt_tool,
    }
}

/// `trace/path-selection`: the windows `path/<policy>/start..end`.
fn path_selection(
    input: &TraceCheck<'_>,
    marks: &Marks,
    timeline: &Timeline,
    facts: &mut Facts,
) -> anyhow::Result<String> {
    let max_dun_bytes = u32::from(input.profile.capabilities().max_dun_bytes);
    let all_max = programs(&timeline.events).map(|p| p.dun_bytes).max();
    facts.insert("max_dun_bytes_programmed".into(), json!(all_max));
    facts.insert("profile_max_dun_bytes".into(), json!(max_dun_bytes));
    if let Some(max) = all_max
        && max > max_dun_bytes
    {
        bail!(
            "a key was programmed with {max} DUN bytes, beyond the {} profile's {max_dun_bytes}",
            input.profile
        );
    }
    let mut windows = BTreeMap::new();
    for policy in PATH_POLICIES {
        let start = marks.pos(timeline, &label::path(policy, PathEdge::Start))?;
        let end = marks.pos(timeline, &label::path(policy, PathEdge::End))?;
        let dun: Vec<u32> = programs(timeline.between(start, end))
            .map(|p| p.dun_bytes)
            .collect();
        windows.insert(policy, dun);
    }
    facts.insert("program_dun_bytes_per_window".into(), json!(windows));
    let count = |policy: &str, dun: Option<u32>| {
        windows[policy]
            .iter()
            .filter(|&&d| dun.is_none_or(|want| d == want))
            .count()
    };
    if count(label::PATH_DEFAULT, None) == 0 {
        bail!("no key was programmed while the guest used the default policy: not native");
    }
    if count(label::PATH_LBLK32, Some(4)) == 0 {
        bail!(
            "no key with 4 DUN bytes was programmed while the guest used IV_INO_LBLK_32 \
             (programs there: {:?} DUN bytes): it did not use the engine",
            windows[label::PATH_LBLK32]
        );
    }
    match input.profile {
        ProfileName::Emmc => {
            if !windows[label::PATH_LBLK64].is_empty() {
                bail!(
                    "under emmc (4 DUN bytes) IV_INO_LBLK_64 must fall back to \
                     blk-crypto-fallback, but {} keys were programmed in its window ({:?} DUN \
                     bytes)",
                    windows[label::PATH_LBLK64].len(),
                    windows[label::PATH_LBLK64]
                );
            }
            Ok(format!(
                "emmc: default and IV_INO_LBLK_32 programmed keys ({} and {}), IV_INO_LBLK_64 \
                 none (fallback); no key ever with more than 4 DUN bytes",
                windows[label::PATH_DEFAULT].len(),
                windows[label::PATH_LBLK32].len()
            ))
        }
        ProfileName::Ufs => {
            if count(label::PATH_LBLK64, Some(8)) == 0 {
                bail!(
                    "under ufs IV_INO_LBLK_64 must be native with 8 DUN bytes, but its window \
                     programmed {:?} DUN bytes",
                    windows[label::PATH_LBLK64]
                );
            }
            Ok(format!(
                "ufs: keys programmed for default ({}), IV_INO_LBLK_32 (4 DUN bytes) and \
                 IV_INO_LBLK_64 (8 DUN bytes)",
                windows[label::PATH_DEFAULT].len()
            ))
        }
    }
}

/// The keys a test's window put in slots and that are still there at its
/// end: programmed in `(start, end)` and present at `end`.
fn keys_in_use(timeline: &Timeline, start: usize, end: usize) -> BTreeSet<String> {
    let slots = timeline.slots_at(end);
    let present: BTreeSet<&String> = slots.values().collect();
    programs(timeline.between(start, end))
        .map(|p| &p.fingerprint)
        .filter(|fp| present.contains(fp))
        .cloned()
        .collect()
}

/// Checks that `keys` are evicted explicitly in `(from, to)`, absent from
/// every slot at `to`, and never programmed after `to`.
fn gone_for_good(
    timeline: &Timeline,
    keys: &BTreeSet<String>,
    from: usize,
    to: usize,
    what: &str,
) -> anyhow::Result<()> {
    let evicted: BTreeSet<&String> = explicit_evicts(timeline.between(from, to)).collect();
    let missing: Vec<&String> = keys.iter().filter(|k| !evicted.contains(k)).collect();
    if !missing.is_empty() {
        bail!("{what}: keys {missing:?} were not evicted at the device by the removal");
    }
    let slots = timeline.slots_at(to);
    let still: Vec<&String> = slots.values().filter(|fp| keys.contains(*fp)).collect();
    if !still.is_empty() {
        bail!("{what}: keys {still:?} are still in a keyslot after the removal");
    }
    let again: Vec<&String> = programs(timeline.since(to))
        .map(|p| &p.fingerprint)
        .filter(|fp| keys.contains(*fp))
        .collect();
    if !again.is_empty() {
        bail!("{what}: keys {again:?} were programmed again after the removal");
    }
    Ok(())
}

/// `trace/key-removal`: `removal/idle/*` and `removal/busy/*`.
fn key_removal(
    _input: &TraceCheck<'_>,
    marks: &Marks,
    timeline: &Timeline,
    facts: &mut Facts,
) -> anyhow::Result<String> {
    let pos = |label: &str| marks.pos(timeline, label);
    // (a) No file open: the removal evicts every key in use.
    let start = pos(REMOVAL_IDLE_START)?;
    let in_use = pos(REMOVAL_IDLE_KEYS_IN_USE)?;
    let removed = pos(REMOVAL_IDLE_REMOVED)?;
    let idle = keys_in_use(timeline, start, in_use);
    facts.insert("idle_keys".into(), json!(idle));
    if idle.is_empty() {
        bail!("idle key: no key of its files was in a keyslot when the guest marked keys-in-use");
    }
    gone_for_good(timeline, &idle, in_use, removed, "idle key")?;

    // (b) A file open: nothing evicted until it is closed and the key
    // removed again.
    let start = pos(REMOVAL_BUSY_START)?;
    let open = pos(REMOVAL_BUSY_OPEN)?;
    let busy = pos(REMOVAL_BUSY_BUSY)?;
    let removed = pos(REMOVAL_BUSY_REMOVED)?;
    let held = keys_in_use(timeline, start, open);
    facts.insert("busy_keys".into(), json!(held));
    if held.is_empty() {
        bail!("busy key: the open file's key was not in a keyslot when the guest marked open");
    }
    let early: Vec<&String> = explicit_evicts(timeline.between(open, busy))
        .filter(|fp| held.contains(*fp))
        .collect();
    if !early.is_empty() {
        bail!("busy key: {early:?} evicted while its file was still open (removal said busy)");
    }
    let slots = timeline.slots_at(busy);
    if let Some(gone) = held.iter().find(|k| !slots.values().any(|v| v == *k)) {
        bail!("busy key: {gone} left its keyslot while its file was still open");
    }
    gone_for_good(timeline, &held, busy, removed, "busy key")?;
    Ok(format!(
        "idle key: {} keys evicted by the removal; busy key: {} kept while open, evicted after \
         close and the second removal; none programmed again",
        idle.len(),
        held.len()
    ))
}

/// `trace/wrapped-key-removal`: `wrapped-removal/*`. The trace shows the
/// inline encryption key the engine derived from the hardware-wrapped key
/// (its fingerprint), never the wrapped key itself.
fn wrapped_key_removal(
    _input: &TraceCheck<'_>,
    marks: &Marks,
    timeline: &Timeline,
    facts: &mut Facts,
) -> anyhow::Result<String> {
    let pos = |label: &str| marks.pos(timeline, label);
    let start = pos(WRAPPED_REMOVAL_START)?;
    let in_use = pos(WRAPPED_REMOVAL_KEYS_IN_USE)?;
    let removed = pos(WRAPPED_REMOVAL_REMOVED)?;
    let keys = keys_in_use(timeline, start, in_use);
    facts.insert("keys".into(), json!(keys));
    if keys.is_empty() {
        bail!(
            "no key of the files under the hardware-wrapped key was in a keyslot when the guest \
             marked keys-in-use"
        );
    }
    gone_for_good(timeline, &keys, in_use, removed, "hardware-wrapped key")?;
    Ok(format!(
        "{} key(s) programmed from the hardware-wrapped key evicted by its removal, none \
         programmed again",
        keys.len()
    ))
}

/// `trace/keyslot-pressure`: `pressure/start..end` on a 2-slot device.
fn keyslot_pressure(
    input: &TraceCheck<'_>,
    marks: &Marks,
    timeline: &Timeline,
    facts: &mut Facts,
) -> anyhow::Result<String> {
    let start = marks.pos(timeline, PRESSURE_START)?;
    let end = marks.pos(timeline, PRESSURE_END)?;
    let window = timeline.between(start, end);
    let mut per_key: BTreeMap<&String, u64> = BTreeMap::new();
    let mut replacements = 0u64;
    let mut slots_used = BTreeSet::new();
    for program in programs(window) {
        *per_key.entry(&program.fingerprint).or_default() += 1;
        replacements += u64::from(program.replaced.is_some());
        slots_used.insert(program.slot);
    }
    let evicts = explicit_evicts(window).count() as u64;
    let reprogrammed = per_key.values().filter(|&&n| n > 1).count();
    let programs_in_window: u64 = per_key.values().sum();
    facts.insert("programs".into(), json!(programs_in_window));
    facts.insert("distinct_keys".into(), json!(per_key.len()));
    facts.insert("replacements".into(), json!(replacements));
    facts.insert("explicit_evictions".into(), json!(evicts));
    facts.insert("keys_programmed_more_than_once".into(), json!(reprogrammed));
    facts.insert("slots_used".into(), json!(slots_used));
    if let Some(bad) = slots_used.iter().find(|&&s| s >= u32::from(input.slots)) {
        bail!(
            "slot {bad} was programmed on a device with {} keyslots",
            input.slots
        );
    }
    if per_key.len() <= usize::from(input.slots) {
        bail!(
            "only {} distinct keys were programmed on a device with {} keyslots: no pressure",
            per_key.len(),
            input.slots
        );
    }
    if replacements == 0 {
        bail!(
            "{programs_in_window} programs of {} keys into {} slots and none replaced a key",
            per_key.len(),
            input.slots
        );
    }
    if reprogrammed == 0 {
        bail!("no key was programmed more than once: nothing was reprogrammed after a replacement");
    }
    check_stats_agree(input.stats, &timeline.events, input.slots)?;
    Ok(format!(
        "{programs_in_window} programs of {} keys into {} slots: {replacements} replacements, \
         {evicts} evictions, {reprogrammed} keys programmed again; stats agree with the trace",
        per_key.len(),
        slots_used.len()
    ))
}

/// The device's counters against its whole trace.
fn check_stats_agree(stats: &Value, events: &[TraceEvent], slots: u16) -> anyhow::Result<()> {
    let counters = match parse_stats(stats) {
        Ok(file) => file.stats,
        Err(problem) => bail!("{problem}"),
    };
    let programmed = programs(events).count() as u64;
    let by_cause = |cause| evicts(events, cause).count() as u64;
    let keyslots = &counters.keyslots;
    let pairs = [
        ("stats.keyslots.programmed", keyslots.programmed, programmed),
        (
            "stats.keyslots.evicted",
            keyslots.evicted,
            by_cause(EvictCause::Guest),
        ),
        (
            "stats.keyslots.evicted_by_reset",
            keyslots.evicted_by_reset,
            by_cause(EvictCause::Reset),
        ),
    ];
    for (path, counted, traced) in pairs {
        if counted != traced {
            bail!("{path} is {counted}, but the trace has {traced} such events");
        }
    }
    let per_slot = keyslots.uses_per_slot.len();
    if per_slot != usize::from(slots) {
        bail!("the stats count uses of {per_slot} slots, the device has {slots}");
    }
    Ok(())
}

/// `trace/fscrypt-tool`: the tool's files used the engine.
fn fscrypt_tool(
    _input: &TraceCheck<'_>,
    marks: &Marks,
    timeline: &Timeline,
    facts: &mut Facts,
) -> anyhow::Result<String> {
    let start = marks.pos(timeline, FSCRYPT_TOOL_START)?;
    let end = marks.pos(timeline, FSCRYPT_TOOL_END)?;
    let n = programs(timeline.between(start, end)).count();
    facts.insert("programs".into(), json!(n));
    if n == 0 {
        bail!("no key was programmed while fscrypt's directory was used: not native");
    }
    Ok(format!("{n} keys programmed for fscrypt's directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use icelab_contract::device::{
        EvictEvent, GetIdEvent, KeyMode, ProgramEvent, StatsFile, TraceLine,
    };
    use icelab_contract::marks::{Mark, MarksFact};
    use std::collections::HashMap;
    use std::path::Path;

    /// Builds a trace as the device writes it.
    #[derive(Default)]
    struct Trace {
        lines: Vec<TraceEvent>,
        get_ids: u64,
    }

    impl Trace {
        fn program(&mut self, slot: u32, fp: &str, dun: u32) -> &mut Self {
            let replaced = self.slots().get(&slot).cloned();
            self.lines.push(TraceEvent::Program(ProgramEvent {
                slot,
                queue: 0,
                fingerprint: fp.to_owned(),
                mode: KeyMode::Aes256Xts,
                data_unit_size: 4096,
                dun_bytes: dun,
                replaced,
            }));
            self
        }
        fn evict(&mut self, slot: u32) -> &mut Self {
            let fingerprint = self.slots().get(&slot).cloned();
            self.lines.push(TraceEvent::Evict(EvictEvent {
                slot,
                queue: Some(0),
                cause: EvictCause::Guest,
                fingerprint,
            }));
            self
        }
        /// A GET_ID; returns its ordinal.
        fn mark(&mut self) -> u64 {
            self.lines.push(TraceEvent::GetId(GetIdEvent { queue: 0 }));
            self.get_ids += 1;
            self.get_ids
        }
        fn slots(&self) -> HashMap<u32, String> {
            let t = Timeline::parse(&self.text()).expect("parses");
            t.slots_at(t.events.len())
        }
        fn text(&self) -> String {
            self.lines
                .iter()
                .map(|event| {
                    let line = TraceLine {
                        t: 0.0,
                        event: event.clone(),
                    };
                    line.to_json().expect("serializes") + "\n"
                })
                .collect()
        }
        fn stats(&self) -> StatsFile {
            let t = Timeline::parse(&self.text()).expect("parses");
            let mut file = StatsFile::default();
            file.stats.keyslots.programmed = programs(&t.events).count() as u64;
            file.stats.keyslots.evicted = explicit_evicts(&t.events).count() as u64;
            file.stats.keyslots.uses_per_slot = vec![0, 0];
            file
        }
    }

    fn marks(list: &[(&str, u64)]) -> Value {
        let marks: Vec<Mark> = list
            .iter()
            .map(|(label, n)| Mark {
                label: (*label).to_owned(),
                serial_reads: *n,
            })
            .collect();
        serde_json::to_value(MarksFact { marks }).expect("serializes")
    }

    fn run(
        trace: &Trace,
        profile: ProfileName,
        slots: u16,
        facts: &[Value],
    ) -> Vec<(String, Outcome, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trace.jsonl");
        std::fs::write(&path, trace.text()).expect("write");
        let stats = serde_json::to_value(trace.stats()).expect("serializes");
        let input = TraceCheck {
            boot: "b",
            profile,
            slots,
            guest_facts: facts.iter().collect(),
            trace: &path,
            stats: &stats,
        };
        check(&input)
            .into_iter()
            .map(|r| (r.name, r.outcome, r.message))
            .collect()
    }

    /// A path-selection trace: default and LBLK_32 program 4-byte keys,
    /// LBLK_64 programs `lblk64` (nothing when `None`).
    fn path_trace(lblk64: Option<u32>) -> (Trace, Value) {
        let mut t = Trace::default();
        t.mark(); // driver-load
        let mut m = Vec::new();
        let a = t.mark();
        t.program(0, "d1", 4);
        let b = t.mark();
        m.extend([("path/default/start", a), ("path/default/end", b)]);
        let a = t.mark();
        t.program(1, "l32", 4);
        let b = t.mark();
        m.extend([("path/lblk32/start", a), ("path/lblk32/end", b)]);
        let a = t.mark();
        if let Some(dun) = lblk64 {
            t.program(2, "l64", dun);
        }
        let b = t.mark();
        m.extend([("path/lblk64/start", a), ("path/lblk64/end", b)]);
        (t, marks(&m))
    }

    #[test]
    fn no_marks_no_checks() {
        let (t, _) = path_trace(None);
        assert!(run(&t, ProfileName::Ufs, 32, &[json!({"x": 1})]).is_empty());
    }

    #[test]
    fn path_selection_both_ways() {
        let (t, m) = path_trace(None);
        let r = run(&t, ProfileName::Emmc, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].0, "trace/path-selection");
        assert_eq!(r[0].1, Outcome::Pass, "{}", r[0].2);
        // The same trace under ufs: LBLK_64 did not reach the engine.
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].1, Outcome::Fail);
        assert!(
            r[0].2.contains("IV_INO_LBLK_64 must be native"),
            "{}",
            r[0].2
        );

        let (t, m) = path_trace(Some(8));
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].1, Outcome::Pass, "{}", r[0].2);
        let r = run(&t, ProfileName::Emmc, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].1, Outcome::Fail);
        assert!(r[0].2.contains("beyond the emmc profile's 4"), "{}", r[0].2);

        // A 4-byte program in the LBLK_64 window under emmc: not fallback.
        let (t, m) = path_trace(Some(4));
        let r = run(&t, ProfileName::Emmc, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].1, Outcome::Fail);
        assert!(r[0].2.contains("must fall back"), "{}", r[0].2);
    }

    #[test]
    fn a_missing_mark_or_get_id_fails_the_check() {
        let (t, _) = path_trace(None);
        let r = run(
            &t,
            ProfileName::Emmc,
            32,
            &[marks(&[("path/default/start", 2)])],
        );
        assert_eq!(r[0].1, Outcome::Fail);
        assert!(
            r[0].2.contains("no mark \"path/default/end\""),
            "{}",
            r[0].2
        );
        let r = run(
            &t,
            ProfileName::Emmc,
            32,
            &[marks(&[
                ("path/default/start", 2),
                ("path/default/end", 99),
            ])],
        );
        assert!(
            r[0].2.contains("the trace has 7 get_id events"),
            "{}",
            r[0].2
        );
    }

    /// A key-removal trace; `late` evicts the idle keys only after the
    /// removal mark, `early` evicts the busy key while it is open.
    fn removal_trace(late: bool, early: bool) -> (Trace, Value) {
        let mut t = Trace::default();
        let mut m = Vec::new();
        m.push(("removal/idle/start", t.mark()));
        t.program(0, "a1", 4).program(1, "a2", 4);
        t.evict(0).evict(1); // drop_caches after writing
        t.program(3, "a1", 4).program(4, "a2", 4);
        m.push(("removal/idle/keys-in-use", t.mark()));
        if !late {
            t.evict(3).evict(4);
        }
        m.push(("removal/idle/removed", t.mark()));
        if late {
            t.evict(3).evict(4);
        }
        m.push(("removal/busy/start", t.mark()));
        t.program(5, "b1", 4);
        m.push(("removal/busy/open", t.mark()));
        if early {
            t.evict(5);
        }
        m.push(("removal/busy/busy", t.mark()));
        if !early {
            t.evict(5);
        }
        m.push(("removal/busy/removed", t.mark()));
        (t, marks(&m))
    }

    #[test]
    fn key_removal_evictions_are_ordered() {
        let (t, m) = removal_trace(false, false);
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].0, "trace/key-removal");
        assert_eq!(r[0].1, Outcome::Pass, "{}", r[0].2);
        let (t, m) = removal_trace(true, false);
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert!(
            r[0].2
                .contains("idle key: keys [\"a1\", \"a2\"] were not evicted"),
            "{}",
            r[0].2
        );
        let (t, m) = removal_trace(false, true);
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert!(
            r[0].2.contains("evicted while its file was still open"),
            "{}",
            r[0].2
        );
        // Programmed again after the removal.
        let (mut t, m) = removal_trace(false, false);
        t.program(0, "a2", 4);
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert!(r[0].2.contains("programmed again"), "{}", r[0].2);
    }

    #[test]
    fn wrapped_key_removal_evicts_the_derived_key() {
        let trace = |evict: bool| {
            let mut t = Trace::default();
            let mut m = vec![("wrapped-removal/start", t.mark())];
            t.program(2, "w1", 8);
            m.push(("wrapped-removal/keys-in-use", t.mark()));
            if evict {
                t.evict(2);
            }
            m.push(("wrapped-removal/removed", t.mark()));
            (t, marks(&m))
        };
        let (t, m) = trace(true);
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].0, "trace/wrapped-key-removal");
        assert_eq!(r[0].1, Outcome::Pass, "{}", r[0].2);
        let (t, m) = trace(false);
        let r = run(&t, ProfileName::Ufs, 32, std::slice::from_ref(&m));
        assert_eq!(r[0].1, Outcome::Fail);
        assert!(r[0].2.contains("were not evicted"), "{}", r[0].2);
    }

    #[test]
    fn keyslot_pressure_needs_replacement_and_reprogramming() {
        let mut t = Trace::default();
        let start = t.mark();
        for round in 0..2 {
            for k in 0..4u32 {
                t.program(k % 2, &format!("k{k}"), 8);
            }
            if round == 0 {
                t.evict(0);
            }
        }
        let end = t.mark();
        let m = marks(&[("pressure/start", start), ("pressure/end", end)]);
        let r = run(&t, ProfileName::Ufs, 2, std::slice::from_ref(&m));
        assert_eq!(r[0].0, "trace/keyslot-pressure");
        assert_eq!(r[0].1, Outcome::Pass, "{}", r[0].2);
        // The device claims one more program than it traced.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trace.jsonl");
        std::fs::write(&path, t.text()).expect("write");
        let mut file = t.stats();
        file.stats.keyslots.programmed = 9;
        let stats = serde_json::to_value(file).expect("serializes");
        let input = TraceCheck {
            boot: "b",
            profile: ProfileName::Ufs,
            slots: 2,
            guest_facts: vec![&m],
            trace: &path,
            stats: &stats,
        };
        let r = check(&input);
        assert!(
            r[0].message
                .contains("stats.keyslots.programmed is 9, but the trace has 8"),
            "{}",
            r[0].message
        );
        // Two keys only: no pressure.
        let mut t = Trace::default();
        let start = t.mark();
        t.program(0, "k0", 8)
            .program(1, "k1", 8)
            .program(0, "k0", 8);
        let end = t.mark();
        let m = marks(&[("pressure/start", start), ("pressure/end", end)]);
        let r = run(&t, ProfileName::Ufs, 2, std::slice::from_ref(&m));
        assert!(r[0].2.contains("no pressure"), "{}", r[0].2);
    }

    #[test]
    fn an_unreadable_trace_fails_every_wanted_check() {
        let m = marks(&[("fscrypt-tool/start", 1)]);
        let stats = Value::Null;
        let input = TraceCheck {
            boot: "b",
            profile: ProfileName::Ufs,
            slots: 32,
            guest_facts: vec![&m],
            trace: Path::new("/nonexistent/trace.jsonl"),
            stats: &stats,
        };
        let r = check(&input);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "trace/fscrypt-tool");
        assert!(r[0].message.contains("cannot read the device trace"));
    }
}
