//! The policy matrix (`matrix` tests, the first part of the lab suite):
//! ext4 with `encrypt,stable_inodes` mounted `-o inlinecrypt`, then one
//! test per policy × data unit size of [`plan::CASES`], each with its own
//! master key and directory, writing files of every size and shape,
//! reading them back from the disk, and reporting the `manifest` facts
//! the host's verifier checks the image against.
//!
//! | test | checks |
//! |---|---|
//! | `driver-load`, `crypto-sysfs` | as in the smoke suite |
//! | `mkfs-mount` | `mkfs.ext4 -O encrypt,stable_inodes -b 4096`; both features in the superblock; mounted with `inlinecrypt` |
//! | `policy/<scheme>-dus<N>` | key from the seed added; v2 policy set and read back identical (dir and every file, incl. `log2_data_unit_size`); files 0, 1, 4095, 4096, 4097 B, `big` (2 or 3 MiB + a partial unit), `sparse`, `direct` (O_DIRECT), `overwrite`, `trunc-extend` written and fsynced; after sync + drop_caches every byte reads back as expected |
//! | `policy/lblk64-dus512-rejected` | the kernel refuses IV_INO_LBLK_64 with 512 B units on ext4 (2^35 units in its largest file > 2^32): EINVAL and the warning in the kernel log |
//! | `policy/lblk32-dus1024-rejected` | the kernel refuses IV_INO_LBLK_32 with sub-block data units: EINVAL and the warning |
//! | `unmount` | every key the suite added removed (absent afterwards, no files busy); unmounted |

use std::fs::{self, File};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::files;
use super::plan::{self, Case, Scheme};
use crate::data;
use crate::fscrypt::{self, FscryptPolicyV2, KeyIdentifier, MasterKey};
use crate::kmsg;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, TestFn, fail};
use crate::suites::{smoke, steps};
use crate::sys;
use icelab_contract::record::FACT_MANIFEST;

/// `driver-load` (smoke's).
pub const DRIVER_LOAD: TestDef = TestDef {
    name: "driver-load",
    timeout: Duration::from_secs(90),
    needs: &[],
    fatal: true,
    run: smoke::driver_load,
};

/// `crypto-sysfs` (smoke's).
pub const CRYPTO_SYSFS: TestDef = TestDef {
    name: "crypto-sysfs",
    timeout: Duration::from_secs(10),
    needs: &[],
    fatal: false,
    run: smoke::crypto_sysfs,
};

/// `mkfs-mount`: a fresh filesystem for the IV_INO_LBLK_* policies too.
pub const MKFS_MOUNT: TestDef = TestDef {
    name: "mkfs-mount",
    timeout: Duration::from_secs(120),
    needs: &[],
    fatal: false,
    run: mkfs_mount,
};

/// `unmount`: removes every key the suite added, unmounts. No `needs`:
/// it cleans up after failures too.
pub const UNMOUNT: TestDef = TestDef {
    name: "unmount",
    timeout: Duration::from_secs(60),
    needs: &[],
    fatal: false,
    run: unmount,
};

/// The deadline of one policy test (before `icelab.timeout_factor`).
const POLICY_TIMEOUT: Duration = Duration::from_secs(240);

const fn policy_def(i: usize, run: TestFn) -> TestDef {
    TestDef {
        name: plan::CASES[i].name,
        timeout: POLICY_TIMEOUT,
        needs: &["mkfs-mount"],
        fatal: false,
        run,
    }
}

/// One test per [`plan::CASES`] entry (accepted and rejected), in order.
/// The length is the plan's: a case added there without its test here
/// does not compile. The lab tables include the whole array.
pub const POLICY_TESTS: [TestDef; plan::CASES.len()] = [
    policy_def(0, policy_test::<0>),
    policy_def(1, policy_test::<1>),
    policy_def(2, policy_test::<2>),
    policy_def(3, policy_test::<3>),
    policy_def(4, policy_test::<4>),
    policy_def(5, policy_test::<5>),
    policy_def(6, policy_test::<6>),
];

/// The ext4 features the matrix formats with: IV_INO_LBLK_* policies
/// derive keys and DUNs from inode numbers, which `stable_inodes` keeps
/// from changing (fscrypt refuses those policies without it).
pub const MKFS_FEATURES: &str = "encrypt,stable_inodes";

fn mkfs_mount(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let disk = &ctx.config.disk;
    steps::mkfs_ext4_features(ctx, disk, MKFS_FEATURES, facts)?;
    mount_checked(ctx, state, facts)
}

/// Mounts the existing filesystem with the configured data (default
/// `inlinecrypt`), checks the options and features; shared with
/// `mount-existing` of the second boot.
pub fn mount_checked(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    let uuid = steps::read_ext4_uuid(&config.disk)?;
    facts.set("fs_uuid", uuid.clone());
    files::check_features(&config.disk)?;
    facts.set("features", MKFS_FEATURES);
    let options = steps::mount_configured(ctx, state, facts)?;
    Ok(format!("ext4 {uuid} mounted with {options}"))
}

/// Adds the master key named `name` (generated from the run's seed) to
/// the filesystem of `dir`; remembers it for `unmount`.
pub fn add_seeded_key(
    state: &mut State,
    dir: &File,
    shown: &str,
    name: &str,
    facts: &mut Facts,
) -> Result<(KeyIdentifier, u64), Failure> {
    let key_seed = data::key_seed(state.seed, name);
    let key = MasterKey::from_seed(key_seed);
    let id = fscrypt::add_key(dir, shown, &key)?;
    drop(key);
    if !state.keys.contains(&id) {
        state.keys.push(id);
    }
    facts
        .set("key_name", name)
        .set("key_identifier", id.to_hex());
    Ok((id, key_seed))
}

/// Facts describing a policy.
pub fn policy_facts(p: &FscryptPolicyV2) -> Value {
    json!({
        "flags": format!("{:#04x}", p.flags),
        "log2_data_unit_size": p.log2_data_unit_size,
        "master_key_identifier": data::hex(&p.master_key_identifier),
    })
}

/// Checks that `file` has exactly `want` as its policy.
pub fn check_policy(file: &File, shown: &str, want: &FscryptPolicyV2) -> Result<(), Failure> {
    let got = fscrypt::get_policy(file, shown)?;
    if got != *want {
        return fail(format!(
            "{shown} has policy {}, expected {}",
            policy_facts(&got),
            policy_facts(want)
        ));
    }
    Ok(())
}

/// Which blk-crypto implementation the case should get on this device,
/// from the disk's crypto capabilities; records `dun_bytes`,
/// `device_max_dun_bits` and `expected_path`.
pub fn expected_path(ctx: &Ctx, case: &Case, facts: &mut Facts) -> &'static str {
    let dir = Path::new("/sys/block")
        .join(ctx.config.disk_name())
        .join("queue/crypto");
    let (bits, modes) = steps::read_crypto_sysfs(&dir)
        .map(|c| {
            let modes = c.modes.get(steps::AES_256_XTS).copied().unwrap_or(0);
            (c.max_dun_bits, modes)
        })
        .unwrap_or((0, 0));
    let path = if case.native_on(bits, modes) {
        "native"
    } else {
        "fallback"
    };
    facts
        .set("profile", ctx.config.profile.name())
        .set("scheme", scheme_name(case.scheme))
        .set("data_unit_size", case.data_unit_size())
        .set("dun_bytes", case.dun_bytes())
        .set("device_max_dun_bits", bits)
        .set("expected_path", path);
    path
}

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::PerFile => "per-file keys",
        Scheme::Lblk64 => "IV_INO_LBLK_64",
        Scheme::Lblk32 => "IV_INO_LBLK_32",
    }
}

fn policy_test<const I: usize>(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    run_case(ctx, state, facts, &plan::CASES[I])
}

fn run_case(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
    case: &Case,
) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mkfs-mount failed)");
    }
    let mnt = &ctx.config.mountpoint;
    let dir = mnt.join(case.name);
    let shown = dir.display().to_string();
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Failure(format!("cannot create {}: {e}", parent.display())))?;
    }
    fs::create_dir(&dir).map_err(|e| Failure(format!("cannot create {shown}: {e}")))?;
    let dir_file = File::open(&dir).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    ctx.step("FS_IOC_ADD_ENCRYPTION_KEY");
    let (id, key_seed) = add_seeded_key(state, &dir_file, &shown, case.name, facts)?;
    let policy = case.policy(&id);
    facts.set("policy", policy_facts(&policy));

    ctx.step("FS_IOC_SET_ENCRYPTION_POLICY");
    if let Some(warning) = case.refusal() {
        return expect_rejected(&dir_file, &shown, &policy, warning, facts);
    }
    let path = expected_path(ctx, case, facts);
    fscrypt::set_policy(&dir_file, &shown, &policy)?;
    check_policy(&dir_file, &shown, &policy)?;

    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    let specs = case.files();
    let mut entries = Vec::new();
    let mut misaligned = None;
    for spec in &specs {
        let file_path = dir.join(spec.leaf);
        let file_shown = file_path.display().to_string();
        ctx.step(format!("writing {file_shown}"));
        let seed = data::content_seed(state.seed, &case.file_name(spec));
        let (file, notes) = files::write(&file_path, spec, seed)?;
        misaligned = misaligned.or(notes.misaligned_direct_write);
        check_policy(&file, &file_shown, &policy)?;
        let meta = file
            .metadata()
            .map_err(|e| Failure(format!("fstat {file_shown}: {e}")))?;
        if meta.len() != spec.size {
            return fail(format!(
                "{file_shown} is {} bytes, expected {}",
                meta.len(),
                spec.size
            ));
        }
        entries.push(files::manifest_entry(case, spec, key_seed, seed, &meta));
        // Reported as soon as known: a later failure still leaves the
        // files written so far checkable.
        facts.set(FACT_MANIFEST, files::manifest_fact(&uuid, &entries));
    }
    if let Some(m) = misaligned {
        facts.set("direct_write_at_512", m);
    }

    ctx.step("sync and drop_caches");
    steps::sync_and_drop_caches()?;
    let dus = case.data_unit_size();
    for spec in &specs {
        let file_path = dir.join(spec.leaf);
        ctx.step(format!("reading {}", file_path.display()));
        let seed = data::content_seed(state.seed, &case.file_name(spec));
        files::read_back(&file_path, spec, seed, dus)?;
    }
    let units = case.data_units();
    facts.set("data_units", units);
    Ok(format!(
        "{} files, {units} data units of {dus} B read back identical ({}, {} DUN bytes, {path})",
        specs.len(),
        scheme_name(case.scheme),
        case.dun_bytes()
    ))
}

/// A policy the kernel must refuse: EINVAL, with fscrypt's warning in the
/// kernel log naming the reason.
fn expect_rejected(
    dir: &File,
    shown: &str,
    policy: &FscryptPolicyV2,
    warning: &str,
    facts: &mut Facts,
) -> Result<String, Failure> {
    let errno = match fscrypt::set_policy(dir, shown, policy) {
        Ok(()) => {
            return fail(format!(
                "the kernel accepted {} on {shown}; expected EINVAL",
                policy_facts(policy)
            ));
        }
        Err(e) => e.source.raw_os_error().unwrap_or(0),
    };
    facts.set("errno", sys::Errno(errno).name());
    if errno != libc::EINVAL {
        return fail(format!(
            "FS_IOC_SET_ENCRYPTION_POLICY failed with {}, expected EINVAL",
            sys::Errno(errno)
        ));
    }
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let Some(line) = records.iter().find(|r| r.text.contains(warning)) else {
        return fail(format!(
            "EINVAL, but the kernel log has no {warning:?}: refused for another reason?"
        ));
    };
    facts.set("kernel_log", line.text.clone());
    Ok(format!("EINVAL as expected; kernel: ...{warning}"))
}

/// `unmount`: removes every key the suite added (a key another test
/// already removed is noted, not an error), then unmounts.
pub fn unmount(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let mnt = &ctx.config.mountpoint;
    let shown = mnt.display().to_string();
    if !state.mounted {
        return fail(format!("not run: nothing is mounted at {shown}"));
    }
    let root = File::open(mnt).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    let keys: Vec<KeyIdentifier> = state
        .key
        .take()
        .into_iter()
        .chain(state.keys.drain(..))
        .collect();
    let (mut removed, mut gone, mut busy) = (0, 0, Vec::new());
    for id in &keys {
        ctx.step(format!("FS_IOC_REMOVE_ENCRYPTION_KEY {}", id.to_hex()));
        match fscrypt::remove_key(&root, &shown, id) {
            Ok(flags) if flags & fscrypt::FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY != 0 => {
                busy.push(id.to_hex());
            }
            Ok(_) => removed += 1,
            Err(e) if e.source.raw_os_error() == Some(libc::ENOKEY) => gone += 1,
            Err(e) => return Err(e.into()),
        }
        let (status, _, _) = fscrypt::key_status(&root, &shown, id)?;
        if status != fscrypt::FSCRYPT_KEY_STATUS_ABSENT && busy.last() != Some(&id.to_hex()) {
            return fail(format!(
                "key {} has status {status} after removal, expected 1 (absent)",
                id.to_hex()
            ));
        }
    }
    facts
        .set("keys_removed", removed)
        .set("keys_already_gone", gone)
        .set("keys_busy", busy.clone());
    drop(root);
    if !busy.is_empty() {
        return fail(format!(
            "removing keys {} left files busy: some file is still open",
            busy.join(", ")
        ));
    }
    ctx.step(format!("umount {shown}"));
    sys::umount(mnt)?;
    state.mounted = false;
    Ok(format!(
        "{removed} keys removed ({gone} already gone), {shown} unmounted"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_tests_follow_the_plan() {
        assert_eq!(POLICY_TESTS.len(), plan::CASES.len());
        for (t, c) in POLICY_TESTS.iter().zip(plan::CASES) {
            assert_eq!(t.name, c.name);
            assert_eq!(t.needs, ["mkfs-mount"]);
        }
    }

    #[test]
    fn policy_facts_show_flags_in_hex() {
        let p = plan::CASES[3].policy(&KeyIdentifier([2; 16]));
        let f = policy_facts(&p);
        assert_eq!(f["flags"], "0x0b");
        assert_eq!(f["master_key_identifier"], "02".repeat(16));
    }
}
