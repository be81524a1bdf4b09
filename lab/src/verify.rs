//! The verifier step of a lab boot: merge the manifests the guest's tests
//! reported, run the independent verifier (`icelab-verifier`) on the image
//! after the device exited, and turn its report into the boot's `verify`
//! result.
//!
//! Merging follows the contract (guest-tests/README.md): every test may put
//! a `"manifest"` object into its facts; all `fs_uuid`s of a boot must be
//! equal; for the same inode the last entry wins (a test that rewrote a
//! file lists it again in its final state). A boot on the same image as an
//! earlier boot (`ufs-reboot`) starts from that boot's merged manifest, so
//! the files of the first boot are checked again after the second.

use super::report::TestResult;
use icelab_verifier::manifest::{FileEntry, PlainFile};
use icelab_verifier::{Manifest, Report};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The manifests of one image, merged.
#[derive(Clone, Debug, Default)]
pub struct MergedManifest {
    /// The file system's UUID as the guest saw it, once any test said.
    fs_uuid: Option<String>,
    /// By inode: the last entry listed and the test that listed it.
    files: BTreeMap<u64, (FileEntry, String)>,
    /// Unencrypted files with known contents, by inode (the last entry).
    plain_files: BTreeMap<u64, PlainFile>,
}

/// A manifest that cannot be merged.
#[derive(Debug, PartialEq, Eq)]
pub enum MergeError {
    /// The `manifest` fact does not fit the manifest's schema.
    Shape {
        /// The test that reported it.
        test: String,
        /// What does not fit.
        why: String,
    },
    /// Two tests saw different file systems.
    Uuid {
        /// The test that reported it.
        test: String,
        /// Its UUID.
        theirs: String,
        /// The UUID seen before.
        ours: String,
    },
}

impl std::fmt::Display for MergeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shape { test, why } => write!(
                f,
                "test {test}: the `manifest` fact does not fit the manifest schema: {why}"
            ),
            Self::Uuid { test, theirs, ours } => write!(
                f,
                "test {test}: fs_uuid {theirs} differs from {ours} of earlier tests on the same image"
            ),
        }
    }
}

impl std::error::Error for MergeError {}

impl MergedManifest {
    /// Adds the manifest a guest test reported in its facts (the
    /// serialization boundary: JSON in, [`Manifest`] out).
    pub fn add_fact(&mut self, test: &str, fact: &Value) -> Result<(), MergeError> {
        let manifest = Manifest::deserialize(fact).map_err(|error| MergeError::Shape {
            test: test.to_owned(),
            why: error.to_string(),
        })?;
        self.add(test, manifest)
    }

    /// Adds the manifest `test` reported; later entries for an inode
    /// replace earlier ones.
    pub fn add(&mut self, test: &str, manifest: Manifest) -> Result<(), MergeError> {
        if let Some(uuid) = manifest.fs_uuid {
            match &self.fs_uuid {
                Some(ours) if !ours.eq_ignore_ascii_case(&uuid) => {
                    return Err(MergeError::Uuid {
                        test: test.to_owned(),
                        theirs: uuid,
                        ours: ours.clone(),
                    });
                }
                Some(_) => {}
                None => self.fs_uuid = Some(uuid),
            }
        }
        for file in manifest.files {
            self.files.insert(file.inode, (file, test.to_owned()));
        }
        for file in manifest.plain_files {
            self.plain_files.insert(file.inode, file);
        }
        Ok(())
    }

    /// The name the manifest gives `inode`, if any.
    pub fn name(&self, inode: u64) -> Option<&str> {
        self.files.get(&inode)?.0.name.as_deref()
    }

    /// Number of distinct files listed.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no test listed a file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The merged manifest.
    pub fn to_manifest(&self) -> Manifest {
        Manifest {
            fs_uuid: self.fs_uuid.clone(),
            files: self.files.values().map(|(file, _)| file.clone()).collect(),
            plain_files: self.plain_files.values().cloned().collect(),
        }
    }
}

/// The verifier's totals, per boot and summed over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Files checked.
    pub files: u64,
    /// Data units checked.
    pub data_units: u64,
    /// Data units that were not the expected ciphertext.
    pub mismatches: u64,
    /// Plaintext data units found on the image.
    pub plaintext_hits: u64,
    /// Files that could not be checked as stated.
    pub problems: u64,
}

impl Totals {
    /// The totals of one report.
    pub fn of(report: &Report) -> Self {
        Self {
            files: report.files,
            data_units: report.data_units_checked,
            mismatches: report.mismatch_count,
            plaintext_hits: report.plaintext_hit_count,
            problems: report.problems.len() as u64,
        }
    }

    /// Adds `other` to these totals.
    pub fn add(&mut self, other: Totals) {
        self.files += other.files;
        self.data_units += other.data_units;
        self.mismatches += other.mismatches;
        self.plaintext_hits += other.plaintext_hits;
        self.problems += other.problems;
    }

    /// As a JSON object (also the `verify` result's facts).
    pub fn to_json(self) -> Value {
        json!({
            "files": self.files,
            "data_units": self.data_units,
            "mismatches": self.mismatches,
            "plaintext_hits": self.plaintext_hits,
            "problems": self.problems,
        })
    }

    /// `verifier: 12 files, 3456 data units, 0 mismatches, 0 plaintext hits`
    /// (and the problems, when there are any).
    pub fn line(self) -> String {
        let mut line = format!(
            "verifier: {} files, {} data units, {} mismatches, {} plaintext hits",
            self.files, self.data_units, self.mismatches, self.plaintext_hits
        );
        if self.problems > 0 {
            line.push_str(&format!(", {} problems", self.problems));
        }
        line
    }
}

/// Lines of the verifier's itemised findings a failing `verify` result
/// quotes; the JSON report has them all.
const QUOTED_FINDINGS: usize = 20;

/// The outcome of the verifier step of one boot.
pub struct Verification {
    /// The `verify` result.
    pub result: TestResult,
    /// The verifier's report, when it ran.
    pub report: Option<Report>,
}

/// Runs the verifier on `image` against `merged` and makes the `verify`
/// result of `boot`. `guest_completed` false: the files may not be in
/// their final state, so the verifier does not run (the boot already has
/// a failing `guest-completes`).
pub fn verify(
    boot: &str,
    image: &Path,
    merged: &MergedManifest,
    merge_errors: &[MergeError],
    guest_completed: bool,
    default_key: Option<&[u8; 64]>,
) -> Verification {
    let fail = |message: String| Verification {
        result: TestResult::host(boot, "verify", false, message, Value::Null),
        report: None,
    };
    if !merge_errors.is_empty() {
        let errors: Vec<String> = merge_errors.iter().map(ToString::to_string).collect();
        return fail(format!(
            "the guest's manifests do not merge: {}",
            errors.join("; ")
        ));
    }
    if !guest_completed {
        return fail(
            "not run: the guest did not finish cleanly (see guest-completes), so its files may \
             not be in their final state"
                .to_owned(),
        );
    }
    if merged.is_empty() {
        return fail(
            "the guest listed no files (no test's facts had a `manifest`); nothing to verify"
                .to_owned(),
        );
    }
    let manifest = merged.to_manifest();
    // With a default key, the decrypted view goes next to the image.
    let view_dir = image.parent().unwrap_or(Path::new("."));
    let verified = match default_key {
        None => icelab_verifier::verify(image, &manifest),
        Some(key) => icelab_verifier::default_key::verify_with_default_key_in(
            image, &manifest, key, view_dir,
        ),
    };
    let report = match verified {
        Ok(report) => report,
        Err(error) => {
            let chain = anyhow::Error::from(error);
            return fail(format!("cannot verify {}: {chain:#}", image.display()));
        }
    };
    let totals = Totals::of(&report);
    let message = if report.passed() {
        String::new()
    } else {
        quote(&report, merged)
    };
    let mut facts = totals.to_json();
    if let Some(default_key) = &report.default_key {
        facts["default_key"] = serde_json::to_value(default_key).unwrap_or(Value::Null);
    }
    facts["plain_file_units_checked"] = report.plain_file_units_checked.into();
    Verification {
        result: TestResult::host(boot, "verify", report.passed(), message, facts),
        report: Some(report),
    }
}

/// The report's text (problems, mismatches with inode, data unit, image
/// offset and digests, plaintext hits), cut to [`QUOTED_FINDINGS`] lines
/// plus its totals line; each inode is followed by the file's name from
/// the manifest, e.g. `inode 16 (policy/default-dus512/4097)`.
fn quote(report: &Report, merged: &MergedManifest) -> String {
    let text = report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let (findings, totals) = lines.split_at(lines.len().saturating_sub(1));
    let mut quoted: Vec<String> = findings
        .iter()
        .take(QUOTED_FINDINGS)
        .map(|line| name_inode(line, merged))
        .collect();
    if findings.len() > QUOTED_FINDINGS {
        quoted.push(format!(
            "... {} more findings in the JSON report",
            findings.len() - QUOTED_FINDINGS
        ));
    }
    quoted.extend(totals.iter().map(|l| (*l).to_owned()));
    quoted.join("\n")
}

/// `line` with its first `inode N` followed by the file's name, if the
/// manifest names it.
fn name_inode(line: &str, merged: &MergedManifest) -> String {
    let Some(at) = line.find("inode ") else {
        return line.to_owned();
    };
    let digits_at = at + "inode ".len();
    let digits = line[digits_at..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(&line[digits_at..], |end| &line[digits_at..digits_at + end]);
    match digits.parse::<u64>().ok().and_then(|ino| merged.name(ino)) {
        Some(name) => {
            let end = digits_at + digits.len();
            format!("{} ({name}){}", &line[..end], &line[end..])
        }
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(inode: u64, size: u64, seed: u64) -> Value {
        json!({
            "name": format!("f{inode}"),
            "inode": inode,
            "size": size,
            "master_key_hex": "00".repeat(64),
            "plaintext": {"generator": "splitmix64", "seed": seed},
        })
    }

    #[test]
    fn last_entry_per_inode_wins() {
        let mut merged = MergedManifest::default();
        merged
            .add_fact(
                "a",
                &json!({"fs_uuid": "U", "files": [file(12, 1, 1), file(13, 2, 2)]}),
            )
            .expect("merges");
        merged
            .add_fact("b", &json!({"fs_uuid": "u", "files": [file(12, 4097, 3)]}))
            .expect("same uuid, other case");
        merged
            .add_fact("c", &json!({"files": [file(14, 0, 4)]}))
            .expect("no uuid is fine");
        assert_eq!(merged.len(), 3);
        let manifest = merged.to_manifest();
        assert_eq!(manifest.fs_uuid.as_deref(), Some("U"));
        let twelve = manifest
            .files
            .iter()
            .find(|f| f.inode == 12)
            .expect("listed");
        assert_eq!(twelve.size, Some(4097));
    }

    #[test]
    fn bad_manifests_are_named() {
        let mut merged = MergedManifest::default();
        merged
            .add_fact("a", &json!({"fs_uuid": "U1", "files": []}))
            .expect("merges");
        assert_eq!(
            merged.add_fact("b", &json!({"fs_uuid": "U2", "files": []})),
            Err(MergeError::Uuid {
                test: "b".into(),
                theirs: "U2".into(),
                ours: "U1".into()
            })
        );
        for (test, fact) in [
            ("c", json!({"files": {}})),
            ("d", json!({"files": [{"name": "x"}]})),
            ("e", json!({"files": [{"inode": 5, "bogus": 1}]})),
        ] {
            let error = merged.add_fact(test, &fact).expect_err("does not fit");
            assert!(
                matches!(&error, MergeError::Shape { test: t, .. } if t == test),
                "{error}"
            );
        }
        assert_eq!(merged.len(), 0);
    }

    #[test]
    fn verify_refuses_what_it_cannot_check() {
        let image = Path::new("/nonexistent/disk.img");
        let empty = MergedManifest::default();
        let v = verify("ufs", image, &empty, &[], true, None);
        assert!(v.result.message.contains("listed no files"));
        assert!(v.report.is_none());
        let mut one = MergedManifest::default();
        one.add_fact("a", &json!({"files": [file(12, 1, 1)]}))
            .expect("merges");
        let v = verify("ufs", image, &one, &[], false, None);
        assert!(v.result.message.contains("not run"));
        let v = verify("ufs", image, &one, &[], true, None);
        assert_eq!(v.result.outcome, crate::report::Outcome::Fail);
        assert!(v.result.message.contains("/nonexistent/disk.img"));
        // Hardware-wrapped keys are verified like the others: the run
        // reaches the image (which does not exist here).
        let mut wrapped = file(13, 1, 1);
        let fields = wrapped.as_object_mut().expect("an object");
        fields.remove("master_key_hex");
        fields.insert("hw_wrapped_key_seed".into(), json!("00000000000000ff"));
        one.add_fact("b", &json!({"files": [wrapped]}))
            .expect("merges");
        let v = verify("wrapped", image, &one, &[], true, None);
        assert_eq!(v.result.outcome, crate::report::Outcome::Fail);
        assert!(v.result.message.contains("/nonexistent/disk.img"));
    }

    #[test]
    fn totals_line() {
        let mut t = Totals::default();
        t.add(Totals {
            files: 2,
            data_units: 10,
            mismatches: 1,
            plaintext_hits: 0,
            problems: 0,
        });
        t.add(Totals {
            files: 1,
            data_units: 5,
            ..Totals::default()
        });
        assert_eq!(
            t.line(),
            "verifier: 3 files, 15 data units, 1 mismatches, 0 plaintext hits"
        );
        t.problems = 2;
        assert!(t.line().ends_with(", 2 problems"));
    }

    #[test]
    fn quote_keeps_the_totals_line() {
        let report = Report {
            files: 1,
            data_units_checked: 30,
            mismatch_count: 30,
            mismatches: (0..30)
                .map(|i| icelab_verifier::Mismatch {
                    inode: 12,
                    data_unit: i,
                    image_offset: Some(4096 * i),
                    expected: "aa".into(),
                    actual: "bb".into(),
                })
                .collect(),
            ..Report::default()
        };
        let mut merged = MergedManifest::default();
        merged
            .add_fact("t", &json!({"files": [file(12, 1, 1)]}))
            .expect("merges");
        let q = quote(&report, &merged);
        assert_eq!(q.lines().count(), QUOTED_FINDINGS + 2);
        assert!(q.contains("inode 12 (f12) data unit 0 at image offset 0"));
        assert_eq!(
            name_inode("inode 7: wrong key", &merged),
            "inode 7: wrong key"
        );
        assert_eq!(
            name_inode("inode 12: wrong key", &merged),
            "inode 12 (f12): wrong key"
        );
        assert!(q.contains("10 more findings"));
        assert!(
            q.lines()
                .last()
                .is_some_and(|l| l.contains("30 mismatches"))
        );
    }
}
