//! The smoke suite (issue 3, item 6): does a stock kernel encrypt through
//! the device's inline crypto engine (`icelab.expect=native`), or through
//! blk-crypto-fallback when the device offers none
//! (`icelab.expect=fallback`)?
//!
//! | test | checks |
//! |---|---|
//! | `driver-load` | the module loads (finit_module), the disk appears within 20 s |
//! | `crypto-sysfs` | `queue/crypto/` matches `icelab.slots`/`max_dun_bits`/`modes` (native) or is absent (fallback) |
//! | `mkfs-mount` | mkfs.ext4 -O encrypt -b 4096, mount -o inlinecrypt |
//! | `fscrypt-roundtrip` | v2 key + AES-256-XTS/AES-256-CTS policy, 3 files written, synced, caches dropped, read back identical |
//! | `blk-crypto-path` | the kernel log says fscrypt uses "blk-crypto (native)" / "blk-crypto-fallback" |
//! | `unmount` | the key is removed (FS_IOC_REMOVE_ENCRYPTION_KEY) and the filesystem unmounted |

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::steps::{self, AES_256_XTS, CryptoExpect};
use crate::cmdline::Expect;
use crate::data;
use crate::fscrypt::{self, FscryptPolicyV2, MasterKey};
use crate::kmsg;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::sys;

/// The smoke suite's tests, in order.
pub const TESTS: &[TestDef] = &[
    TestDef {
        name: "driver-load",
        timeout: Duration::from_secs(90),
        needs: &[],
        fatal: true,
        run: driver_load,
    },
    TestDef {
        name: "crypto-sysfs",
        timeout: Duration::from_secs(10),
        needs: &[],
        fatal: false,
        run: crypto_sysfs,
    },
    TestDef {
        name: "raw-io",
        timeout: Duration::from_secs(60),
        needs: &[],
        fatal: false,
        run: raw_io,
    },
    TestDef {
        name: "mkfs-mount",
        timeout: Duration::from_secs(120),
        needs: &[],
        fatal: false,
        run: mkfs_mount,
    },
    TestDef {
        name: "fscrypt-roundtrip",
        timeout: Duration::from_secs(180),
        needs: &["mkfs-mount"],
        fatal: false,
        run: fscrypt_roundtrip,
    },
    TestDef {
        name: "blk-crypto-path",
        timeout: Duration::from_secs(10),
        needs: &["fscrypt-roundtrip"],
        fatal: false,
        run: blk_crypto_path,
    },
    // No `needs`: it cleans up whatever was mounted, even after a failure
    // of mkfs-mount's later checks.
    TestDef {
        name: "unmount",
        timeout: Duration::from_secs(60),
        needs: &[],
        fatal: false,
        run: unmount,
    },
    TestDef {
        name: "driver-reload",
        timeout: Duration::from_secs(90),
        needs: &["unmount"],
        fatal: false,
        run: driver_reload,
    },
    TestDef {
        name: "kernel-clean",
        timeout: Duration::from_secs(10),
        needs: &[],
        fatal: false,
        run: kernel_clean,
    },
];

/// Bytes `raw-io` writes, zeroes and discards, at the end of the disk
/// (before `mkfs-mount` puts a filesystem there).
const RAW_IO_BYTES: usize = 256 << 10;

/// `raw-io`: plain block I/O through the driver, no filesystem: O_DIRECT
/// write and read back, BLKZEROOUT (WRITE_ZEROES) reads back zeroes,
/// BLKDISCARD (DISCARD) is accepted.
fn raw_io(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let disk = &ctx.config.disk;
    let shown = disk.display().to_string();
    let size = steps::disk_size(&ctx.config.disk_name())
        .ok_or_else(|| Failure(format!("cannot read the size of {shown}")))?;
    let len = RAW_IO_BYTES as u64;
    if size < 2 * len {
        return fail(format!("{shown} has only {size} bytes"));
    }
    let offset = (size - 2 * len) & !4095;
    facts.set("offset", offset).set("bytes", len);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(disk)
        .map_err(|e| Failure(format!("cannot open {shown} with O_DIRECT: {e}")))?;
    let mut raw = vec![0u8; RAW_IO_BYTES + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[start..start + RAW_IO_BYTES];
    data::fill_at(0x7261_772d_696f, offset, buf);
    let want = buf.to_vec();
    ctx.step(format!(
        "O_DIRECT write and read of {len} bytes at {offset}"
    ));
    file.write_all_at(buf, offset)
        .and_then(|()| file.sync_data())
        .map_err(|e| Failure(format!("O_DIRECT write of {shown} at {offset}: {e}")))?;
    buf.fill(0);
    file.read_exact_at(buf, offset)
        .map_err(|e| Failure(format!("O_DIRECT read of {shown} at {offset}: {e}")))?;
    if let Some(at) = data::first_difference(buf, &want) {
        return fail(format!(
            "{shown}: byte {} read back differs",
            offset + at as u64
        ));
    }
    ctx.step("BLKZEROOUT, read back");
    sys::block_range_ioctl(&file, sys::BLKZEROOUT, "BLKZEROOUT", offset, len)?;
    file.read_exact_at(buf, offset)
        .map_err(|e| Failure(format!("O_DIRECT read of {shown} at {offset}: {e}")))?;
    if let Some(at) = buf.iter().position(|&b| b != 0) {
        return fail(format!(
            "{shown}: byte {} is not zero after BLKZEROOUT",
            offset + at as u64
        ));
    }
    ctx.step("BLKDISCARD");
    sys::block_range_ioctl(&file, sys::BLKDISCARD, "BLKDISCARD", offset, len)?;
    Ok(format!(
        "{len} bytes at {offset}: O_DIRECT write read back, BLKZEROOUT reads zeroes, BLKDISCARD accepted"
    ))
}

/// The driver module's name (KBUILD_MODNAME).
const MODULE_NAME: &str = "icelab_vblk";

/// `driver-reload`: the driver unloads (its disk goes away) and loads
/// again (the disk, and with an engine its crypto sysfs, come back).
fn driver_reload(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    if !(ctx.init || config.module_given) {
        return fail(
            "not run: the runner did not load the driver (--no-init without icelab.module)",
        );
    }
    let disk = &config.disk;
    let shown = disk.display().to_string();
    ctx.step(format!("delete_module {MODULE_NAME}"));
    sys::delete_module(MODULE_NAME)?;
    let deadline = std::time::Instant::now() + ctx.scaled(DISK_WAIT);
    while disk.exists() {
        if std::time::Instant::now() > deadline {
            return fail(format!(
                "{shown} is still there after unloading {MODULE_NAME}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut load = Facts::new();
    steps::load_driver(ctx, &mut load)?;
    let waited = steps::wait_for_block_device(disk, ctx.scaled(DISK_WAIT))?;
    facts.set(
        "disk_wait_ms",
        u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
    );
    let crypto = Path::new("/sys/block")
        .join(config.disk_name())
        .join("queue/crypto");
    let present = crypto.is_dir();
    facts.set("crypto_sysfs_present", present);
    let want = config.expect == Expect::Native;
    if present != want {
        return fail(format!(
            "after the reload {} {}, expected {}",
            crypto.display(),
            if present { "exists" } else { "is absent" },
            if want { "present" } else { "absent" }
        ));
    }
    Ok(format!(
        "{MODULE_NAME} unloaded ({shown} gone) and loaded again; {shown} back after {} ms{}",
        waited.as_millis(),
        if present { ", crypto sysfs back" } else { "" }
    ))
}

/// Kernel log lines that mean the kernel itself complained.
pub const KERNEL_COMPLAINTS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "Call Trace:",
    "general protection",
];

/// `kernel-clean`: no kernel warning, BUG, oops or call trace in the log
/// of the whole run.
/// `kernel-clean`: no kernel warning, BUG, oops or call trace in the
/// whole log (shared with the suites that end with it).
pub fn kernel_clean(_ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let complaints: Vec<&str> = records
        .iter()
        .map(|r| r.text.as_str())
        .filter(|t| KERNEL_COMPLAINTS.iter().any(|c| t.contains(c)))
        .collect();
    facts
        .set("records", records.len())
        .set("complaints", complaints.clone());
    if complaints.is_empty() {
        Ok(format!(
            "{} kernel log records, no warning, BUG, oops or call trace",
            records.len()
        ))
    } else {
        fail(format!(
            "the kernel complained {} time(s), first: {}",
            complaints.len(),
            complaints[0]
        ))
    }
}

/// How long the disk may take to appear (before `icelab.timeout_factor`).
const DISK_WAIT: Duration = Duration::from_secs(20);

/// The files fscrypt-roundtrip writes: name and size (1 B, one block, and
/// 1 MiB + 123 B: many blocks and a partial last one).
pub const FILES: &[(&str, usize)] = &[
    ("file-1", 1),
    ("file-4096", 4096),
    ("file-1048699", (1 << 20) + 123),
];

/// The directory under the mount point that gets the policy.
const ENC_DIR: &str = "enc";

/// `driver-load`: loads the driver (as PID 1, or with an explicit
/// `icelab.module`) and waits for the disk.
pub fn driver_load(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    let loaded = if ctx.init || config.module_given {
        steps::load_driver(ctx, facts)?
    } else {
        facts.set("module", Value::Null);
        "no module loaded (--no-init without icelab.module)".to_owned()
    };
    let disk = &config.disk;
    facts.set("disk", disk.display().to_string());
    ctx.step(format!("waiting for {}", disk.display()));
    let waited = steps::wait_for_block_device(disk, ctx.scaled(DISK_WAIT))?;
    let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    facts.set("disk_wait_ms", waited_ms);
    let name = config.disk_name();
    let size = steps::disk_size(&name);
    facts.set("disk_size_bytes", size);
    // Counted: the host orders the device trace by these GET_IDs.
    if let Ok((serial, _)) = crate::marks::read_serial(&name) {
        facts.set("disk_serial", serial);
    }
    Ok(format!(
        "{loaded}; {} present after {waited_ms} ms ({} bytes)",
        disk.display(),
        size.map_or_else(|| "unknown size".to_owned(), |s| s.to_string())
    ))
}

/// `crypto-sysfs`: the disk's blk-crypto capabilities as sysfs shows them.
pub fn crypto_sysfs(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    let name = config.disk_name();
    let queue = Path::new("/sys/block").join(&name).join("queue");
    let dir = queue.join("crypto");
    facts.set("path", dir.display().to_string());
    if !queue.is_dir() {
        return fail(format!(
            "{} does not exist: is {} a disk?",
            queue.display(),
            config.disk.display()
        ));
    }
    let present = dir.is_dir();
    facts.set("present", present);
    match (config.expect, present) {
        (Expect::Fallback, false) => Ok(format!(
            "{} is absent, as expected without inline encryption",
            dir.display()
        )),
        (Expect::Fallback, true) => {
            if let Ok(seen) = steps::read_crypto_sysfs(&dir) {
                facts.set("crypto", steps::crypto_facts(&seen));
            }
            fail(format!(
                "{} exists: the disk offers inline encryption, expected none (icelab.expect=fallback)",
                dir.display()
            ))
        }
        (Expect::Native, false) => fail(format!(
            "{} is absent: the disk has no blk-crypto profile (expected native inline encryption)",
            dir.display()
        )),
        (Expect::Native, true) => {
            let seen = steps::read_crypto_sysfs(&dir)?;
            facts.set("crypto", steps::crypto_facts(&seen));
            let want = CryptoExpect {
                slots: config.slots,
                max_dun_bits: config.max_dun_bits,
                modes: config.modes,
                kernel: sys::kernel_version(&ctx.uname.release),
            };
            let mismatches = steps::check_crypto_sysfs(&seen, &want);
            if !mismatches.is_empty() {
                return fail(mismatches.join("; "));
            }
            Ok(format!(
                "{} keyslots, {} DUN bits, {} {:#x}, raw keys {}",
                seen.num_keyslots,
                seen.max_dun_bits,
                AES_256_XTS,
                seen.modes.get(AES_256_XTS).copied().unwrap_or(0),
                seen.raw_keys.as_deref().unwrap_or("(no raw_keys file)")
            ))
        }
    }
}

/// `mkfs-mount`: ext4 with the encrypt feature, mounted with the
/// configured data (default `inlinecrypt`).
fn mkfs_mount(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    steps::mkfs_ext4(ctx, &config.disk, facts)?;
    let uuid = steps::read_ext4_uuid(&config.disk)?;
    facts.set("fs_uuid", uuid.clone());
    facts.set("block_size", 4096);
    facts.set("mountpoint", config.mountpoint.display().to_string());
    facts.set("mount_data", config.mount_data.clone());
    let options = steps::mount_configured(ctx, state, facts)?;
    Ok(format!(
        "ext4 (uuid {uuid}) on {} mounted at {} with {options}",
        config.disk.display(),
        config.mountpoint.display()
    ))
}

/// The v2 policy the smoke suite sets: AES-256-XTS contents, AES-256-CTS
/// filenames, flags 0 (filenames padded to 4 bytes, per-file keys), data
/// unit = filesystem block.
pub fn smoke_policy(key: &fscrypt::KeyIdentifier) -> FscryptPolicyV2 {
    FscryptPolicyV2 {
        version: fscrypt::FSCRYPT_POLICY_V2,
        contents_encryption_mode: fscrypt::FSCRYPT_MODE_AES_256_XTS,
        filenames_encryption_mode: fscrypt::FSCRYPT_MODE_AES_256_CTS,
        flags: 0,
        log2_data_unit_size: 0,
        reserved: [0; 3],
        master_key_identifier: key.0,
    }
}

/// The facts describing a policy.
pub fn policy_facts(p: &FscryptPolicyV2) -> Value {
    json!({
        "version": p.version,
        "contents_encryption_mode": fscrypt::mode_name(p.contents_encryption_mode),
        "filenames_encryption_mode": fscrypt::mode_name(p.filenames_encryption_mode),
        "flags": p.flags,
        "log2_data_unit_size": p.log2_data_unit_size,
        "master_key_identifier": data::hex(&p.master_key_identifier),
    })
}

/// `fscrypt-roundtrip`: adds a random v2 key, sets the policy on an empty
/// directory, writes the files, syncs, drops caches and reads them back.
fn fscrypt_roundtrip(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let dir = ctx.config.mountpoint.join(ENC_DIR);
    let dir_name = dir.display().to_string();
    fs::create_dir(&dir).map_err(|e| Failure(format!("cannot create {dir_name}: {e}")))?;
    let dir_file = File::open(&dir).map_err(|e| Failure(format!("cannot open {dir_name}: {e}")))?;

    ctx.step("FS_IOC_ADD_ENCRYPTION_KEY");
    let key = MasterKey::random()?;
    let id = fscrypt::add_key(&dir_file, &dir_name, &key)?;
    drop(key);
    state.key = Some(id);
    facts.set("key_identifier", id.to_hex());

    ctx.step("FS_IOC_SET_ENCRYPTION_POLICY");
    let policy = smoke_policy(&id);
    facts.set("policy", policy_facts(&policy));
    fscrypt::set_policy(&dir_file, &dir_name, &policy)?;
    facts.set("directory", dir_name.clone());
    facts.set("seed", data::seed_hex(state.seed));

    let mut files = Vec::new();
    for &(name, size) in FILES {
        let path = dir.join(name);
        let shown = path.display().to_string();
        ctx.step(format!("writing {shown}"));
        let contents = data::file_contents(state.seed, name, size);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Failure(format!("cannot create {shown}: {e}")))?;
        f.write_all(&contents)
            .map_err(|e| Failure(format!("writing {size} bytes to {shown}: {e}")))?;
        f.sync_all()
            .map_err(|e| Failure(format!("fsync {shown}: {e}")))?;
        let got = fscrypt::get_policy(&f, &shown)?;
        if got != policy {
            return fail(format!(
                "{shown} has policy {}, expected {}",
                policy_facts(&got),
                policy_facts(&policy)
            ));
        }
        let nonce = fscrypt::get_nonce(&f, &shown)?;
        let meta = f
            .metadata()
            .map_err(|e| Failure(format!("fstat {shown}: {e}")))?;
        files.push(json!({
            "name": name,
            "path": shown,
            "size": meta.len(),
            "inode": meta.ino(),
            "nonce": data::hex(&nonce),
            "content_seed": data::seed_hex(data::file_seed(state.seed, name)),
        }));
    }
    facts.set("files", files);

    ctx.step("sync and drop_caches");
    steps::sync_and_drop_caches()?;

    for &(name, size) in FILES {
        let path = dir.join(name);
        let shown = path.display().to_string();
        ctx.step(format!("reading {shown}"));
        let mut back = Vec::with_capacity(size);
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut back))
            .map_err(|e| Failure(format!("reading {shown} back: {e}")))?;
        let want = data::file_contents(state.seed, name, size);
        if let Some(at) = data::first_difference(&back, &want) {
            return fail(format!(
                "{shown}: read back {} bytes, differs from what was written ({size} bytes) at byte {at} \
                 (data unit {} of 4096 bytes)",
                back.len(),
                at / 4096
            ));
        }
    }
    Ok(format!(
        "{} files ({}) read back identical after sync and drop_caches, key {}",
        FILES.len(),
        FILES
            .iter()
            .map(|(_, s)| format!("{s} B"))
            .collect::<Vec<_>>()
            .join(", "),
        id.to_hex()
    ))
}

/// `blk-crypto-path`: the kernel log line that says which blk-crypto
/// implementation fscrypt chose for AES-256-XTS.
fn blk_crypto_path(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let expect = ctx.config.expect;
    let want = steps::impl_message(AES_256_XTS, expect);
    facts.set("expected_line", want.clone());
    ctx.step("reading /dev/kmsg");
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    facts.set("kernel_log", steps::crypto_log_lines(&records, 20));
    let found = steps::find_impl_lines(&records, AES_256_XTS, expect);
    if let Some(other) = found.other {
        facts.set("unexpected_line", other.text.clone());
    }
    match (found.expected, found.other) {
        (Some(line), None) => {
            facts.set("matched_line", line.text.clone());
            facts.set("matched_seq", line.seq);
            facts.set("matched_ts_usec", line.ts_usec);
            Ok(format!("kernel log: {:?}", line.text))
        }
        (Some(line), Some(other)) => {
            facts.set("matched_line", line.text.clone());
            fail(format!(
                "the kernel log has both {:?} and {:?}",
                line.text, other.text
            ))
        }
        (None, Some(other)) => fail(format!(
            "fscrypt used the other implementation: {:?} (expected {want:?}, icelab.expect={})",
            other.text,
            expect.name()
        )),
        (None, None) => fail(format!(
            "no {want:?} in the kernel log ({} records read): fscrypt did not use blk-crypto \
             (mounted without inlinecrypt?)",
            records.len()
        )),
    }
}

/// `unmount`: removes the key (if one was added) and unmounts whatever
/// mkfs-mount mounted.
fn unmount(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let mnt = &ctx.config.mountpoint;
    let shown = mnt.display().to_string();
    facts.set("mountpoint", shown.clone());
    if !state.mounted {
        return fail(format!(
            "not run: nothing is mounted at {shown} (mkfs-mount failed)"
        ));
    }
    let mut removed = String::new();
    if let Some(id) = state.key {
        ctx.step("FS_IOC_REMOVE_ENCRYPTION_KEY");
        let root = File::open(mnt).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
        let flags = fscrypt::remove_key(&root, &shown, &id)?;
        facts.set("removal_status_flags", flags);
        let (status, _, _) = fscrypt::key_status(&root, &shown, &id)?;
        facts.set("key_status_after", status);
        drop(root);
        if flags & fscrypt::FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY != 0 {
            return fail(format!(
                "removing key {} left files busy (flags {flags:#x})",
                id.to_hex()
            ));
        }
        if status != fscrypt::FSCRYPT_KEY_STATUS_ABSENT {
            return fail(format!(
                "key {} has status {status} after removal, expected 1 (absent)",
                id.to_hex()
            ));
        }
        state.key = None;
        removed = format!("key {} removed, ", id.to_hex());
    }
    ctx.step(format!("umount {shown}"));
    sys::umount(mnt)?;
    state.mounted = false;
    Ok(format!("{removed}{shown} unmounted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_interface() {
        let names: Vec<&str> = TESTS.iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "driver-load",
                "crypto-sysfs",
                "raw-io",
                "mkfs-mount",
                "fscrypt-roundtrip",
                "blk-crypto-path",
                "unmount",
                "driver-reload",
                "kernel-clean"
            ]
        );
        assert!(TESTS[0].fatal);
    }

    #[test]
    fn kernel_complaints_are_recognised() {
        let line = "WARNING: CPU: 1 PID: 77 at block/blk-crypto-profile.c:123";
        assert!(KERNEL_COMPLAINTS.iter().any(|c| line.contains(c)));
        let fine = "fscrypt: AES-256-XTS using blk-crypto (native)";
        assert!(!KERNEL_COMPLAINTS.iter().any(|c| fine.contains(c)));
    }

    #[test]
    fn needs_name_earlier_tests() {
        for (i, t) in TESTS.iter().enumerate() {
            for need in t.needs {
                assert!(
                    TESTS[..i].iter().any(|e| e.name == *need),
                    "{} needs unknown {need}",
                    t.name
                );
            }
        }
    }

    #[test]
    fn policy_is_v2_xts_cts_flags_zero() {
        let id = fscrypt::KeyIdentifier([7; 16]);
        let p = smoke_policy(&id);
        let f = policy_facts(&p);
        assert_eq!(f["version"], 2);
        assert_eq!(f["contents_encryption_mode"], "AES-256-XTS");
        assert_eq!(f["filenames_encryption_mode"], "AES-256-CTS");
        assert_eq!(f["flags"], 0);
        assert_eq!(f["master_key_identifier"], "07".repeat(16));
    }

    #[test]
    fn file_sizes_are_the_interface() {
        let sizes: Vec<usize> = FILES.iter().map(|f| f.1).collect();
        assert_eq!(sizes, [1, 4096, 1_048_699]);
    }
}
