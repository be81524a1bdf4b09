//! `path-selection`: the engine's capabilities decide, per policy, whether
//! fscrypt uses the device (native blk-crypto) or blk-crypto-fallback.
//!
//! fscrypt asks blk-crypto for a key with as many DUN bytes as the policy
//! needs (fs/crypto/inline_crypt.c, fscrypt_get_dun_bytes()): 8 for
//! IV_INO_LBLK_64 (inode << 32 | block), 4 for IV_INO_LBLK_32, and for
//! per-file keys enough for the largest file's data unit index (4 with
//! 4 KiB data units on ext4). A UFS engine takes 8 DUN bytes, so all three
//! are native; an eMMC engine takes 4, so IV_INO_LBLK_64 falls back.
//!
//! The test writes and reads files under each policy between marks
//! (`path/<policy>/start..end`), so the host can see in the device trace
//! which windows programmed keys and with how many DUN bytes
//! (`trace/path-selection`); here it checks fscrypt's own log lines
//! (`fscrypt: AES-256-XTS using blk-crypto (native)` or `... using
//! blk-crypto-fallback`), which fscrypt logs once per boot each.
//!
//! Also the helpers the other key tests share: a directory with a seeded
//! key and a policy, files written and read back with manifest entries.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::files;
use super::matrix::{add_seeded_key, check_policy};
use super::plan::{Case, FileSpec, Scheme, Shape};
use crate::cmdline::{Expect, Profile};
use crate::data;
use crate::fscrypt::KeyIdentifier;
use crate::kmsg;
use crate::marks;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;
use icelab_contract::manifest::FileEntry;
use icelab_contract::record::FACT_MANIFEST;

/// `path-selection`.
pub const PATH_SELECTION: TestDef = TestDef {
    name: "path-selection",
    timeout: Duration::from_secs(240),
    needs: &["mkfs-mount"],
    fatal: false,
    run: path_selection,
};

/// A policy directory of the key tests: a [`Case`] that is not part of
/// the matrix (its name is its directory and its key's name).
pub const fn case(name: &'static str, scheme: Scheme) -> Case {
    Case {
        name,
        scheme,
        log2_dus: 0,
        big: 0,
        rejected: false,
    }
}

/// A whole file written in one go.
pub const fn whole(leaf: &'static str, size: u64) -> FileSpec {
    FileSpec {
        leaf,
        size,
        shape: Shape::Whole,
    }
}

/// A directory with its own seeded master key and `case`'s policy.
pub struct PolicyDir {
    /// The directory.
    pub path: PathBuf,
    /// The key's identifier.
    pub id: KeyIdentifier,
    /// The key's seed (for the manifest).
    pub key_seed: u64,
}

/// Creates `case.name` under the mount point, adds its key (remembered in
/// `state.keys` for `unmount`) and sets the policy.
pub fn policy_dir(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
    case: &Case,
) -> Result<PolicyDir, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mkfs-mount failed)");
    }
    let path = ctx.config.mountpoint.join(case.name);
    let shown = path.display().to_string();
    fs::create_dir_all(&path).map_err(|e| Failure(format!("cannot create {shown}: {e}")))?;
    let dir = File::open(&path).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    ctx.step(format!("FS_IOC_ADD_ENCRYPTION_KEY for {shown}"));
    let mut key_facts = Facts::new();
    let (id, key_seed) = add_seeded_key(state, &dir, &shown, case.name, &mut key_facts)?;
    let policy = case.policy(&id);
    ctx.step(format!("FS_IOC_SET_ENCRYPTION_POLICY on {shown}"));
    crate::fscrypt::set_policy(&dir, &shown, &policy)?;
    check_policy(&dir, &shown, &policy)?;
    facts.set(&format!("key/{}", case.name), json!(id.to_hex()));
    Ok(PolicyDir { path, id, key_seed })
}

/// Writes `specs` into `dir` (fsynced) and appends their manifest entries.
pub fn write_files(
    ctx: &Ctx,
    state: &State,
    case: &Case,
    dir: &PolicyDir,
    specs: &[FileSpec],
    manifest: &mut Vec<FileEntry>,
) -> Result<(), Failure> {
    for spec in specs {
        let path = dir.path.join(spec.leaf);
        let shown = path.display().to_string();
        ctx.step(format!("writing {shown}"));
        let seed = data::content_seed(state.seed, &case.file_name(spec));
        let (file, _) = files::write(&path, spec, seed)?;
        let meta = file
            .metadata()
            .map_err(|e| Failure(format!("fstat {shown}: {e}")))?;
        manifest.push(files::manifest_entry(case, spec, dir.key_seed, seed, &meta));
    }
    Ok(())
}

/// Reads `specs` back from `dir` and compares them.
pub fn read_files(
    ctx: &Ctx,
    state: &State,
    case: &Case,
    dir: &Path,
    specs: &[FileSpec],
) -> Result<(), Failure> {
    for spec in specs {
        let path = dir.join(spec.leaf);
        ctx.step(format!("reading {}", path.display()));
        let seed = data::content_seed(state.seed, &case.file_name(spec));
        files::read_back(&path, spec, seed, case.data_unit_size())?;
    }
    Ok(())
}

/// Sets `facts["manifest"]` to `entries` on the disk's filesystem.
pub fn set_manifest(ctx: &Ctx, facts: &mut Facts, entries: &[FileEntry]) -> Result<(), Failure> {
    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    facts.set(FACT_MANIFEST, files::manifest_fact(&uuid, entries));
    Ok(())
}

/// The policies of the test, in the order they run: under eMMC the
/// native one first, so that fscrypt's once-per-boot "native" line (if
/// no earlier test logged it) comes from IV_INO_LBLK_32 and the
/// "fallback" line from IV_INO_LBLK_64.
const CASES: [(&str, Case); 3] = [
    ("default", case("path/default", Scheme::PerFile)),
    ("lblk32", case("path/lblk32", Scheme::Lblk32)),
    ("lblk64", case("path/lblk64", Scheme::Lblk64)),
];

/// Files per policy: a partial block and several blocks.
const FILES: [FileSpec; 2] = [whole("small", 1000), whole("blocks", 5 * 4096 + 7)];

/// The kernel log's fscrypt lines so far: (seq of the native line, seq of
/// the fallback line).
fn impl_lines() -> Result<(Option<u64>, Option<u64>), Failure> {
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let found = steps::find_impl_lines(&records, steps::AES_256_XTS, Expect::Native);
    Ok((found.expected.map(|r| r.seq), found.other.map(|r| r.seq)))
}

fn path_selection(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let profile = ctx.config.profile;
    facts.set("profile", profile.name());
    // Nothing of earlier tests may still be on its way to the disk: only
    // this test's I/O programs keys inside its windows.
    steps::sync_and_drop_caches()?;
    let before = impl_lines()?;
    facts.set(
        "log_before",
        json!({"native_seq": before.0, "fallback_seq": before.1}),
    );
    let mut manifest = Vec::new();
    let mut after = Vec::new();
    for (label, case) in &CASES {
        let dir = policy_dir(ctx, state, facts, case)?;
        marks::mark(ctx, facts, &marks::path(label, marks::PathEdge::Start))?;
        write_files(ctx, state, case, &dir, &FILES, &mut manifest)?;
        steps::sync_and_drop_caches()?;
        read_files(ctx, state, case, &dir.path, &FILES)?;
        marks::mark(ctx, facts, &marks::path(label, marks::PathEdge::End))?;
        set_manifest(ctx, facts, &manifest)?;
        let lines = impl_lines()?;
        after.push(json!({"after": label, "native_seq": lines.0, "fallback_seq": lines.1}));
        facts.set("log_after", after.clone());
        check_log(profile, label, before, lines)?;
    }
    Ok(match profile {
        Profile::Ufs => "ufs: default, IV_INO_LBLK_32 and IV_INO_LBLK_64 files read back; \
                         the kernel logged native blk-crypto and never the fallback"
            .to_owned(),
        Profile::Emmc => "emmc: files of all three policies read back; the kernel logged \
                          native blk-crypto and blk-crypto-fallback (IV_INO_LBLK_64)"
            .to_owned(),
    })
}

/// fscrypt's log lines after the `label` policy's window, given what was
/// logged before the test (`before`) and now (`now`): (native, fallback)
/// sequence numbers.
pub fn check_log(
    profile: Profile,
    label: &str,
    before: (Option<u64>, Option<u64>),
    now: (Option<u64>, Option<u64>),
) -> Result<(), Failure> {
    let (native, fallback) = now;
    if native.is_none() {
        return fail(format!(
            "after the {label} files no \"fscrypt: AES-256-XTS using blk-crypto (native)\" in the \
             kernel log: fscrypt did not use the engine"
        ));
    }
    match (profile, label) {
        (Profile::Ufs, _) => {
            if let Some(seq) = fallback {
                return fail(format!(
                    "ufs (8 DUN bytes) needs no fallback, but the kernel logged \
                     blk-crypto-fallback (record {seq}) by the end of the {label} files"
                ));
            }
        }
        (Profile::Emmc, "lblk64") => {
            if fallback.is_none() {
                return fail(
                    "emmc (4 DUN bytes): IV_INO_LBLK_64 needs 8, but the kernel never logged \
                     blk-crypto-fallback: it cannot have been native",
                );
            }
        }
        (Profile::Emmc, _) => {
            // Without an earlier fallback, these policies must not cause one.
            if before.1.is_none()
                && let Some(seq) = fallback
            {
                return fail(format!(
                    "emmc: the {label} policy fits 4 DUN bytes, but the kernel logged \
                     blk-crypto-fallback (record {seq}) while it was used"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_checks_fail_both_ways() {
        let none = (None, None);
        assert!(check_log(Profile::Ufs, "lblk64", none, (Some(5), None)).is_ok());
        assert!(check_log(Profile::Ufs, "lblk64", none, (Some(5), Some(9))).is_err());
        assert!(check_log(Profile::Ufs, "default", none, (None, None)).is_err());
        assert!(check_log(Profile::Emmc, "lblk32", none, (Some(5), None)).is_ok());
        assert!(check_log(Profile::Emmc, "lblk32", none, (Some(5), Some(6))).is_err());
        // An earlier test's fallback (e.g. 512-byte data units) is no
        // evidence against LBLK_32.
        assert!(
            check_log(
                Profile::Emmc,
                "lblk32",
                (Some(1), Some(2)),
                (Some(1), Some(2))
            )
            .is_ok()
        );
        assert!(check_log(Profile::Emmc, "lblk64", none, (Some(5), None)).is_err());
        assert!(check_log(Profile::Emmc, "lblk64", none, (Some(5), Some(7))).is_ok());
    }

    #[test]
    fn emmc_order_is_native_first() {
        let labels: Vec<&str> = CASES.iter().map(|c| c.0).collect();
        assert_eq!(labels, ["default", "lblk32", "lblk64"]);
        for (label, case) in &CASES {
            assert!(case.name.ends_with(label));
        }
        assert_eq!(CASES[1].1.dun_bytes(), 4);
        assert_eq!(CASES[2].1.dun_bytes(), 8);
        assert!(CASES[1].1.native_on(32, 0x1e00));
        assert!(!CASES[2].1.native_on(32, 0x1e00));
    }
}
