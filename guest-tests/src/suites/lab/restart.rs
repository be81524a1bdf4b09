//! `write-through-restart` (the `lab-restart` boot): a write-fsync loop
//! on an inlinecrypt ext4 file while the host kills `icelab serve` with
//! SIGKILL and starts it again, and QEMU reconnects to it.
//!
//! The test signals the host (`restart-device`) after [`BEFORE_SIGNAL`]
//! chunks and keeps writing: each chunk is [`CHUNK`] generator bytes
//! written with `pwrite` and made durable with `fdatasync`. The restarted
//! engine has empty keyslots; the driver programs them again (QEMU's
//! config change interrupt, or a crypto request the new engine failed)
//! and resends what failed. The test fails on any I/O error reaching it.
//! It stops [`AFTER_RESTART`] chunks after the driver's kernel log line
//! saying it reprogrammed the keyslots, then drops the caches and reads
//! the whole file back; the host's verifier checks every data unit on the
//! image. The longest write+fdatasync is the outage the guest saw.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::files;
use super::path::{self, case, whole};
use super::plan::{Case, Scheme};
use crate::data;
use crate::kmsg;
use crate::report::{self, Facts};
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;
use icelab_contract::record::SIGNAL_RESTART_DEVICE;

/// `write-through-restart`.
pub const WRITE_THROUGH_RESTART: TestDef = TestDef {
    name: "write-through-restart",
    timeout: Duration::from_secs(600),
    needs: &["mkfs-mount"],
    fatal: false,
    run: write_through_restart,
};

/// What the driver logs when it has programmed the keyslots again.
pub const REPROGRAM_LOG: &str = "keyslots programmed again";
/// Bytes per write+fdatasync.
pub const CHUNK: usize = 64 * 1024;
/// Chunks written before the signal.
pub const BEFORE_SIGNAL: u64 = 16;
/// Chunks written after the driver reprogrammed its keyslots.
pub const AFTER_RESTART: u64 = 32;
/// At most this many chunks (128 MiB): the test fails if the restart has
/// not been seen by then.
pub const MAX_CHUNKS: u64 = 2048;
/// Look for the driver's log line every this many chunks.
const KMSG_EVERY: u64 = 8;

fn restart_case() -> Case {
    case("restart", Scheme::PerFile)
}

/// What the write loop saw.
struct Loop {
    chunks: u64,
    longest: Duration,
    longest_at: u64,
    reprogrammed_at: Option<u64>,
}

fn write_loop(ctx: &Ctx, file: &std::fs::File, shown: &str, seed: u64) -> Result<Loop, Failure> {
    let mut buf = vec![0u8; CHUNK];
    let mut seen = Loop {
        chunks: 0,
        longest: Duration::ZERO,
        longest_at: 0,
        reprogrammed_at: None,
    };
    let deadline = Instant::now() + ctx.scaled(Duration::from_secs(300));
    for i in 0..MAX_CHUNKS {
        let at = i * CHUNK as u64;
        data::fill_at(seed, at, &mut buf);
        let started = Instant::now();
        file.write_all_at(&buf, at).map_err(|e| {
            Failure(format!(
                "an I/O error reached the application: pwrite of {shown} at {at}: {e}"
            ))
        })?;
        file.sync_data().map_err(|e| {
            Failure(format!(
                "an I/O error reached the application: fdatasync of {shown} after byte {at}: {e}"
            ))
        })?;
        let took = started.elapsed();
        if took > seen.longest {
            seen.longest = took;
            seen.longest_at = i;
        }
        seen.chunks = i + 1;
        if seen.chunks == BEFORE_SIGNAL {
            ctx.step(format!(
                "{BEFORE_SIGNAL} chunks written: asking the host to restart the device"
            ));
            report::with(|r| r.signal(SIGNAL_RESTART_DEVICE));
        }
        if seen.chunks > BEFORE_SIGNAL && seen.reprogrammed_at.is_none() && i % KMSG_EVERY == 0 {
            let log = kmsg::read_all(Path::new("/dev/kmsg"))
                .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
            if log.iter().any(|r| r.text.contains(REPROGRAM_LOG)) {
                ctx.step(format!("the driver reprogrammed its keyslots (chunk {i})"));
                seen.reprogrammed_at = Some(i);
            }
        }
        if let Some(at) = seen.reprogrammed_at
            && i >= at + AFTER_RESTART
        {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    fail(format!(
        "{} chunks written, longest write+fdatasync {:.2} s, but the driver never logged \
         {REPROGRAM_LOG:?}: the device was not restarted during the writes (did the host act \
         on the {SIGNAL_RESTART_DEVICE} signal?)",
        seen.chunks,
        seen.longest.as_secs_f64()
    ))
}

fn write_through_restart(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    let case = restart_case();
    let dir = path::policy_dir(ctx, state, facts, &case)?;
    let leaf = "log";
    let file_path = dir.path.join(leaf);
    let shown = file_path.display().to_string();
    let seed = data::content_seed(state.seed, &case.file_name(&whole(leaf, 0)));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&file_path)
        .map_err(|e| Failure(format!("cannot create {shown}: {e}")))?;
    ctx.step(format!("write+fdatasync loop on {shown}"));
    let seen = write_loop(ctx, &file, &shown, seed)?;
    let size = seen.chunks * CHUNK as u64;
    facts
        .set("chunks", seen.chunks)
        .set("chunk_bytes", CHUNK as u64)
        .set("longest_write_fdatasync_s", seen.longest.as_secs_f64())
        .set("longest_at_chunk", seen.longest_at)
        .set("reprogrammed_at_chunk", json!(seen.reprogrammed_at));

    let spec = whole(leaf, size);
    let meta = file
        .metadata()
        .map_err(|e| Failure(format!("fstat {shown}: {e}")))?;
    drop(file);
    let manifest = vec![files::manifest_entry(
        &case,
        &spec,
        dir.key_seed,
        seed,
        &meta,
    )];
    path::set_manifest(ctx, facts, &manifest)?;
    ctx.step("sync, drop_caches, reading the file back");
    steps::sync_and_drop_caches()?;
    path::read_files(ctx, state, &case, &dir.path, &[spec])?;
    Ok(format!(
        "{} chunks of {} KiB written and fdatasync'd through a device restart with no I/O \
         error; longest write+fdatasync {:.2} s (chunk {}); read back intact",
        seen.chunks,
        CHUNK / 1024,
        seen.longest.as_secs_f64(),
        seen.longest_at
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_outlasts_the_signal() {
        const { assert!(BEFORE_SIGNAL < MAX_CHUNKS && BEFORE_SIGNAL + AFTER_RESTART < MAX_CHUNKS) };
        assert_eq!(CHUNK % 4096, 0, "whole data units per chunk");
    }
}
