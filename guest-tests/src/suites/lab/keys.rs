//! `key-removal`: FS_IOC_REMOVE_ENCRYPTION_KEY (fs/crypto/keyring.c) and
//! what it does at the device.
//!
//! (a) `removal/idle`: files read (their per-file keys in keyslots), all
//! closed, key removed: removal reports no busy files, the key is absent,
//! a file opened by its no-key name fails with ENOKEY. The kernel evicts
//! the inodes and with them their blk-crypto keys (blk_crypto_evict_key:
//! KEYSLOT_EVICT), which the host checks in the trace between the marks
//! `keys-in-use` and `removed`.
//!
//! (b) `removal/busy`: one file held open: removal reports
//! FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY and the key is
//! incompletely removed; the open file's key stays in its slot (host: no
//! evict between `open` and `busy`). After close a second removal
//! succeeds and the key is evicted by the mark `removed`.
//!
//! The files stay on disk, listed in the manifest (their keys come from
//! the seed, so the verifier can still check them).

use std::fs::{self, File};
use std::io::Read;
use std::time::Duration;

use super::path::{self, PolicyDir, case, whole};
use super::plan::{Case, FileSpec, Scheme};
use crate::fscrypt::{self, KeyIdentifier};
use crate::marks;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;
use crate::sys::Errno;

/// `key-removal`.
pub const KEY_REMOVAL: TestDef = TestDef {
    name: "key-removal",
    timeout: Duration::from_secs(180),
    needs: &["mkfs-mount"],
    fatal: false,
    run: key_removal,
};

const IDLE: Case = case("removal/idle", Scheme::PerFile);
const IDLE_FILES: [FileSpec; 3] = [
    whole("a", 4096),
    whole("b", 3 * 4096 + 100),
    whole("c", 70_000),
];
const BUSY: Case = case("removal/busy", Scheme::PerFile);
const BUSY_FILES: [FileSpec; 1] = [whole("held", 2 * 4096)];

fn key_removal(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    steps::sync_and_drop_caches()?;
    let mnt = ctx.config.mountpoint.clone();
    let shown = mnt.display().to_string();
    let mut manifest = Vec::new();

    // (a) Nothing open.
    let dir = path::policy_dir(ctx, state, facts, &IDLE)?;
    marks::mark(ctx, facts, marks::REMOVAL_IDLE_START)?;
    path::write_files(ctx, state, &IDLE, &dir, &IDLE_FILES, &mut manifest)?;
    path::set_manifest(ctx, facts, &manifest)?;
    steps::sync_and_drop_caches()?;
    path::read_files(ctx, state, &IDLE, &dir.path, &IDLE_FILES)?;
    marks::mark(ctx, facts, marks::REMOVAL_IDLE_KEYS_IN_USE)?;
    let root = File::open(&mnt).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    ctx.step("FS_IOC_REMOVE_ENCRYPTION_KEY (idle)");
    let flags = fscrypt::remove_key(&root, &shown, &dir.id)?;
    forget(state, &dir.id);
    facts.set("idle_removal_flags", flags);
    marks::mark(ctx, facts, marks::REMOVAL_IDLE_REMOVED)?;
    if flags != 0 {
        return fail(format!(
            "removing the idle key {} returned status flags {flags:#x}, expected 0 (no file open)",
            dir.id.to_hex()
        ));
    }
    expect_absent(&root, &shown, &dir.id, facts, "idle")?;
    let errno = open_locked(&dir, facts, "idle")?;
    if errno != libc::ENOKEY {
        return fail(format!(
            "opening a file of {} after its key was removed failed with {}, expected ENOKEY",
            dir.path.display(),
            Errno(errno)
        ));
    }

    // (b) One file held open.
    let dir = path::policy_dir(ctx, state, facts, &BUSY)?;
    marks::mark(ctx, facts, marks::REMOVAL_BUSY_START)?;
    path::write_files(ctx, state, &BUSY, &dir, &BUSY_FILES, &mut manifest)?;
    path::set_manifest(ctx, facts, &manifest)?;
    steps::sync_and_drop_caches()?;
    let held_path = dir.path.join(BUSY_FILES[0].leaf);
    let mut held = File::open(&held_path)
        .map_err(|e| Failure(format!("cannot open {}: {e}", held_path.display())))?;
    let mut contents = Vec::new();
    held.read_to_end(&mut contents)
        .map_err(|e| Failure(format!("reading {}: {e}", held_path.display())))?;
    marks::mark(ctx, facts, marks::REMOVAL_BUSY_OPEN)?;
    ctx.step("FS_IOC_REMOVE_ENCRYPTION_KEY (busy)");
    let flags = fscrypt::remove_key(&root, &shown, &dir.id)?;
    facts.set("busy_removal_flags", flags);
    let (status, _, _) = fscrypt::key_status(&root, &shown, &dir.id)?;
    facts.set("busy_key_status", status);
    marks::mark(ctx, facts, marks::REMOVAL_BUSY_BUSY)?;
    if flags & fscrypt::FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY == 0 {
        return fail(format!(
            "removing key {} with {} open returned flags {flags:#x}, expected FILES_BUSY (0x1)",
            dir.id.to_hex(),
            held_path.display()
        ));
    }
    if status != fscrypt::FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED {
        return fail(format!(
            "key {} has status {status} while a file is open after removal, expected 3 \
             (incompletely removed)",
            dir.id.to_hex()
        ));
    }
    // The open file still reads (from the page cache or the device).
    drop(held);
    drop(contents);
    marks::mark(ctx, facts, marks::REMOVAL_BUSY_CLOSED)?;
    ctx.step("FS_IOC_REMOVE_ENCRYPTION_KEY (after close)");
    let flags = fscrypt::remove_key(&root, &shown, &dir.id)?;
    forget(state, &dir.id);
    facts.set("second_removal_flags", flags);
    marks::mark(ctx, facts, marks::REMOVAL_BUSY_REMOVED)?;
    if flags != 0 {
        return fail(format!(
            "the second removal of key {} returned flags {flags:#x}, expected 0",
            dir.id.to_hex()
        ));
    }
    expect_absent(&root, &shown, &dir.id, facts, "busy")?;
    let errno = open_locked(&dir, facts, "busy")?;
    if errno != libc::ENOKEY {
        return fail(format!(
            "opening {} after its key was removed failed with {}, expected ENOKEY",
            held_path.display(),
            Errno(errno)
        ));
    }
    Ok(
        "idle key removed (flags 0, absent, ENOKEY); busy key: FILES_BUSY while open, removed \
         after close (absent, ENOKEY)"
            .to_owned(),
    )
}

/// The key is no longer the suite's to remove at `unmount`.
fn forget(state: &mut State, id: &KeyIdentifier) {
    state.keys.retain(|k| k != id);
}

fn expect_absent(
    root: &File,
    shown: &str,
    id: &KeyIdentifier,
    facts: &mut Facts,
    what: &str,
) -> Result<(), Failure> {
    let (status, _, _) = fscrypt::key_status(root, shown, id)?;
    facts.set(&format!("{what}_key_status_after"), status);
    if status != fscrypt::FSCRYPT_KEY_STATUS_ABSENT {
        return fail(format!(
            "{what} key {} has status {status} after removal, expected 1 (absent)",
            id.to_hex()
        ));
    }
    Ok(())
}

/// Opens a file of the locked directory by its no-key name (what readdir
/// shows without the key); returns the errno, or fails if it opened.
fn open_locked(dir: &PolicyDir, facts: &mut Facts, what: &str) -> Result<i32, Failure> {
    let shown = dir.path.display().to_string();
    let entry = fs::read_dir(&dir.path)
        .map_err(|e| Failure(format!("cannot list {shown} without its key: {e}")))?
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .ok_or_else(|| Failure(format!("{shown} lists no file without its key")))?;
    let name = entry.file_name().to_string_lossy().into_owned();
    facts.set(&format!("{what}_nokey_name"), name.clone());
    match File::open(entry.path()) {
        Ok(_) => fail(format!(
            "{shown}/{name} opened although its key was removed"
        )),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            facts.set(&format!("{what}_open_errno"), Errno(errno).name());
            Ok(errno)
        }
    }
}
