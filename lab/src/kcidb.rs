//! A run's results in the KCIDB I/O format (`icelab run --kcidb FILE`),
//! for KernelCI's common results database.
//!
//! The model is the subset of the KCIDB I/O schema icelab emits, at the
//! latest version `kcidb-io` 141 ships: v5.3 (`kcidb_io/schema/v05_03.py`,
//! `kcidb_io.schema.LATEST`). `scripts/validate-kcidb FILE` checks a file
//! against that schema with the package's own validator.
//!
//! One run is one document:
//!
//! - one **checkout**: the kernel under test. A Debian kernel package has
//!   no git tree icelab knows of, so `tree_name` and the `git_*` fields are
//!   left out (the schema requires only `id` and `origin`); the package
//!   and its version go into `comment` and `misc`;
//! - one **build**: Debian's build of that package (`config_name` is the
//!   package, `architecture` `x86_64`, `status` `PASS`: the image exists
//!   and icelab booted it; icelab did not build it);
//! - one **test** per [`TestResult`], at `icelab.<suite>.<boot>.<test>`.
//!
//! **Names in paths.** A path is dot-separated nodes matching
//! [`PATH_PATTERN`]: letters, digits, `_` and `-`. icelab's names keep
//! their `-`; a `/` (as in `trace/path-selection`) separates nodes, so it
//! becomes `.` (`icelab.lab.ufs.trace.path-selection`); any other character
//! (`.`, space, ...) becomes `_`, and an empty node `_`. The original
//! `boot/test` is the test's `comment` and is in its `misc`.
//!
//! **Ids** are `icelab:<run>...` with `<run>` the run's seed and start time
//! (`<seed hex>-<unix seconds>`): stable within a run (the same run gives
//! the same document) and distinct between two runs of the same `--seed`.
//! A test's id adds its boot and its index among that boot's results.
//!
//! **Times.** Every `start_time` is the run's start: icelab does not record
//! when each test began, and the run's start is a true lower bound.
//! `duration` is in seconds: a guest test's own measurement; a host check's
//! only when it measured one (most report zero: they are not timed).

use crate::qemu::Accel;
use crate::report::{BootRecord, Outcome, Source, TestResult};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Major number of the schema version emitted (kcidb-io 141's latest).
pub const SCHEMA_MAJOR: u32 = 5;
/// Minor number of the schema version emitted.
pub const SCHEMA_MINOR: u32 = 3;
/// The submitting CI system; the schema's origin pattern is `^[a-z0-9_]+$`.
pub const ORIGIN: &str = "icelab";
/// The schema's `maxLength` of `log_excerpt`, in characters (code points).
pub const LOG_EXCERPT_MAX_CHARS: usize = 16384;
/// The schema's pattern of a test `path` (v5.3 `path_re`).
pub const PATH_PATTERN: &str = r"^([a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*)?$";
/// A test's facts go into its `misc` when their JSON is at most this long;
/// larger ones (a file manifest) are left to the JSON report.
pub const FACTS_MAX_BYTES: usize = 4096;
/// The end of a truncated `log_excerpt`.
const TRUNCATED: &str = "\n[truncated by icelab]";

/// What a run knows that the document needs.
#[derive(Clone, Copy, Debug)]
pub struct KcidbRun<'a> {
    /// The suite (`smoke`, `lab`, ...).
    pub suite: &'a str,
    /// The run's seed.
    pub seed: u64,
    /// The kernel's Debian package (or `user-supplied`).
    pub kernel_package: &'a str,
    /// The package's version (for `user-supplied`, the kernel's path).
    pub kernel_version: &'a str,
    /// Name and version of the compiler that built the kernel, if known.
    pub compiler: Option<&'a str>,
    /// The accelerator the boots used (`Kvm` or `Tcg`).
    pub accel: Accel,
    /// When the run started.
    pub started: SystemTime,
    /// The boots, for each test's environment (profile, device).
    pub boots: &'a [BootRecord],
    /// Every result, in order.
    pub results: &'a [TestResult],
}

/// A KCIDB I/O document: the top-level object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Schema version.
    pub version: Version,
    /// Source checkouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkouts: Vec<Checkout>,
    /// Builds of checkouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<Build>,
    /// Test runs on builds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<Test>,
}

/// `version`: the schema version the document follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Backward-incompatible revisions.
    pub major: u32,
    /// Backward-compatible revisions.
    pub minor: u32,
}

/// `status` of a build or a test, in the schema's priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Completed; the tested code is faulty.
    Fail,
    /// Did not complete (a failure in the test); the code's status unknown.
    Error,
    /// Did not run (a failure in the harness).
    Miss,
    /// Completed; the tested code is correct.
    Pass,
    /// Completed without a verdict (e.g. a measurement).
    Done,
    /// Did not run: not applicable.
    Skip,
}

impl From<&Outcome> for Status {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Pass => Status::Pass,
            Outcome::Fail => Status::Fail,
            Outcome::Skip => Status::Skip,
        }
    }
}

/// `checkouts[]`: the source of the kernel under test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkout {
    /// `origin:local-id`.
    pub id: String,
    /// The submitting CI system.
    pub origin: String,
    /// What the kernel is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// True when the source could be put together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// Free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misc: Option<KernelMisc>,
}

/// `checkouts[].misc` and `builds[].misc`: the distribution kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMisc {
    /// The kernel's package (`linux-image-...`, or `user-supplied`).
    pub kernel_package: String,
    /// Its version.
    pub kernel_version: String,
}

/// `builds[]`: the kernel image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// `origin:local-id`.
    pub id: String,
    /// The checkout built.
    pub checkout_id: String,
    /// The submitting CI system.
    pub origin: String,
    /// Who built it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Target architecture (`^[a-z0-9_]*$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Name and version of the compiler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiler: Option<String>,
    /// The configuration's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_name: Option<String>,
    /// Build status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misc: Option<KernelMisc>,
}

/// `tests[]`: one test run on the build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Test {
    /// `origin:local-id`.
    pub id: String,
    /// The build tested.
    pub build_id: String,
    /// The submitting CI system.
    pub origin: String,
    /// Dot-separated node path ([`PATH_PATTERN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// icelab's own name, `boot/test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// The result's message, at most [`LOG_EXCERPT_MAX_CHARS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    /// Where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misc: Option<TestMisc>,
}

/// `tests[].environment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// E.g. `QEMU TCG, icelab serve --queues 2 --profile ufs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misc: Option<EnvironmentMisc>,
}

/// `tests[].environment.misc`: the emulated machine of the boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentMisc {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Engine profile (`ufs`, `emmc`); absent for a device without inline
    /// encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `icelab serve` arguments besides image, socket, stats and trace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_args: Vec<String>,
    /// The user's device command (`--device-cmd`), as run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_command: Option<String>,
}

/// `tests[].misc`: icelab's view of the result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestMisc {
    /// `guest` (the in-guest runner) or `host` (icelab's checks).
    pub source: String,
    /// The boot, as icelab names it.
    pub boot: String,
    /// The test, as icelab names it.
    pub name: String,
    /// The run's seed (hex): `icelab run --seed` repeats the run.
    pub seed: String,
    /// The boot's seed (hex), when the boot is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_seed: Option<String>,
    /// The facts the test reported, when at most [`FACTS_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<Value>,
    /// The size of facts left out for being larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_omitted_bytes: Option<usize>,
}

/// The document of a run: one checkout, one build, a test per result.
pub fn document(run: &KcidbRun<'_>) -> Document {
    let started = rfc3339(run.started);
    let run_key = run_key(run);
    let checkout_id = format!("{ORIGIN}:{run_key}");
    let build_id = format!("{ORIGIN}:{run_key}.build");
    let kernel = format!(
        "{} {}",
        no_nul(run.kernel_package),
        no_nul(run.kernel_version)
    );
    let kernel_misc = KernelMisc {
        kernel_package: run.kernel_package.to_owned(),
        kernel_version: run.kernel_version.to_owned(),
    };
    let checkout = Checkout {
        id: checkout_id.clone(),
        origin: ORIGIN.to_owned(),
        comment: Some(format!(
            "{kernel}: a distribution kernel package, not a git checkout"
        )),
        start_time: Some(started.clone()),
        valid: Some(true),
        misc: Some(kernel_misc.clone()),
    };
    let build = Build {
        id: build_id.clone(),
        checkout_id,
        origin: ORIGIN.to_owned(),
        comment: Some(format!(
            "{kernel} as packaged (built by the distribution, not by icelab)"
        )),
        start_time: Some(started.clone()),
        architecture: Some("x86_64".to_owned()),
        compiler: run.compiler.map(no_nul),
        config_name: Some(no_nul(run.kernel_package)),
        status: Some(Status::Pass),
        misc: Some(kernel_misc),
    };
    let mut per_boot: Vec<(&str, usize)> = Vec::new();
    let tests = run
        .results
        .iter()
        .map(|result| {
            let index = match per_boot.iter_mut().find(|(boot, _)| *boot == result.boot) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    per_boot.push((&result.boot, 1));
                    0
                }
            };
            test(run, &build_id, &run_key, &started, result, index)
        })
        .collect();
    Document {
        version: Version {
            major: SCHEMA_MAJOR,
            minor: SCHEMA_MINOR,
        },
        checkouts: vec![checkout],
        builds: vec![build],
        tests,
    }
}

/// One result as a test; `index` is its place among its boot's results.
fn test(
    run: &KcidbRun<'_>,
    build_id: &str,
    run_key: &str,
    started: &str,
    result: &TestResult,
    index: usize,
) -> Test {
    let boot = run.boots.iter().find(|b| b.name == result.boot);
    let duration = match result.source {
        Source::Guest => Some(result.duration.as_secs_f64()),
        Source::Host => (!result.duration.is_zero()).then_some(result.duration.as_secs_f64()),
    };
    let (facts, facts_omitted_bytes) = small_facts(&result.facts);
    Test {
        id: format!("{ORIGIN}:{run_key}/{}/{index}", no_nul(&result.boot)),
        build_id: build_id.to_owned(),
        origin: ORIGIN.to_owned(),
        path: Some(test_path(run.suite, &result.boot, &result.name)),
        comment: Some(no_nul(&format!("{}/{}", result.boot, result.name))),
        status: Some(Status::from(&result.outcome)),
        start_time: Some(started.to_owned()),
        duration,
        log_excerpt: (!result.message.is_empty()).then(|| log_excerpt(&result.message)),
        environment: Some(environment(run.accel, boot)),
        misc: Some(TestMisc {
            source: result.source.name().to_owned(),
            boot: result.boot.clone(),
            name: result.name.clone(),
            seed: format!("{:016x}", run.seed),
            boot_seed: boot.map(|b| format!("{:016x}", b.seed)),
            facts,
            facts_omitted_bytes,
        }),
    }
}

/// `QEMU TCG, icelab serve --queues 2 --profile ufs`, and the same as data.
fn environment(accel: Accel, boot: Option<&BootRecord>) -> Environment {
    let qemu = format!("QEMU {}", accel.name().to_uppercase());
    let comment = match boot {
        None => qemu,
        Some(boot) => match &boot.device_command {
            Some(command) => format!("{qemu}, device command {command}"),
            None if boot.device_args.is_empty() => format!("{qemu}, icelab serve"),
            None => format!("{qemu}, icelab serve {}", boot.device_args.join(" ")),
        },
    };
    Environment {
        comment: Some(no_nul(&comment)),
        misc: Some(EnvironmentMisc {
            accel: accel.name().to_owned(),
            profile: boot.and_then(|b| b.profile.clone()),
            device_args: boot.map(|b| b.device_args.clone()).unwrap_or_default(),
            device_command: boot.and_then(|b| b.device_command.clone()),
        }),
    }
}

/// The facts to keep in `misc` (none when empty) and, when too large for
/// it, their size.
fn small_facts(facts: &Value) -> (Option<Value>, Option<usize>) {
    let empty = match facts {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    };
    if empty {
        return (None, None);
    }
    let size = serde_json::to_string(facts).map_or(usize::MAX, |text| text.len());
    if size <= FACTS_MAX_BYTES {
        (Some(facts.clone()), None)
    } else {
        (None, Some(size))
    }
}

/// `<seed hex>-<unix seconds of the start>`: the run's part of every id.
fn run_key(run: &KcidbRun<'_>) -> String {
    let seconds = match run.started.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs().to_string(),
        Err(before) => format!("m{}", before.duration().as_secs()),
    };
    format!("{:016x}-{seconds}", run.seed)
}

/// `icelab.<suite>.<boot>.<test>`, each name mapped by [`path_nodes`].
pub fn test_path(suite: &str, boot: &str, test: &str) -> String {
    format!(
        "{ORIGIN}.{}.{}.{}",
        path_nodes(suite),
        path_nodes(boot),
        path_nodes(test)
    )
}

/// An icelab name as path nodes: `/` separates nodes (becomes `.`);
/// letters, digits, `_` and `-` stay; anything else becomes `_`; an empty
/// node becomes `_`. The result always matches [`PATH_PATTERN`] and is
/// never empty.
pub fn path_nodes(name: &str) -> String {
    name.split('/')
        .map(|node| {
            if node.is_empty() {
                return "_".to_owned();
            }
            node.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .collect::<Vec<String>>()
        .join(".")
}

/// `message` fit for `log_excerpt`: no NUL (the schema's `^[^\0]*$`; a
/// console tail may hold one), at most [`LOG_EXCERPT_MAX_CHARS`]
/// characters; a longer message keeps its beginning and ends with a note.
pub fn log_excerpt(message: &str) -> String {
    let clean = no_nul(message);
    if clean.chars().count() <= LOG_EXCERPT_MAX_CHARS {
        return clean;
    }
    let keep = LOG_EXCERPT_MAX_CHARS - TRUNCATED.chars().count();
    let mut excerpt: String = clean.chars().take(keep).collect();
    excerpt.push_str(TRUNCATED);
    excerpt
}

/// `text` with each NUL replaced by U+FFFD: the schema's strings exclude NUL.
fn no_nul(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// `time` as RFC 3339 in UTC with microseconds, the form of the schema's
/// examples: `2020-08-14T23:08:06.967000+00:00`.
pub fn rfc3339(time: SystemTime) -> String {
    let (seconds, micros) = match time.duration_since(UNIX_EPOCH) {
        Ok(since) => (since.as_secs() as i64, since.subsec_micros()),
        Err(before) => {
            let before = before.duration();
            let (seconds, micros) = (-(before.as_secs() as i64), before.subsec_micros());
            if micros == 0 {
                (seconds, 0)
            } else {
                (seconds - 1, 1_000_000 - micros)
            }
        }
    };
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Year, month (1-12) and day (1-31) of the proleptic Gregorian calendar
/// `days` after 1970-01-01: H. Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153; // month from March, [0, 11]
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes `document` to `path` as JSON.
pub fn write(path: &Path, document: &Document) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(document).context("cannot encode the KCIDB report")?;
    std::fs::write(path, text)
        .with_context(|| format!("cannot write the KCIDB report {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;
    use std::time::Duration;

    /// The schema's `path` pattern, [`PATH_PATTERN`], by hand (no regex
    /// crate in the lab): `^([a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*)?$`.
    fn matches_path_pattern(path: &str) -> bool {
        path.is_empty()
            || path.split('.').all(|node| {
                !node.is_empty()
                    && node
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
    }

    /// The schema's id pattern: `^[a-z0-9_]+:[^\0]*$`.
    fn matches_id_pattern(id: &str) -> bool {
        match id.split_once(':') {
            Some((origin, _)) => {
                !origin.is_empty()
                    && origin
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !id.contains('\0')
            }
            None => false,
        }
    }

    fn boot(name: &str, profile: Option<&str>, seed: u64) -> BootRecord {
        BootRecord {
            name: name.to_owned(),
            guest_suite: "lab".to_owned(),
            profile: profile.map(str::to_owned),
            seed,
            device_args: match profile {
                Some(p) => vec!["--queues".into(), "2".into(), "--profile".into(), p.into()],
                None => vec!["--no-inline-encryption".into()],
            },
            device_command: None,
            cmdline: String::new(),
            hello: Value::Null,
            stats: Value::Null,
            verifier: Value::Null,
            manifest_files: 0,
            duration: Duration::from_secs(30),
        }
    }

    fn guest(boot: &str, name: &str, passed: bool, millis: u64, message: &str) -> TestResult {
        TestResult {
            boot: boot.to_owned(),
            source: Source::Guest,
            name: name.to_owned(),
            outcome: if passed { Outcome::Pass } else { Outcome::Fail },
            duration: Duration::from_millis(millis),
            message: message.to_owned(),
            facts: json!({"slots": 32}),
        }
    }

    /// A run of two boots: guest tests, host checks (one a skip, one with
    /// a `/` in its name, one with large facts), a long message.
    fn synthetic() -> (Vec<BootRecord>, Vec<TestResult>) {
        let boots = vec![
            boot("ufs", Some("ufs"), 0x1111),
            boot("ufs-reboot", Some("ufs"), 0x1111),
        ];
        let long = "x".repeat(LOG_EXCERPT_MAX_CHARS + 100);
        let results = vec![
            guest("ufs", "driver-load", true, 300, ""),
            guest(
                "ufs",
                "fscrypt-roundtrip",
                false,
                1500,
                "ENOKEY\0 after add_key",
            ),
            TestResult::host("ufs", "device-stats", true, String::new(), Value::Null),
            TestResult::host(
                "ufs",
                "trace/path-selection",
                false,
                long,
                json!({"manifest": "m".repeat(FACTS_MAX_BYTES)}),
            ),
            guest("ufs-reboot", "driver-load", true, 250, ""),
            TestResult::skipped("ufs-reboot", "key-usage", "no trace".into()),
        ];
        (boots, results)
    }

    fn run<'a>(boots: &'a [BootRecord], results: &'a [TestResult]) -> KcidbRun<'a> {
        KcidbRun {
            suite: "lab-reboot",
            seed: 0xc0ffee,
            kernel_package: "linux-image-7.3.4+deb13-cloud-amd64",
            kernel_version: "7.3.4-1~bpo13+1",
            compiler: None,
            accel: Accel::Tcg,
            started: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            boots,
            results,
        }
    }

    #[test]
    fn a_run_becomes_one_checkout_one_build_and_a_test_per_result() {
        let (boots, results) = synthetic();
        let doc = document(&run(&boots, &results));
        assert_eq!(doc.version, Version { major: 5, minor: 3 });
        assert_eq!(doc.checkouts.len(), 1);
        assert_eq!(doc.builds.len(), 1);
        assert_eq!(doc.tests.len(), results.len());
        let checkout = &doc.checkouts[0];
        let build = &doc.builds[0];
        assert_eq!(build.checkout_id, checkout.id);
        assert_eq!(build.architecture.as_deref(), Some("x86_64"));
        assert_eq!(
            build.config_name.as_deref(),
            Some("linux-image-7.3.4+deb13-cloud-amd64")
        );
        assert_eq!(build.status, Some(Status::Pass));
        assert!(
            checkout
                .comment
                .as_deref()
                .is_some_and(|c| c.contains("7.3.4-1~bpo13+1")),
            "{checkout:?}"
        );
        assert_eq!(
            checkout.start_time.as_deref(),
            Some("2023-11-14T22:13:20.250000+00:00")
        );

        let mut ids = HashSet::new();
        for id in [&checkout.id, &build.id] {
            assert!(matches_id_pattern(id), "{id}");
        }
        for test in &doc.tests {
            assert!(matches_id_pattern(&test.id), "{}", test.id);
            assert!(ids.insert(test.id.clone()), "duplicate id {}", test.id);
            assert_eq!(test.build_id, build.id);
            assert_eq!(test.origin, ORIGIN);
            let path = test.path.as_deref().expect("a path");
            assert!(matches_path_pattern(path), "{path}");
        }
        let paths: Vec<&str> = doc.tests.iter().filter_map(|t| t.path.as_deref()).collect();
        assert_eq!(
            paths,
            [
                "icelab.lab-reboot.ufs.driver-load",
                "icelab.lab-reboot.ufs.fscrypt-roundtrip",
                "icelab.lab-reboot.ufs.device-stats",
                "icelab.lab-reboot.ufs.trace.path-selection",
                "icelab.lab-reboot.ufs-reboot.driver-load",
                "icelab.lab-reboot.ufs-reboot.key-usage",
            ]
        );
        assert_eq!(doc.tests[0].id, "icelab:0000000000c0ffee-1700000000/ufs/0");
        assert_eq!(
            doc.tests[4].id,
            "icelab:0000000000c0ffee-1700000000/ufs-reboot/0"
        );
        // The same run gives the same document.
        assert_eq!(doc, document(&run(&boots, &results)));

        let statuses: Vec<Option<Status>> = doc.tests.iter().map(|t| t.status).collect();
        use Status::{Fail, Pass, Skip};
        assert_eq!(
            statuses,
            [Pass, Fail, Pass, Fail, Pass, Skip].map(Some).to_vec()
        );
        assert_eq!(doc.tests[1].duration, Some(1.5));
        assert_eq!(doc.tests[2].duration, None, "an untimed host check");
        assert_eq!(doc.tests[0].log_excerpt, None);
        assert_eq!(
            doc.tests[1].log_excerpt.as_deref(),
            Some("ENOKEY\u{fffd} after add_key")
        );
        assert_eq!(
            doc.tests[3].comment.as_deref(),
            Some("ufs/trace/path-selection")
        );
        let environment = doc.tests[0].environment.as_ref().expect("an environment");
        assert_eq!(
            environment.comment.as_deref(),
            Some("QEMU TCG, icelab serve --queues 2 --profile ufs")
        );
        let misc = doc.tests[0].misc.as_ref().expect("misc");
        assert_eq!(misc.source, "guest");
        assert_eq!(misc.seed, "0000000000c0ffee");
        assert_eq!(misc.boot_seed.as_deref(), Some("0000000000001111"));
        assert_eq!(misc.facts, Some(json!({"slots": 32})));
        let large = doc.tests[3].misc.as_ref().expect("misc");
        assert_eq!(large.facts, None);
        assert!(
            large
                .facts_omitted_bytes
                .is_some_and(|n| n > FACTS_MAX_BYTES)
        );
        assert_eq!(
            doc.tests[2].misc.as_ref().and_then(|m| m.facts.clone()),
            None
        );
    }

    #[test]
    fn a_long_message_is_cut_to_the_schema_limit() {
        let (boots, results) = synthetic();
        let doc = document(&run(&boots, &results));
        let excerpt = doc.tests[3].log_excerpt.as_deref().expect("an excerpt");
        assert_eq!(excerpt.chars().count(), LOG_EXCERPT_MAX_CHARS);
        assert!(excerpt.ends_with(TRUNCATED));
        // Counted in characters, as JSON Schema counts them, not bytes.
        let wide = "é".repeat(LOG_EXCERPT_MAX_CHARS);
        assert_eq!(log_excerpt(&wide), wide);
        let wider = format!("{wide}é");
        assert_eq!(log_excerpt(&wider).chars().count(), LOG_EXCERPT_MAX_CHARS);
    }

    #[test]
    fn names_map_to_path_nodes() {
        assert_eq!(path_nodes("driver-load"), "driver-load");
        assert_eq!(path_nodes("trace/path-selection"), "trace.path-selection");
        assert_eq!(path_nodes("v1.2 check"), "v1_2_check");
        assert_eq!(path_nodes(""), "_");
        assert_eq!(path_nodes("/a//b/"), "_.a._.b._");
        for name in ["", "a", "x/y", "/", "ü", "a.b", "a b/c:d", "--"] {
            assert!(matches_path_pattern(&path_nodes(name)), "{name:?}");
        }
        assert!(!matches_path_pattern("a..b"));
        assert!(!matches_path_pattern("a/b"));
        assert!(matches_path_pattern(""));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |seconds: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(seconds));
        // Expected values from `date -u -d @SECONDS +%Y-%m-%dT%H:%M:%S`.
        assert_eq!(at(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000+00:00");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000000+00:00");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20.000000+00:00");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59.000000+00:00");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00.000000+00:00");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_nanos(1_500_123_456)),
            "1970-01-01T00:00:01.500123+00:00"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59.000000+00:00"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(86_400_000_250)),
            "1967-04-06T23:59:59.750000+00:00"
        );
    }

    #[test]
    fn the_document_round_trips_through_json() {
        let (boots, results) = synthetic();
        let doc = document(&run(&boots, &results));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("kcidb.json");
        write(&path, &doc).expect("written");
        let text = std::fs::read_to_string(&path).expect("readable");
        let back: Document = serde_json::from_str(&text).expect("a document");
        assert_eq!(back, doc);
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["version"], json!({"major": 5, "minor": 3}));
        assert_eq!(value["tests"][1]["status"], "FAIL");
        assert_eq!(value["tests"][5]["status"], "SKIP");
        assert!(value["tests"][0].get("log_excerpt").is_none(), "no nulls");

        let error = write(&dir.path().join("no/such/dir.json"), &doc).expect_err("no directory");
        assert!(
            format!("{error:#}").contains("no/such/dir.json"),
            "{error:#}"
        );
    }
}
