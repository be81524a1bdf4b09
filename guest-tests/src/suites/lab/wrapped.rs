//! Hardware-wrapped keys (issue 12), end to end through a stock kernel:
//! blk-crypto's ioctls on the disk, fscrypt with
//! `FSCRYPT_ADD_KEY_FLAG_HW_WRAPPED`, key removal, and what a second boot
//! of the same image sees on the same device secret and on another.
//!
//! The model (Documentation/block/inline-encryption.rst, "Hardware-wrapped
//! keys"): userspace imports a raw key (BLKCRYPTOIMPORTKEY) or has the
//! device generate one (BLKCRYPTOGENERATEKEY) and gets it wrapped
//! long-term, which it stores; at every boot it prepares the long-term key
//! (BLKCRYPTOPREPAREKEY) into its ephemerally-wrapped form, which is what
//! FS_IOC_ADD_ENCRYPTION_KEY takes with the HW_WRAPPED flag: fscrypt asks
//! the device for the key's software secret (DERIVE_SW_SECRET) to derive
//! the key identifier and the non-contents keys, and programs keyslots
//! with the ephemerally-wrapped key itself; the device derives the inline
//! encryption key inside. fscrypt takes hardware-wrapped keys only with
//! IV_INO_LBLK_64 and IV_INO_LBLK_32 policies.
//!
//! Every raw key comes from the run's seed (`data::hw_key_bytes`, 32
//! bytes), so the manifest names it by its seed (`hw_wrapped_key_seed`)
//! and a later verifier can derive the inline encryption key with the
//! hardware KDF (docs/PROTOCOL.md).
//!
//! `lab-wrapped` (a fresh image, `icelab serve --key-manager-state S`):
//!
//! | test | checks |
//! |---|---|
//! | `wrapped-sysfs` | `queue/crypto/hw_wrapped_keys` and `raw_keys` both read `supported` |
//! | `wrapped-ioctls` | import, prepare and generate round trip (sizes 1..=128, the raw key nowhere in the blob, a generated key differs); a tampered long-term key and an ephemerally-wrapped key are refused by PREPARE (EBADMSG); a 16-byte raw key by IMPORT (EINVAL: the device takes 32-byte keys) |
//! | `wrapped-fscrypt/lblk64`, `wrapped-fscrypt/lblk32` | the seeded raw key imported; the long-term key itself refused by FS_IOC_ADD_ENCRYPTION_KEY (EBADMSG); prepared and added with HW_WRAPPED; imported again, it gives the same key identifier; a v2 policy with IV_INO_LBLK_64 / _32; files written, synced, caches dropped, read back; fscrypt used the engine; the long-term and ephemerally-wrapped keys saved under `/mnt/wrapped-keys/` |
//! | `guest-memory-scan` | ([`super::memory_scan`]) with both keys loaded and a raw-key control added, the host is asked to scan guest memory; every key still loaded after the hold |
//! | `wrapped-fscrypt/default-rejected` | a per-file-key policy with a hardware-wrapped key: creating a file fails with EINVAL and fscrypt's warning |
//! | `wrapped-removal` | files under their own hardware-wrapped key read back, the key removed (no file busy, absent, ENOKEY); marks for the host's `trace/wrapped-key-removal` (the key evicted at the device) |
//!
//! `lab-wrapped-reboot` (the same image and device secret):
//!
//! | test | checks |
//! |---|---|
//! | `wrapped-stale` | the ephemerally-wrapped key boot 1 saved is refused by FS_IOC_ADD_ENCRYPTION_KEY (EBADMSG: prepared before the device's reset) |
//! | `wrapped-reread/lblk64`, `wrapped-reread/lblk32` | names stay encrypted until the saved long-term key, prepared again, is added; its identifier is the policy's; every file reads back |
//!
//! `lab-wrapped-foreign` (the same image, another device secret):
//!
//! | test | checks |
//! |---|---|
//! | `wrapped-foreign` | the saved long-term key is refused by PREPARE (EBADMSG: another device's), by FS_IOC_ADD_ENCRYPTION_KEY as it is (EBADMSG: not ephemerally wrapped), and so is the saved ephemerally-wrapped key; the files stay locked |
//! | `wrapped-reimport/lblk64`, `wrapped-reimport/lblk32` | the same raw key imported on this device gives another long-term key but the same key identifier, and the files read back: the keys follow the raw key, not the device secret |

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::files;
use super::matrix::{self, check_policy};
use super::path::{case, whole};
use super::plan::{Case, FileSpec, Scheme};
use crate::blk_crypto::{self, WrappedKey};
use crate::cmdline::Expect;
use crate::data;
use crate::fscrypt::{self, KeyIdentifier};
use crate::kmsg;
use crate::marks;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, TestFn, fail};
use crate::suites::steps;
use crate::sys::Errno;
use icelab_contract::manifest::FileEntry;
use icelab_contract::record::FACT_MANIFEST;

/// `kernel-clean` (smoke's), last: nothing the key manager's refusals,
/// the removal or the unmount did may have made the kernel complain.
pub const KERNEL_CLEAN: TestDef = TestDef {
    name: "kernel-clean",
    timeout: Duration::from_secs(10),
    needs: &[],
    fatal: false,
    run: crate::suites::smoke::kernel_clean,
};

/// `wrapped-sysfs`.
pub const WRAPPED_SYSFS: TestDef = TestDef {
    name: "wrapped-sysfs",
    timeout: Duration::from_secs(10),
    needs: &[],
    fatal: false,
    run: wrapped_sysfs,
};

/// `wrapped-ioctls`.
pub const WRAPPED_IOCTLS: TestDef = TestDef {
    name: "wrapped-ioctls",
    timeout: Duration::from_secs(60),
    needs: &[],
    fatal: false,
    run: wrapped_ioctls,
};

const fn def(name: &'static str, needs: &'static [&'static str], run: TestFn) -> TestDef {
    TestDef {
        name,
        timeout: Duration::from_secs(180),
        needs,
        fatal: false,
        run,
    }
}

/// `wrapped-fscrypt/<policy>`, one per [`POLICIES`] entry.
pub const WRAPPED_FSCRYPT: [TestDef; 2] = [
    def("wrapped-fscrypt/lblk64", &["mkfs-mount"], fscrypt_test::<0>),
    def("wrapped-fscrypt/lblk32", &["mkfs-mount"], fscrypt_test::<1>),
];

/// `wrapped-fscrypt/default-rejected`.
pub const WRAPPED_NEEDS_LBLK: TestDef = def(
    "wrapped-fscrypt/default-rejected",
    &["mkfs-mount"],
    default_rejected,
);

/// `wrapped-removal`.
pub const WRAPPED_REMOVAL: TestDef = def("wrapped-removal", &["mkfs-mount"], wrapped_removal);

/// `wrapped-stale` (second boot).
pub const WRAPPED_STALE: TestDef = def("wrapped-stale", &["mount-existing"], wrapped_stale);

/// `wrapped-reread/<policy>` (second boot, same device secret).
pub const WRAPPED_REREAD: [TestDef; 2] = [
    def("wrapped-reread/lblk64", &["mount-existing"], reread::<0>),
    def("wrapped-reread/lblk32", &["mount-existing"], reread::<1>),
];

/// `wrapped-foreign` (another device secret).
pub const WRAPPED_FOREIGN: TestDef = def("wrapped-foreign", &["mount-existing"], wrapped_foreign);

/// `wrapped-reimport/<policy>` (another device secret).
pub const WRAPPED_REIMPORT: [TestDef; 2] = [
    def(
        "wrapped-reimport/lblk64",
        &["mount-existing"],
        reimport::<0>,
    ),
    def(
        "wrapped-reimport/lblk32",
        &["mount-existing"],
        reimport::<1>,
    ),
];

/// The policies of the fscrypt tests: the label (file names under
/// [`KEYS_DIR`]) and the case (directory and key name). Hardware-wrapped
/// keys take only these two.
pub const POLICIES: [(&str, Case); 2] = [
    ("lblk64", case("wrapped/lblk64", Scheme::Lblk64)),
    ("lblk32", case("wrapped/lblk32", Scheme::Lblk32)),
];

/// The files of each policy: partial, whole and several blocks.
pub const FILES: [FileSpec; 5] = [
    whole("1", 1),
    whole("4095", 4095),
    whole("4096", 4096),
    whole("4097", 4097),
    whole("big", (1 << 20) + 4097),
];

/// The unencrypted directory under the mount point where the first boot
/// keeps its wrapped keys, as an application would: `<label>.lt` (the
/// long-term wrapped key) and `<label>.eph` (the ephemerally-wrapped key
/// of that boot, only to show that a later boot refuses it).
pub const KEYS_DIR: &str = "wrapped-keys";

/// A per-file-key directory (refused with a hardware-wrapped key).
const DEFAULT_CASE: Case = case("wrapped/default", Scheme::PerFile);
/// The removal test's directory and key.
const REMOVAL_CASE: Case = case("wrapped/removal", Scheme::Lblk64);
const REMOVAL_FILES: [FileSpec; 2] = [whole("a", 4096), whole("b", 3 * 4096 + 100)];

/// The warning fscrypt logs (fs/crypto/keysetup.c) when a hardware-wrapped
/// key meets a policy without IV_INO_LBLK_*.
pub const NEEDS_LBLK_WARNING: &str =
    "Hardware-wrapped keys are only supported with IV_INO_LBLK policies";

fn io_fail(what: String) -> impl FnOnce(io::Error) -> Failure {
    move |e| Failure(format!("{what}: {e}"))
}

/// The disk, open for blk-crypto's ioctls.
fn open_disk(ctx: &Ctx) -> Result<(File, String), Failure> {
    let disk = &ctx.config.disk;
    let shown = disk.display().to_string();
    let file = File::open(disk).map_err(io_fail(format!("cannot open {shown}")))?;
    Ok((file, shown))
}

/// The errno of a failed call, or a failure saying it succeeded.
fn refused<T>(result: fscrypt::Result<T>, what: &str) -> Result<i32, Failure> {
    match result {
        Ok(_) => fail(format!("{what} succeeded; expected a refusal")),
        Err(e) => Ok(e.source.raw_os_error().unwrap_or(0)),
    }
}

/// Checks that `result` failed with `want`; records the errno as `fact`.
fn expect_errno<T>(
    result: fscrypt::Result<T>,
    want: i32,
    what: &str,
    fact: &str,
    facts: &mut Facts,
) -> Result<(), Failure> {
    let errno = refused(result, what)?;
    facts.set(fact, Errno(errno).name());
    if errno != want {
        return fail(format!(
            "{what} failed with {}, expected {}",
            Errno(errno),
            Errno(want).name()
        ));
    }
    Ok(())
}

/// `wrapped-sysfs`: both key types offered to blk-crypto.
fn wrapped_sysfs(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let dir = Path::new("/sys/block")
        .join(ctx.config.disk_name())
        .join("queue/crypto");
    let seen = steps::read_crypto_sysfs(&dir)?;
    facts.set("crypto", steps::crypto_facts(&seen));
    let mut bad = Vec::new();
    for (file, value) in [
        ("raw_keys", &seen.raw_keys),
        ("hw_wrapped_keys", &seen.hw_wrapped_keys),
    ] {
        match value.as_deref() {
            Some("supported") => {}
            Some(other) => bad.push(format!("{file} reads {other:?}, expected \"supported\"")),
            None => bad.push(format!("{} has no {file}", dir.display())),
        }
    }
    if !bad.is_empty() {
        return fail(bad.join("; "));
    }
    Ok(format!(
        "{}: raw_keys and hw_wrapped_keys supported",
        dir.display()
    ))
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks a wrapped key the kernel returned: 1..=128 bytes.
fn check_size(key: &WrappedKey, what: &str) -> Result<(), Failure> {
    if key.is_empty() || key.len() > blk_crypto::BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE {
        return fail(format!("{what} returned a {}-byte key", key.len()));
    }
    Ok(())
}

/// `wrapped-ioctls`: blk-crypto's three ioctls on the disk, and the
/// refusals a driver must translate.
fn wrapped_ioctls(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let (disk, shown) = open_disk(ctx)?;
    let raw = data::hw_key_bytes(data::key_seed(state.seed, "wrapped/ioctls"));

    ctx.step("BLKCRYPTOIMPORTKEY");
    let lt = blk_crypto::import_key(&disk, &shown, raw.as_ref())?;
    check_size(&lt, "BLKCRYPTOIMPORTKEY")?;
    facts.set("lt_key_size", lt.len());
    if contains(lt.bytes(), raw.as_ref()) {
        return fail("the long-term wrapped key holds the raw key in the clear");
    }
    ctx.step("BLKCRYPTOIMPORTKEY (the same key again)");
    let lt_again = blk_crypto::import_key(&disk, &shown, raw.as_ref())?;
    // Not required: a device may wrap deterministically (icelab does not).
    facts.set("import_twice_differs", lt_again != lt);

    ctx.step("BLKCRYPTOPREPAREKEY");
    let eph = blk_crypto::prepare_key(&disk, &shown, lt.bytes())?;
    check_size(&eph, "BLKCRYPTOPREPAREKEY")?;
    facts.set("eph_key_size", eph.len());
    if eph == lt || contains(eph.bytes(), raw.as_ref()) {
        return fail(
            "the ephemerally-wrapped key equals the long-term one or holds the raw key in the \
             clear",
        );
    }

    ctx.step("BLKCRYPTOGENERATEKEY");
    let generated = blk_crypto::generate_key(&disk, &shown)?;
    check_size(&generated, "BLKCRYPTOGENERATEKEY")?;
    facts.set("generated_key_size", generated.len());
    if generated == lt || generated == lt_again {
        return fail("the generated key equals the imported one");
    }
    ctx.step("BLKCRYPTOPREPAREKEY (generated key)");
    let generated_eph = blk_crypto::prepare_key(&disk, &shown, generated.bytes())?;
    check_size(&generated_eph, "BLKCRYPTOPREPAREKEY of the generated key")?;

    // Refusals: the device answers IOERR, the driver turns it into what
    // blk-crypto's callers expect.
    ctx.step("BLKCRYPTOPREPAREKEY of a tampered long-term key");
    let mut tampered = lt.bytes().to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    expect_errno(
        blk_crypto::prepare_key(&disk, &shown, &tampered),
        libc::EBADMSG,
        "BLKCRYPTOPREPAREKEY of the long-term key with its last bit flipped",
        "tampered_prepare_errno",
        facts,
    )?;
    ctx.step("BLKCRYPTOPREPAREKEY of an ephemerally-wrapped key");
    expect_errno(
        blk_crypto::prepare_key(&disk, &shown, eph.bytes()),
        libc::EBADMSG,
        "BLKCRYPTOPREPAREKEY of an ephemerally-wrapped key",
        "wrong_kind_prepare_errno",
        facts,
    )?;
    ctx.step("BLKCRYPTOIMPORTKEY of a 16-byte raw key");
    expect_errno(
        blk_crypto::import_key(&disk, &shown, &raw[..16]),
        libc::EINVAL,
        "BLKCRYPTOIMPORTKEY of a 16-byte raw key (the device takes 32 bytes)",
        "short_import_errno",
        facts,
    )?;
    Ok(format!(
        "import ({} B long-term), prepare ({} B ephemeral) and generate round trip; a tampered \
         long-term key and an ephemerally-wrapped key refused by PREPARE (EBADMSG), a 16-byte \
         raw key by IMPORT (EINVAL)",
        lt.len(),
        eph.len()
    ))
}

/// The raw key of the hardware-wrapped key named `name`, imported on the
/// disk: (long-term key, key seed).
fn import_seeded(
    ctx: &Ctx,
    state: &State,
    disk: &File,
    shown: &str,
    name: &str,
) -> Result<(WrappedKey, u64), Failure> {
    let key_seed = data::key_seed(state.seed, name);
    let raw = data::hw_key_bytes(key_seed);
    ctx.step(format!("BLKCRYPTOIMPORTKEY ({name})"));
    Ok((blk_crypto::import_key(disk, shown, raw.as_ref())?, key_seed))
}

/// Prepares `lt` and adds it to the filesystem of `dir` with the
/// HW_WRAPPED flag; remembers the key for `unmount`. Returns the
/// identifier and the ephemerally-wrapped key.
fn add_wrapped(
    ctx: &Ctx,
    state: &mut State,
    disk: &File,
    disk_shown: &str,
    lt: &WrappedKey,
    dir: &File,
    dir_shown: &str,
) -> Result<(KeyIdentifier, WrappedKey), Failure> {
    ctx.step(format!("BLKCRYPTOPREPAREKEY for {dir_shown}"));
    let eph = blk_crypto::prepare_key(disk, disk_shown, lt.bytes())?;
    ctx.step(format!(
        "FS_IOC_ADD_ENCRYPTION_KEY (HW_WRAPPED) for {dir_shown}"
    ));
    let id = fscrypt::add_hw_wrapped_key(dir, dir_shown, eph.bytes())?;
    if !state.keys.contains(&id) {
        state.keys.push(id);
    }
    Ok((id, eph))
}

/// A manifest entry of a file under a hardware-wrapped key.
fn wrapped_entry(
    case: &Case,
    spec: &FileSpec,
    key_seed: u64,
    content_seed: u64,
    meta: &fs::Metadata,
) -> FileEntry {
    FileEntry {
        master_key_seed: None,
        hw_wrapped_key_seed: Some(data::seed_hex(key_seed)),
        ..files::manifest_entry(case, spec, key_seed, content_seed, meta)
    }
}

/// Writes `specs` into `dir` (fsynced), then syncs, drops the caches and
/// reads them back; returns their manifest entries.
fn write_and_read(
    ctx: &Ctx,
    state: &State,
    case: &Case,
    dir: &Path,
    specs: &[FileSpec],
    key_seed: u64,
) -> Result<Vec<FileEntry>, Failure> {
    let mut entries = Vec::new();
    for spec in specs {
        let path = dir.join(spec.leaf);
        let shown = path.display().to_string();
        ctx.step(format!("writing {shown}"));
        let seed = data::content_seed(state.seed, &case.file_name(spec));
        let (file, _) = files::write(&path, spec, seed)?;
        let meta = file.metadata().map_err(io_fail(format!("fstat {shown}")))?;
        entries.push(wrapped_entry(case, spec, key_seed, seed, &meta));
    }
    ctx.step("sync and drop_caches");
    steps::sync_and_drop_caches()?;
    read_files(ctx, state, case, dir, specs)?;
    Ok(entries)
}

fn read_files(
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

/// A fresh directory `case.name` under the mount point.
fn new_dir(ctx: &Ctx, state: &State, case: &Case) -> Result<(PathBuf, File, String), Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mkfs-mount failed)");
    }
    let path = ctx.config.mountpoint.join(case.name);
    let shown = path.display().to_string();
    fs::create_dir_all(&path).map_err(io_fail(format!("cannot create {shown}")))?;
    let file = File::open(&path).map_err(io_fail(format!("cannot open {shown}")))?;
    Ok((path, file, shown))
}

/// Writes `key` to `KEYS_DIR/<file>` and syncs it.
fn save_key(ctx: &Ctx, file: &str, key: &WrappedKey) -> Result<(), Failure> {
    let dir = ctx.config.mountpoint.join(KEYS_DIR);
    fs::create_dir_all(&dir).map_err(io_fail(format!("cannot create {}", dir.display())))?;
    let path = dir.join(file);
    let shown = path.display().to_string();
    let mut out = File::create(&path).map_err(io_fail(format!("cannot create {shown}")))?;
    out.write_all(key.bytes())
        .and_then(|()| out.sync_all())
        .map_err(io_fail(format!("writing {shown}")))
}

/// Reads `KEYS_DIR/<file>`, saved by the first boot.
fn saved_key(ctx: &Ctx, file: &str) -> Result<WrappedKey, Failure> {
    let path = ctx.config.mountpoint.join(KEYS_DIR).join(file);
    let bytes = fs::read(&path).map_err(io_fail(format!(
        "cannot read {} (did the lab-wrapped boot run on this image?)",
        path.display()
    )))?;
    Ok(WrappedKey::from_bytes(&bytes))
}

/// fscrypt's "native" line for AES-256-XTS must be in the kernel log: a
/// hardware-wrapped key has no fallback.
fn check_native(facts: &mut Facts) -> Result<(), Failure> {
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let found = steps::find_impl_lines(&records, steps::AES_256_XTS, Expect::Native);
    match found.expected {
        Some(r) => {
            facts.set("native_line", r.text.clone());
            Ok(())
        }
        None => fail(
            "no \"fscrypt: AES-256-XTS using blk-crypto (native)\" in the kernel log after \
             writing under a hardware-wrapped key",
        ),
    }
}

fn fscrypt_test<const I: usize>(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    let (label, case) = &POLICIES[I];
    wrapped_fscrypt(ctx, state, facts, label, case)
}

/// `wrapped-fscrypt/<label>`.
fn wrapped_fscrypt(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
    label: &str,
    case: &Case,
) -> Result<String, Failure> {
    let (disk, disk_shown) = open_disk(ctx)?;
    let (dir, dir_file, shown) = new_dir(ctx, state, case)?;
    let (lt, key_seed) = import_seeded(ctx, state, &disk, &disk_shown, case.name)?;
    facts
        .set("key_name", case.name)
        .set("hw_wrapped_key_seed", data::seed_hex(key_seed))
        .set("lt_key_size", lt.len());
    // fscrypt takes the ephemerally-wrapped form (it asks the device for
    // the software secret of exactly what it is given): the long-term key
    // itself is refused.
    ctx.step(format!(
        "FS_IOC_ADD_ENCRYPTION_KEY (HW_WRAPPED) of the long-term key for {shown}"
    ));
    expect_errno(
        fscrypt::add_hw_wrapped_key(&dir_file, &shown, lt.bytes()),
        libc::EBADMSG,
        "FS_IOC_ADD_ENCRYPTION_KEY (HW_WRAPPED) of the long-term key, not prepared",
        "add_lt_errno",
        facts,
    )?;
    let (id, eph) = add_wrapped(ctx, state, &disk, &disk_shown, &lt, &dir_file, &shown)?;
    facts
        .set("key_identifier", id.to_hex())
        .set("eph_key_size", eph.len());

    // The same raw key imported again: another blob, the same software
    // secret, so the same identifier.
    let (lt_again, _) = import_seeded(ctx, state, &disk, &disk_shown, case.name)?;
    let (id_again, _) = add_wrapped(ctx, state, &disk, &disk_shown, &lt_again, &dir_file, &shown)?;
    if id_again != id {
        return fail(format!(
            "the raw key imported twice gave key identifiers {} and {}: the software secret \
             does not follow the raw key",
            id.to_hex(),
            id_again.to_hex()
        ));
    }
    save_key(ctx, &format!("{label}.lt"), &lt)?;
    save_key(ctx, &format!("{label}.eph"), &eph)?;

    let policy = case.policy(&id);
    facts.set("policy", matrix::policy_facts(&policy));
    ctx.step(format!("FS_IOC_SET_ENCRYPTION_POLICY on {shown}"));
    fscrypt::set_policy(&dir_file, &shown, &policy)?;
    check_policy(&dir_file, &shown, &policy)?;

    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    let entries = write_and_read(ctx, state, case, &dir, &FILES, key_seed)?;
    facts.set(FACT_MANIFEST, files::manifest_fact(&uuid, &entries));
    for spec in &FILES {
        let path = dir.join(spec.leaf);
        let file = File::open(&path).map_err(io_fail(format!("cannot open {}", path.display())))?;
        check_policy(&file, &path.display().to_string(), &policy)?;
    }
    check_native(facts)?;
    let units: u64 = FILES
        .iter()
        .map(|f| f.size.div_ceil(case.data_unit_size()))
        .sum();
    facts.set("data_units", units);
    Ok(format!(
        "{} files, {units} data units under a hardware-wrapped key ({label}, {} B long-term, \
         {} B ephemeral) read back; the long-term key itself refused (EBADMSG); imported twice, \
         the same identifier; keys saved in {KEYS_DIR}",
        FILES.len(),
        lt.len(),
        eph.len()
    ))
}

/// `wrapped-fscrypt/default-rejected`: fscrypt refuses a hardware-wrapped
/// key for a policy without IV_INO_LBLK_*.
fn default_rejected(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let (disk, disk_shown) = open_disk(ctx)?;
    let case = &DEFAULT_CASE;
    let (dir, dir_file, shown) = new_dir(ctx, state, case)?;
    let (lt, _) = import_seeded(ctx, state, &disk, &disk_shown, case.name)?;
    let (id, _) = add_wrapped(ctx, state, &disk, &disk_shown, &lt, &dir_file, &shown)?;
    let policy = case.policy(&id);
    ctx.step(format!("FS_IOC_SET_ENCRYPTION_POLICY on {shown}"));
    fscrypt::set_policy(&dir_file, &shown, &policy)?;
    let path = dir.join("file");
    ctx.step(format!("creating {}", path.display()));
    let errno = match File::create(&path) {
        Ok(_) => {
            return fail(format!(
                "{} was created under a per-file-key policy with a hardware-wrapped key",
                path.display()
            ));
        }
        Err(e) => e.raw_os_error().unwrap_or(0),
    };
    facts.set("errno", Errno(errno).name());
    if errno != libc::EINVAL {
        return fail(format!(
            "creating {} failed with {}, expected EINVAL",
            path.display(),
            Errno(errno)
        ));
    }
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let Some(line) = records.iter().find(|r| r.text.contains(NEEDS_LBLK_WARNING)) else {
        return fail(format!(
            "EINVAL, but the kernel log has no {NEEDS_LBLK_WARNING:?}: refused for another reason?"
        ));
    };
    facts.set("kernel_log", line.text.clone());
    Ok(format!("EINVAL as expected; kernel: {NEEDS_LBLK_WARNING}"))
}

/// Opens a file of the locked `dir` by its no-key name; returns the errno,
/// or fails if it opened.
fn open_locked(dir: &Path, facts: &mut Facts) -> Result<i32, Failure> {
    let shown = dir.display().to_string();
    let entry = fs::read_dir(dir)
        .map_err(io_fail(format!("cannot list {shown} without its key")))?
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .ok_or_else(|| Failure(format!("{shown} lists no file without its key")))?;
    let name = entry.file_name().to_string_lossy().into_owned();
    facts.set("nokey_name", name.clone());
    match File::open(entry.path()) {
        Ok(_) => fail(format!("{shown}/{name} opened although its key is absent")),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            facts.set("open_errno", Errno(errno).name());
            Ok(errno)
        }
    }
}

/// `wrapped-removal`.
fn wrapped_removal(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    steps::sync_and_drop_caches()?;
    let (disk, disk_shown) = open_disk(ctx)?;
    let case = &REMOVAL_CASE;
    let (dir, dir_file, shown) = new_dir(ctx, state, case)?;
    let (lt, key_seed) = import_seeded(ctx, state, &disk, &disk_shown, case.name)?;
    let (id, _) = add_wrapped(ctx, state, &disk, &disk_shown, &lt, &dir_file, &shown)?;
    facts.set("key_identifier", id.to_hex());
    let policy = case.policy(&id);
    fscrypt::set_policy(&dir_file, &shown, &policy)?;
    drop(dir_file);

    marks::mark(ctx, facts, marks::WRAPPED_REMOVAL_START)?;
    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    let entries = write_and_read(ctx, state, case, &dir, &REMOVAL_FILES, key_seed)?;
    facts.set(FACT_MANIFEST, files::manifest_fact(&uuid, &entries));
    marks::mark(ctx, facts, marks::WRAPPED_REMOVAL_KEYS_IN_USE)?;

    let mnt = &ctx.config.mountpoint;
    let root_shown = mnt.display().to_string();
    let root = File::open(mnt).map_err(io_fail(format!("cannot open {root_shown}")))?;
    ctx.step("FS_IOC_REMOVE_ENCRYPTION_KEY");
    let flags = fscrypt::remove_key(&root, &root_shown, &id)?;
    state.keys.retain(|k| *k != id);
    facts.set("removal_flags", flags);
    marks::mark(ctx, facts, marks::WRAPPED_REMOVAL_REMOVED)?;
    if flags != 0 {
        return fail(format!(
            "removing the hardware-wrapped key {} returned status flags {flags:#x}, expected 0",
            id.to_hex()
        ));
    }
    let (status, _, _) = fscrypt::key_status(&root, &root_shown, &id)?;
    facts.set("key_status_after", status);
    if status != fscrypt::FSCRYPT_KEY_STATUS_ABSENT {
        return fail(format!(
            "key {} has status {status} after removal, expected 1 (absent)",
            id.to_hex()
        ));
    }
    let errno = open_locked(&dir, facts)?;
    if errno != libc::ENOKEY {
        return fail(format!(
            "opening a file of {shown} after its key was removed failed with {}, expected ENOKEY",
            Errno(errno)
        ));
    }
    Ok(
        "files under a hardware-wrapped key read back; the key removed (flags 0, absent, ENOKEY)"
            .to_owned(),
    )
}

/// `wrapped-stale`: the first boot's ephemerally-wrapped key is refused.
fn wrapped_stale(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mount-existing failed)");
    }
    let mnt = &ctx.config.mountpoint;
    let shown = mnt.display().to_string();
    let root = File::open(mnt).map_err(io_fail(format!("cannot open {shown}")))?;
    let mut errnos = Vec::new();
    for (label, _) in &POLICIES {
        let eph = saved_key(ctx, &format!("{label}.eph"))?;
        ctx.step(format!(
            "FS_IOC_ADD_ENCRYPTION_KEY (HW_WRAPPED) with boot 1's {label}.eph"
        ));
        let errno = refused(
            fscrypt::add_hw_wrapped_key(&root, &shown, eph.bytes()),
            &format!("adding the ephemerally-wrapped key {label}.eph of the first boot"),
        )?;
        errnos.push(json!({"key": format!("{label}.eph"), "errno": Errno(errno).name()}));
        facts.set("add_errnos", errnos.clone());
        if errno != libc::EBADMSG {
            return fail(format!(
                "adding boot 1's ephemerally-wrapped key {label}.eph failed with {}, expected \
                 EBADMSG",
                Errno(errno)
            ));
        }
    }
    Ok(
        "the first boot's ephemerally-wrapped keys are refused by FS_IOC_ADD_ENCRYPTION_KEY \
         (EBADMSG)"
            .to_owned(),
    )
}

/// Where a second boot's long-term key comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LongTerm {
    /// The one the first boot saved (same device secret).
    Saved,
    /// The raw key imported again (another device secret).
    Reimported,
}

fn reread<const I: usize>(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    let (label, case) = &POLICIES[I];
    unlock_again(ctx, state, facts, label, case, LongTerm::Saved)
}

fn reimport<const I: usize>(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    let (label, case) = &POLICIES[I];
    unlock_again(ctx, state, facts, label, case, LongTerm::Reimported)
}

/// The plaintext name of the first file must not resolve: the directory
/// is locked.
fn check_locked(dir: &Path) -> Result<(), Failure> {
    let shown = dir.display().to_string();
    let leaf = FILES[0].leaf;
    match fs::symlink_metadata(dir.join(leaf)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(_) => fail(format!(
            "{shown}/{leaf} resolves before the key was added: names are not encrypted"
        )),
        Err(e) => fail(format!("looking up {shown}/{leaf}: {e}")),
    }
}

/// `wrapped-reread/<label>` and `wrapped-reimport/<label>`.
fn unlock_again(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
    label: &str,
    case: &Case,
    source: LongTerm,
) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mount-existing failed)");
    }
    let (disk, disk_shown) = open_disk(ctx)?;
    let dir = ctx.config.mountpoint.join(case.name);
    let shown = dir.display().to_string();
    let dir_file = File::open(&dir).map_err(io_fail(format!(
        "cannot open {shown} (did the lab-wrapped boot run on this image?)"
    )))?;
    check_locked(&dir)?;
    let key_seed = data::key_seed(state.seed, case.name);
    let lt = match source {
        LongTerm::Saved => saved_key(ctx, &format!("{label}.lt"))?,
        LongTerm::Reimported => {
            let (lt, _) = import_seeded(ctx, state, &disk, &disk_shown, case.name)?;
            let saved = saved_key(ctx, &format!("{label}.lt"))?;
            facts.set("differs_from_saved", lt != saved);
            lt
        }
    };
    facts
        .set("key_name", case.name)
        .set("hw_wrapped_key_seed", data::seed_hex(key_seed))
        .set("lt_key_size", lt.len());
    let (id, _) = add_wrapped(ctx, state, &disk, &disk_shown, &lt, &dir_file, &shown)?;
    facts.set("key_identifier", id.to_hex());
    // The identifier in the on-disk policy is the first boot's.
    let policy = case.policy(&id);
    check_policy(&dir_file, &shown, &policy)?;

    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    let mut entries = Vec::new();
    for spec in &FILES {
        let path = dir.join(spec.leaf);
        let file_shown = path.display().to_string();
        ctx.step(format!("reading {file_shown}"));
        let file = File::open(&path).map_err(io_fail(format!("cannot open {file_shown}")))?;
        check_policy(&file, &file_shown, &policy)?;
        let meta = file
            .metadata()
            .map_err(io_fail(format!("fstat {file_shown}")))?;
        if meta.len() != spec.size {
            return fail(format!(
                "{file_shown} is {} bytes, expected {}",
                meta.len(),
                spec.size
            ));
        }
        let seed = data::content_seed(state.seed, &case.file_name(spec));
        files::read_back(&path, spec, seed, case.data_unit_size())?;
        entries.push(wrapped_entry(case, spec, key_seed, seed, &meta));
    }
    facts.set(FACT_MANIFEST, files::manifest_fact(&uuid, &entries));
    Ok(match source {
        LongTerm::Saved => format!(
            "the saved long-term key, prepared again, unlocked {shown}: {} files identical",
            FILES.len()
        ),
        LongTerm::Reimported => format!(
            "the raw key imported on this device gave the same identifier; {} files of {shown} \
             identical",
            FILES.len()
        ),
    })
}

/// `wrapped-foreign`: another device secret refuses the first boot's keys.
fn wrapped_foreign(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mount-existing failed)");
    }
    let (disk, disk_shown) = open_disk(ctx)?;
    let mnt = &ctx.config.mountpoint;
    let root_shown = mnt.display().to_string();
    let root = File::open(mnt).map_err(io_fail(format!("cannot open {root_shown}")))?;
    for (label, case) in &POLICIES {
        let dir = ctx.config.mountpoint.join(case.name);
        check_locked(&dir)?;
        let lt = saved_key(ctx, &format!("{label}.lt"))?;
        ctx.step(format!("BLKCRYPTOPREPAREKEY of boot 1's {label}.lt"));
        expect_errno(
            blk_crypto::prepare_key(&disk, &disk_shown, lt.bytes()),
            libc::EBADMSG,
            &format!("BLKCRYPTOPREPAREKEY of {label}.lt, wrapped by another device"),
            &format!("{label}_prepare_errno"),
            facts,
        )?;
        ctx.step(format!(
            "FS_IOC_ADD_ENCRYPTION_KEY with {label}.lt as it is"
        ));
        expect_errno(
            fscrypt::add_hw_wrapped_key(&root, &root_shown, lt.bytes()),
            libc::EBADMSG,
            &format!("adding the long-term key {label}.lt (not ephemerally wrapped)"),
            &format!("{label}_add_lt_errno"),
            facts,
        )?;
        let eph = saved_key(ctx, &format!("{label}.eph"))?;
        ctx.step(format!("FS_IOC_ADD_ENCRYPTION_KEY with {label}.eph"));
        expect_errno(
            fscrypt::add_hw_wrapped_key(&root, &root_shown, eph.bytes()),
            libc::EBADMSG,
            &format!("adding the ephemerally-wrapped key {label}.eph of another device"),
            &format!("{label}_add_eph_errno"),
            facts,
        )?;
        check_locked(&dir)?;
    }
    Ok(
        "another device secret: the saved long-term keys refused by PREPARE and by \
         FS_IOC_ADD_ENCRYPTION_KEY, the saved ephemerally-wrapped keys too (all EBADMSG); the \
         directories stay locked"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_the_ones_hardware_wrapped_keys_take() {
        for (label, case) in &POLICIES {
            assert_ne!(case.scheme, Scheme::PerFile);
            assert!(case.name.ends_with(label));
            assert_eq!(case.data_unit_size(), 4096);
        }
        assert_eq!(POLICIES[0].1.dun_bytes(), 8);
        assert_eq!(POLICIES[1].1.dun_bytes(), 4);
        for (i, t) in WRAPPED_FSCRYPT.iter().enumerate() {
            assert!(t.name.ends_with(POLICIES[i].0));
            assert!(WRAPPED_REREAD[i].name.ends_with(POLICIES[i].0));
            assert!(WRAPPED_REIMPORT[i].name.ends_with(POLICIES[i].0));
        }
    }

    #[test]
    fn manifest_entries_name_the_hardware_key_seed() {
        let meta = fs::metadata("/").expect("stat /");
        let e = wrapped_entry(&POLICIES[0].1, &FILES[0], 0xab, 7, &meta);
        assert_eq!(e.master_key_seed, None);
        assert_eq!(e.hw_wrapped_key_seed.as_deref(), Some("00000000000000ab"));
        assert_eq!(
            e.hw_wrapped_key(),
            Some(Ok(icelab_contract::manifest::hw_key_from_seed(0xab)))
        );
        assert_eq!(e.name.as_deref(), Some("wrapped/lblk64/1"));
    }

    #[test]
    fn finds_bytes() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(!contains(b"abcdef", b"cdf"));
    }
}
