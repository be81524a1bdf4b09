//! `plain-files`: unencrypted files with known contents next to the
//! encrypted ones, listed in the manifest's `plain_files`. On a device
//! without a default key the host's verifier finds their contents in the
//! clear at their blocks (a positive control of its block mapping and
//! generator); on a device with one, only in the decrypted view, never on
//! the raw image. Either way the guest sees a normal disk: the files read
//! back after the page cache is dropped.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::Duration;

use icelab_contract::manifest::{Manifest, PlainFile, Plaintext};
use icelab_contract::record::FACT_MANIFEST;

use crate::data;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;

/// `plain-files`.
pub const PLAIN_FILES: TestDef = TestDef {
    name: "plain-files",
    timeout: Duration::from_secs(120),
    needs: &["mkfs-mount"],
    fatal: false,
    run: plain_files,
};

/// The files, under the mount point (no policy there): a partial block,
/// several blocks and a partial tail, and 1 MiB.
const FILES: [(&str, u64); 3] = [
    ("plain/small", 1000),
    ("plain/blocks", 5 * 4096 + 7),
    ("plain/big", 1 << 20),
];

fn plain_files(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mkfs-mount failed)");
    }
    let root = &ctx.config.mountpoint;
    let dir = root.join("plain");
    fs::create_dir_all(&dir)
        .map_err(|e| Failure(format!("cannot create {}: {e}", dir.display())))?;
    let mut entries = Vec::new();
    for (name, size) in FILES {
        let path = root.join(name);
        let shown = path.display().to_string();
        ctx.step(format!("writing {shown} ({size} bytes, unencrypted)"));
        let seed = data::content_seed(state.seed, name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Failure(format!("cannot create {shown}: {e}")))?;
        file.write_all(&data::bytes_at(seed, 0, size as usize))
            .map_err(|e| Failure(format!("writing {shown}: {e}")))?;
        file.sync_all()
            .map_err(|e| Failure(format!("fsync {shown}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| Failure(format!("fstat {shown}: {e}")))?;
        entries.push(PlainFile {
            name: Some(name.to_owned()),
            inode: meta.ino(),
            size: Some(meta.len()),
            plaintext: Plaintext::Splitmix64 { seed, ranges: None },
        });
    }
    steps::sync_and_drop_caches()?;
    for (name, size) in FILES {
        let path = root.join(name);
        ctx.step(format!("reading {} back", path.display()));
        let got =
            fs::read(&path).map_err(|e| Failure(format!("reading {}: {e}", path.display())))?;
        let want = data::bytes_at(data::content_seed(state.seed, name), 0, size as usize);
        if got != want {
            return fail(format!(
                "{} reads back {} bytes that differ from the {size} written",
                path.display(),
                got.len()
            ));
        }
    }
    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    let manifest = Manifest {
        fs_uuid: Some(uuid),
        files: Vec::new(),
        plain_files: entries,
    };
    facts.set(
        FACT_MANIFEST,
        serde_json::to_value(manifest).map_err(|e| Failure(format!("manifest: {e}")))?,
    );
    Ok(format!(
        "{} unencrypted files written, synced and read back",
        FILES.len()
    ))
}
