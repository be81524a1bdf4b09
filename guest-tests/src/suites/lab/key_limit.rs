//! `key-limit-refuse`: on a device with `--key-usage-limit 64K
//! --key-usage-limit-action refuse`, what a guest sees when a key reaches
//! its limit. A per-file-key directory: a small file (8 KiB, within the
//! limit) is written, synced and read back; a large one (256 KiB, past it)
//! must fail to sync with EIO, because the device refuses the key's
//! writes past the limit. The filesystem stays usable (the small file
//! reads back after the failure). The host checks the device's side
//! (`key-usage`: the refused key, its one `key-usage-limit` event).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::Duration;

use serde_json::json;

use super::path::{case, policy_dir, whole, write_files};
use super::plan::Scheme;
use crate::data;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;

/// `key-limit-refuse`.
pub const KEY_LIMIT_REFUSE: TestDef = TestDef {
    name: "key-limit-refuse",
    timeout: Duration::from_secs(180),
    needs: &["mkfs-mount"],
    fatal: false,
    run: key_limit_refuse,
};

/// Bytes of the file past the limit.
const BIG: usize = 256 << 10;

fn key_limit_refuse(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let case = case("limit/refuse", Scheme::PerFile);
    let dir = policy_dir(ctx, state, facts, &case)?;
    let mut manifest = Vec::new();
    write_files(
        ctx,
        state,
        &case,
        &dir,
        &[whole("small", 8192)],
        &mut manifest,
    )?;
    super::path::set_manifest(ctx, facts, &manifest)?;

    let path = dir.path.join("big");
    let shown = path.display().to_string();
    ctx.step(format!(
        "writing {shown} ({BIG} bytes, past the key's limit)"
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Failure(format!("cannot create {shown}: {e}")))?;
    let seed = data::content_seed(state.seed, "limit/refuse/big");
    file.write_all(&data::bytes_at(seed, 0, BIG))
        .map_err(|e| Failure(format!("writing {shown}: {e}")))?;
    let synced = file.sync_all();
    drop(file);
    let errno = synced.as_ref().err().and_then(std::io::Error::raw_os_error);
    facts.set("big_sync_errno", json!(errno));
    match synced {
        Ok(()) => {
            return fail(format!(
                "fsync of {shown} succeeded: the device wrote {BIG} bytes under a key limited \
                 to 64 KiB (--key-usage-limit-action refuse)"
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        Err(e) => return fail(format!("fsync of {shown} failed with {e}, expected EIO")),
    }
    // The filesystem and the other file are unharmed.
    steps::sync_and_drop_caches().ok();
    let small = dir.path.join("small");
    let got = fs::read(&small).map_err(|e| Failure(format!("reading {}: {e}", small.display())))?;
    let want = data::bytes_at(
        data::content_seed(state.seed, &case.file_name(&whole("small", 8192))),
        0,
        8192,
    );
    if got != want {
        return fail(format!(
            "{} no longer reads back after the refusal",
            small.display()
        ));
    }
    Ok(format!(
        "8 KiB under the key synced and read back; {BIG} bytes under it failed to sync with EIO"
    ))
}
