//! `guest-memory-scan` (`lab-wrapped`, after the wrapped fscrypt tests):
//! the guest's part of the proof that a hardware-wrapped key never enters
//! guest memory (issue 12; the host's part is the lab's
//! `memory_scan`).
//!
//! With the hardware-wrapped keys of `wrapped-fscrypt/*` still loaded, the
//! test adds a negative control, a raw master key with an IV_INO_LBLK_64
//! policy and a file written under it (so the kernel holds that key's
//! inline encryption key, as blk-crypto programs it), then signals
//! `scan-guest-memory` naming every key by seed and holds still for
//! [`HOLD`]: no result line, no key removed. The host stops QEMU, reads
//! all guest memory and expects 0 hits for the wrapped keys' raw and
//! inline encryption keys and at least one for the control's. After the
//! hold the test checks every key is still loaded and the control file
//! reads back; its manifest entry lets the verifier check it too.

use std::fs::{self, File};
use std::time::Duration;

use icelab_contract::memory_scan::{
    FACT_MEMORY_SCAN, RawKeyRef, SIGNAL_SCAN_GUEST_MEMORY, ScanRequest, WrappedKeyRef,
};
use icelab_contract::record::FACT_MANIFEST;

use super::files;
use super::matrix::{self, check_policy};
use super::path::{case, whole};
use super::plan::{Case, FileSpec, Scheme};
use super::wrapped::POLICIES;
use crate::data;
use crate::fscrypt::{self, FSCRYPT_KEY_STATUS_PRESENT, KeyIdentifier};
use crate::report::{self, Facts};
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;

/// `guest-memory-scan` of `lab-wrapped`: the hardware-wrapped keys of
/// `wrapped-fscrypt/*` and the raw-key control.
pub const GUEST_MEMORY_SCAN: TestDef = TestDef {
    name: "guest-memory-scan",
    timeout: Duration::from_secs(120),
    needs: &["mkfs-mount"],
    fatal: false,
    run: |ctx, state, facts| guest_memory_scan(ctx, state, facts, true),
};

/// `guest-memory-scan` of `lab` (raw keys only): the raw-key control
/// alone, the scan a raw-key boot gives.
pub const GUEST_MEMORY_SCAN_RAW: TestDef = TestDef {
    run: |ctx, state, facts| guest_memory_scan(ctx, state, facts, false),
    ..GUEST_MEMORY_SCAN
};

/// How long the guest holds still after the signal. The host polls the
/// results every 100 ms and stops QEMU within milliseconds of seeing the
/// line; the margin is for a loaded host. While QEMU is stopped the
/// guest's clock stands still with the host's, so the hold is not spent
/// waiting for the scan.
pub const HOLD: Duration = Duration::from_secs(6);

/// The negative control's directory and key.
const CONTROL_CASE: Case = case("scan/raw-control", Scheme::Lblk64);
const CONTROL_FILE: FileSpec = whole("control", 3 * 4096 + 100);

/// The key seed of `wrapped-ioctls`, whose raw key was imported too.
const IOCTLS_KEY: &str = "wrapped/ioctls";

fn guest_memory_scan(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
    with_wrapped: bool,
) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mkfs-mount failed)");
    }
    // The hardware-wrapped keys the fscrypt tests left loaded.
    let mut loaded = Vec::new();
    let mut wrapped_refs = Vec::new();
    let policies: &[_] = if with_wrapped { &POLICIES } else { &[] };
    for (label, case) in policies {
        let dir = ctx.config.mountpoint.join(case.name);
        let shown = dir.display().to_string();
        let file = File::open(&dir).map_err(|e| {
            Failure(format!(
                "not run: cannot open {shown} ({e}): did wrapped-fscrypt/{label} run?"
            ))
        })?;
        let id = KeyIdentifier(fscrypt::get_policy(&file, &shown)?.master_key_identifier);
        expect_present(&file, &shown, &id)?;
        wrapped_refs.push(WrappedKeyRef {
            name: case.name.to_owned(),
            hw_wrapped_key_seed: data::seed_hex(data::key_seed(state.seed, case.name)),
        });
        loaded.push((file, shown, id));
    }
    if with_wrapped {
        wrapped_refs.push(WrappedKeyRef {
            name: IOCTLS_KEY.to_owned(),
            hw_wrapped_key_seed: data::seed_hex(data::key_seed(state.seed, IOCTLS_KEY)),
        });
    }

    // The negative control: a raw key in use.
    let dir = ctx.config.mountpoint.join(CONTROL_CASE.name);
    let shown = dir.display().to_string();
    fs::create_dir_all(&dir).map_err(|e| Failure(format!("cannot create {shown}: {e}")))?;
    let dir_file = File::open(&dir).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    ctx.step(format!("raw-key control in {shown}"));
    let (id, key_seed) =
        matrix::add_seeded_key(state, &dir_file, &shown, CONTROL_CASE.name, facts)?;
    let policy = CONTROL_CASE.policy(&id);
    fscrypt::set_policy(&dir_file, &shown, &policy)?;
    check_policy(&dir_file, &shown, &policy)?;
    let path = dir.join(CONTROL_FILE.leaf);
    let content_seed = data::content_seed(state.seed, &CONTROL_CASE.file_name(&CONTROL_FILE));
    let (control, _) = files::write(&path, &CONTROL_FILE, content_seed)?;
    let meta = control
        .metadata()
        .map_err(|e| Failure(format!("fstat {}: {e}", path.display())))?;
    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    let entry = files::manifest_entry(&CONTROL_CASE, &CONTROL_FILE, key_seed, content_seed, &meta);
    facts.set(FACT_MANIFEST, files::manifest_fact(&uuid, &[entry]));
    loaded.push((dir_file, shown, id));

    let request = ScanRequest {
        wrapped: wrapped_refs,
        raw_controls: vec![RawKeyRef {
            name: CONTROL_CASE.name.to_owned(),
            master_key_seed: data::seed_hex(key_seed),
            fs_uuid: uuid,
        }],
        hold_ms: HOLD.as_millis() as u64,
    };
    let mut signal = Facts::new();
    signal.set(
        FACT_MEMORY_SCAN,
        serde_json::to_value(&request).unwrap_or_default(),
    );
    ctx.step(format!(
        "holding {} s with {} keys loaded while the host scans guest memory",
        HOLD.as_secs(),
        loaded.len()
    ));
    report::with(|r| r.signal_with(SIGNAL_SCAN_GUEST_MEMORY, signal));
    std::thread::sleep(HOLD);

    for (file, shown, id) in &loaded {
        expect_present(file, shown, id)?;
    }
    files::read_back(
        &path,
        &CONTROL_FILE,
        content_seed,
        CONTROL_CASE.data_unit_size(),
    )?;
    facts
        .set("wrapped_keys", request.wrapped.len())
        .set("hold_ms", request.hold_ms);
    Ok(format!(
        "held {} s after the signal with {} hardware-wrapped keys and the raw-key control \
         (IV_INO_LBLK_64) loaded; the host's memory-scan/* tests give the verdict",
        HOLD.as_secs(),
        policies.len(),
    ))
}

/// Fails unless the key `id` is present on the filesystem of `file`.
fn expect_present(file: &File, shown: &str, id: &KeyIdentifier) -> Result<(), Failure> {
    let (status, _, _) = fscrypt::key_status(file, shown, id)?;
    if status != FSCRYPT_KEY_STATUS_PRESENT {
        return fail(format!(
            "the key {} of {shown} is not loaded (status {status}): the scan would prove nothing",
            id.to_hex()
        ));
    }
    Ok(())
}
