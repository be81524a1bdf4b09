//! `key-usage`: how much data one key covered, per fscrypt policy, from
//! the device's per-key accounting (the stats' `key_usage`), and the
//! `--key-usage-limit` warnings in its trace.
//!
//! The path-selection test writes files under each policy between marks
//! (`path/<policy>/start..end`) with a fresh master key per policy, so the
//! keys programmed in a window are that policy's: per-file keys give one
//! key per file, IV_INO_LBLK_64 and IV_INO_LBLK_32 one key for all the
//! policy's files. The manifest names the files (`path/<policy>/<leaf>`)
//! and their sizes.

use super::checks::parse_stats;
use super::report::TestResult;
use super::timeline::{Marks, Timeline, programs};
use super::verify::MergedManifest;
use anyhow::{Context, bail};
use icelab_contract::device::{KeyUsage, KeyUsageLimit, LimitAction, StatsFile, TraceEvent};
use icelab_contract::marks::{self as label, PATH_POLICIES, PathEdge};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The filesystem block size of the lab's ext4 (the path test's data unit
/// size): a file's data covers its size rounded up to it.
const BLOCK_SIZE: u64 = 4096;

/// What one policy's window shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyUsage {
    /// Files the guest wrote under the policy.
    pub files: usize,
    /// Their data, in whole blocks.
    pub file_bytes: u64,
    /// Distinct keys programmed in the window.
    pub keys: usize,
    /// Bytes each of those keys encrypted (over the whole boot).
    pub bytes_per_key: Vec<u64>,
}

/// What the check reads.
pub struct KeyUsageCheck<'a> {
    /// The boot's name.
    pub boot: &'a str,
    /// The device's `--key-usage-limit`, if any.
    pub limit: Option<KeyUsageLimit>,
    /// The `facts` of every guest test of the boot.
    pub guest_facts: &'a [&'a Value],
    /// The device's trace file.
    pub trace: &'a Path,
    /// The device's stats.
    pub stats: &'a Value,
    /// The boot's merged manifest.
    pub manifest: &'a MergedManifest,
}

/// Runs `key-usage`.
pub fn check(input: &KeyUsageCheck<'_>) -> TestResult {
    let mut facts = serde_json::Map::new();
    let outcome = run(input, &mut facts);
    let (passed, message) = match outcome {
        Ok(message) => (true, message),
        Err(error) => (false, format!("{error:#}")),
    };
    TestResult::host(
        input.boot,
        "key-usage",
        passed,
        message,
        Value::Object(facts),
    )
}

fn run(
    input: &KeyUsageCheck<'_>,
    facts: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<String> {
    let stats = parse_stats(input.stats).map_err(anyhow::Error::msg)?;
    let timeline = Timeline::read(input.trace)?;
    let marks = Marks::from_facts(input.guest_facts);
    facts.insert("keys".into(), serde_json::to_value(&stats.stats.key_usage)?);
    // The per-policy table needs the path-selection test's windows.
    let mut lines = Vec::new();
    if marks.has_prefix(label::PATH_PREFIX) {
        let per_policy = policy_usage(&stats, &timeline, &marks, input.manifest)?;
        facts.insert("per_policy".into(), serde_json::to_value(&per_policy)?);
        lines = check_policies(&per_policy)?;
    }
    if let Some(info) = &stats.device.default_key {
        let entry = stats
            .stats
            .key_usage
            .iter()
            .find(|u| u.default_key)
            .context("the device has a default key but no usage entry for it")?;
        if entry.fingerprint != info.fingerprint {
            bail!(
                "the default key's usage entry is {}, but the device names {}",
                entry.fingerprint,
                info.fingerprint
            );
        }
        if entry.encrypted.bytes != stats.stats.default_key_out.bytes {
            bail!(
                "the default key encrypted {} bytes by its usage entry but {} by the \
                 default_key_out counter",
                entry.encrypted.bytes,
                stats.stats.default_key_out.bytes
            );
        }
        let c = &stats.stats;
        if c.plain_out.requests + c.plain_in.requests > 0 || c.default_key_out.requests == 0 {
            bail!(
                "with a default key every request without a crypto context must use it: {} plain \
                 writes and {} plain reads went unencrypted, {} went through the default key",
                c.plain_out.requests,
                c.plain_in.requests,
                c.default_key_out.requests + c.default_key_in.requests
            );
        }
        lines.push(format!(
            "default key: {} encrypted, {} decrypted",
            mib(entry.encrypted.bytes),
            mib(entry.decrypted.bytes)
        ));
    }
    if let Some(limit) = input.limit {
        lines.push(check_limit(&stats, &timeline.events, limit)?);
    }
    Ok(lines.join("; "))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Per policy: the files of its window (from the manifest) and the keys
/// programmed in it with what each encrypted.
fn policy_usage(
    stats: &StatsFile,
    timeline: &Timeline,
    marks: &Marks,
    manifest: &MergedManifest,
) -> anyhow::Result<BTreeMap<&'static str, PolicyUsage>> {
    let by_fingerprint: HashMap<&str, &KeyUsage> = stats
        .stats
        .key_usage
        .iter()
        .map(|u| (u.fingerprint.as_str(), u))
        .collect();
    let files = manifest.to_manifest().files;
    let mut out = BTreeMap::new();
    for policy in PATH_POLICIES {
        let start = marks.pos(timeline, &label::path(policy, PathEdge::Start))?;
        let end = marks.pos(timeline, &label::path(policy, PathEdge::End))?;
        let keys: BTreeSet<&str> = programs(timeline.between(start, end))
            .map(|p| p.fingerprint.as_str())
            .collect();
        let mut bytes_per_key = Vec::new();
        for key in &keys {
            let usage = by_fingerprint.get(key).with_context(|| {
                format!(
                    "key {key} was programmed under {policy} but the stats have no usage for it"
                )
            })?;
            bytes_per_key.push(usage.encrypted.bytes);
        }
        let prefix = format!("{}{policy}/", label::PATH_PREFIX);
        let (count, file_bytes) = files
            .iter()
            .filter(|f| f.name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
            .fold((0, 0), |(n, bytes), f| {
                (
                    n + 1,
                    bytes + f.size.unwrap_or(0).div_ceil(BLOCK_SIZE) * BLOCK_SIZE,
                )
            });
        out.insert(
            policy,
            PolicyUsage {
                files: count,
                file_bytes,
                keys: keys.len(),
                bytes_per_key,
            },
        );
    }
    Ok(out)
}

/// Per-file keys: one key per file; IV_INO_LBLK_*: one key for all the
/// policy's files; either way the keys covered at least the files' data.
fn check_policies(per_policy: &BTreeMap<&'static str, PolicyUsage>) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for (&policy, usage) in per_policy {
        if usage.files == 0 {
            bail!("the manifest lists no file of the {policy} policy's window");
        }
        let want_keys = if policy == label::PATH_DEFAULT {
            usage.files
        } else {
            1
        };
        if usage.keys != want_keys {
            bail!(
                "{policy}: {} keys programmed for {} files; the policy uses {want_keys}",
                usage.keys,
                usage.files
            );
        }
        let covered: u64 = usage.bytes_per_key.iter().sum();
        if covered < usage.file_bytes {
            bail!(
                "{policy}: its keys encrypted {covered} bytes, less than the {} bytes of its files",
                usage.file_bytes
            );
        }
        lines.push(format!(
            "{policy}: {} key(s) for {} files, {:?} bytes per key",
            usage.keys, usage.files, usage.bytes_per_key
        ));
    }
    Ok(lines)
}

/// `--key-usage-limit`: with `warn`, a key is over the limit exactly when
/// it encrypted more than it; with `refuse`, no key encrypted more than
/// it and a key is over exactly when the device refused it. Either way,
/// each key over was traced once, and the boot has keys on both sides.
fn check_limit(
    stats: &StatsFile,
    events: &[TraceEvent],
    limit: KeyUsageLimit,
) -> anyhow::Result<String> {
    let mut traced: HashMap<&str, usize> = HashMap::new();
    for event in events {
        if let TraceEvent::KeyUsageLimit(e) = event {
            *traced.entry(e.fingerprint.as_str()).or_default() += 1;
        }
    }
    let mut over = 0;
    for usage in &stats.stats.key_usage {
        let should = match limit.action {
            LimitAction::Warn => usage.encrypted.bytes > limit.bytes,
            LimitAction::Refuse => {
                if usage.encrypted.bytes > limit.bytes {
                    bail!(
                        "key {} encrypted {} bytes past the refusing limit of {}",
                        usage.fingerprint,
                        usage.encrypted.bytes,
                        limit.bytes
                    );
                }
                usage.refused > 0
            }
        };
        let events = traced.get(usage.fingerprint.as_str()).copied().unwrap_or(0);
        if usage.over_limit != should || events != usize::from(should) {
            bail!(
                "key {} encrypted {} bytes against a limit of {}: over_limit {}, {events} \
                 key-usage-limit events (want {should} and {})",
                usage.fingerprint,
                usage.encrypted.bytes,
                limit.bytes,
                usage.over_limit,
                usize::from(should)
            );
        }
        over += usize::from(should);
    }
    if over == 0 || over == stats.stats.key_usage.len() {
        bail!(
            "{over} of {} keys passed the {}-byte limit: the boot must have keys on both sides",
            stats.stats.key_usage.len(),
            limit.bytes
        );
    }
    Ok(format!(
        "{over} of {} keys passed the {}-byte limit ({}), each traced once",
        stats.stats.key_usage.len(),
        limit.bytes,
        limit.action.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_contract::device::{DataUnits, KeyUsageLimitEvent};

    fn usage(fingerprint: &str, bytes: u64, over_limit: bool) -> KeyUsage {
        KeyUsage {
            fingerprint: fingerprint.to_owned(),
            default_key: false,
            encrypted: DataUnits {
                data_units: bytes / 4096,
                bytes,
            },
            decrypted: DataUnits::default(),
            refused: 0,
            over_limit,
        }
    }

    fn limit_event(fingerprint: &str) -> TraceEvent {
        TraceEvent::KeyUsageLimit(KeyUsageLimitEvent {
            fingerprint: fingerprint.to_owned(),
            default_key: false,
            bytes_encrypted: 0,
            request_bytes: 4096,
            limit: 16384,
            action: LimitAction::Warn,
        })
    }

    const LIMIT: KeyUsageLimit = KeyUsageLimit {
        bytes: 16384,
        action: LimitAction::Warn,
    };

    fn stats(keys: Vec<KeyUsage>) -> StatsFile {
        let mut file = StatsFile::default();
        file.stats.key_usage = keys;
        file
    }

    #[test]
    fn the_limit_check_wants_each_key_over_it_traced_once() {
        let keys = stats(vec![usage("a", 4096, false), usage("b", 28672, true)]);
        assert!(check_limit(&keys, &[limit_event("b")], LIMIT).is_ok());
        // Not traced, traced twice, traced though under it.
        assert!(check_limit(&keys, &[], LIMIT).is_err());
        let twice = [limit_event("b"), limit_event("b")];
        assert!(check_limit(&keys, &twice, LIMIT).is_err());
        let wrong = [limit_event("a"), limit_event("b")];
        assert!(check_limit(&keys, &wrong, LIMIT).is_err());
        // The flag must agree with the bytes.
        let unflagged = stats(vec![usage("a", 4096, false), usage("b", 28672, false)]);
        assert!(check_limit(&unflagged, &[limit_event("b")], LIMIT).is_err());
        // Every key on one side proves nothing.
        let all_under = stats(vec![usage("a", 4096, false)]);
        assert!(check_limit(&all_under, &[], LIMIT).is_err());
    }

    #[test]
    fn the_refusing_limit_wants_refused_keys_traced_and_none_past_it() {
        const REFUSE: KeyUsageLimit = KeyUsageLimit {
            bytes: 16384,
            action: LimitAction::Refuse,
        };
        let mut refused = usage("b", 16384, true);
        refused.refused = 3;
        let keys = stats(vec![usage("a", 4096, false), refused]);
        assert!(check_limit(&keys, &[limit_event("b")], REFUSE).is_ok());
        assert!(check_limit(&keys, &[], REFUSE).is_err());
        // A key that encrypted past a refusing limit is the device's bug.
        let past = stats(vec![usage("a", 4096, false), usage("b", 20480, true)]);
        assert!(check_limit(&past, &[limit_event("b")], REFUSE).is_err());
        // Nothing refused proves nothing.
        let none = stats(vec![usage("a", 4096, false), usage("b", 16384, false)]);
        assert!(check_limit(&none, &[], REFUSE).is_err());
    }

    #[test]
    fn per_file_policies_want_a_key_per_file_and_lblk_one_key() {
        let good = BTreeMap::from([
            (
                label::PATH_DEFAULT,
                PolicyUsage {
                    files: 2,
                    file_bytes: 28672,
                    keys: 2,
                    bytes_per_key: vec![4096, 24576],
                },
            ),
            (
                label::PATH_LBLK64,
                PolicyUsage {
                    files: 2,
                    file_bytes: 28672,
                    keys: 1,
                    bytes_per_key: vec![28672],
                },
            ),
        ]);
        assert!(check_policies(&good).is_ok());
        let mut one_key_for_per_file = good.clone();
        if let Some(u) = one_key_for_per_file.get_mut(label::PATH_DEFAULT) {
            u.keys = 1;
            u.bytes_per_key = vec![28672];
        }
        assert!(check_policies(&one_key_for_per_file).is_err());
        let mut short = good.clone();
        if let Some(u) = short.get_mut(label::PATH_LBLK64) {
            u.bytes_per_key = vec![4096];
        }
        assert!(check_policies(&short).is_err());
    }
}
