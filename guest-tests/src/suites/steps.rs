//! Steps that suites share: loading the driver, reading the crypto sysfs
//! directory, formatting and mounting ext4, reading the kernel log for
//! fscrypt's choice of blk-crypto implementation.
//!
//! Pure parts (parsers, matchers) are separate functions with unit tests;
//! the parts that touch the system record what they see in the test's
//! facts.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cmdline::Expect;
use crate::command;
use crate::kmsg;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, fail};
use crate::sys::{self, Errno, SysError};

// --- kernel modules ---------------------------------------------------------------

/// How long one modprobe may take (TCG guests are slow).
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// modprobe, if the initramfs has one and a module tree for the running
/// kernel to go with it.
pub fn modprobe_usable(release: &str) -> Option<PathBuf> {
    let tree = Path::new("/lib/modules").join(release);
    let modprobe = command::which("modprobe")?;
    tree.join("modules.dep").is_file().then_some(modprobe)
}

/// Loads `name` with `modprobe -q` (dependencies included).
pub fn modprobe(name: &str, scale: u32) -> command::Result<()> {
    command::run(
        "modprobe",
        &["-q", name],
        MODPROBE_TIMEOUT.saturating_mul(scale),
    )
    .map(|_| ())
}

/// The `depends=` list of a module file's .modinfo section (empty for a
/// compressed file or a module without dependencies).
pub fn module_depends(image: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = image.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &image[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a module file is compressed (the kernel decompresses it with
/// `MODULE_INIT_COMPRESSED_FILE`).
pub fn is_compressed_module(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("xz" | "zst" | "gz")
    )
}

/// The driver-load step: best-effort modprobe of `icelab.preload` and of
/// the module's own dependencies, then finit_module(2) of the module.
/// Records `module`, `preload`, `depends`, `already_loaded`, and on failure
/// `errno`/`errno_name`.
pub fn load_driver(ctx: &Ctx, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    let path = &config.module;
    facts.set("module", path.display().to_string());
    ctx.step(format!("reading {}", path.display()));
    let image = match fs::read(path) {
        Ok(image) => image,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            record_errno(facts, errno);
            return fail(format!(
                "cannot read the driver module {}: {}",
                path.display(),
                Errno(errno)
            ));
        }
    };
    let depends = if is_compressed_module(path) {
        Vec::new()
    } else {
        module_depends(&image)
    };
    facts.set("depends", depends.clone());

    let mut preload = serde_json::Map::new();
    match modprobe_usable(&ctx.uname.release) {
        Some(_) => {
            for name in config.preload.iter().chain(&depends) {
                ctx.step(format!("modprobe {name}"));
                let outcome = match modprobe(name, config.timeout_factor) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => e.to_string(),
                };
                preload.insert(name.clone(), Value::String(outcome));
            }
        }
        None => {
            facts.set(
                "preload_skipped",
                format!(
                    "no modprobe in PATH or no /lib/modules/{}/modules.dep",
                    ctx.uname.release
                ),
            );
        }
    }
    facts.set("preload", Value::Object(preload));

    ctx.step(format!("finit_module {}", path.display()));
    let file = File::open(path).map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(0);
        record_errno(facts, errno);
        Failure(format!(
            "cannot open the driver module {}: {}",
            path.display(),
            Errno(errno)
        ))
    })?;
    let flags = if is_compressed_module(path) {
        sys::MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match sys::finit_module(&file, &path.display().to_string(), flags) {
        Ok(()) => {
            facts.set("already_loaded", false);
            Ok(format!("loaded {}", path.display()))
        }
        Err(e) if e.errno == libc::EEXIST => {
            facts.set("already_loaded", true);
            Ok(format!("{} was already loaded", path.display()))
        }
        Err(e) => {
            record_errno(facts, e.errno);
            let hint = match e.errno {
                libc::ENOENT => format!(
                    " (unknown symbols: are its dependencies {depends:?} loaded? see the kernel log)"
                ),
                libc::ENOEXEC => " (built for another kernel or architecture?)".to_owned(),
                _ => String::new(),
            };
            fail(format!("{e}{hint}"))
        }
    }
}

fn record_errno(facts: &mut Facts, errno: i32) {
    facts
        .set("errno", errno)
        .set("errno_name", Errno(errno).name());
}

/// Waits until `disk` exists as a block device, polling every 50 ms, for
/// at most `timeout`. Returns how long it took.
pub fn wait_for_block_device(disk: &Path, timeout: Duration) -> Result<Duration, Failure> {
    let start = Instant::now();
    loop {
        match fs::metadata(disk) {
            Ok(m) if m.file_type().is_block_device() => return Ok(start.elapsed()),
            Ok(_) => {
                return fail(format!(
                    "{} exists but is not a block device",
                    disk.display()
                ));
            }
            Err(_) if start.elapsed() < timeout => thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return fail(format!(
                    "{} did not appear within {timeout:?} ({e}); the driver bound no disk",
                    disk.display()
                ));
            }
        }
    }
}

/// The disk's size in bytes, from /sys/block/NAME/size (512-byte sectors).
pub fn disk_size(name: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/sys/block/{name}/size")).ok()?;
    text.trim().parse::<u64>().ok()?.checked_mul(512)
}

// --- crypto sysfs ----------------------------------------------------------------

/// What /sys/block/NAME/queue/crypto/ shows (Documentation/ABI/stable/
/// sysfs-block): `num_keyslots` and `max_dun_bits` in decimal, one file
/// per supported mode under `modes/` with the data unit size mask in hex
/// (`0x%x`), and, since Linux 6.15, `raw_keys` / `hw_wrapped_keys`, each
/// present only when that key type is supported and reading `supported`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CryptoSysfs {
    /// `num_keyslots`.
    pub num_keyslots: u32,
    /// `max_dun_bits`.
    pub max_dun_bits: u32,
    /// `modes/*`: mode name to mask.
    pub modes: BTreeMap<String, u32>,
    /// `raw_keys`, if present (trimmed).
    pub raw_keys: Option<String>,
    /// `hw_wrapped_keys`, if present (trimmed).
    pub hw_wrapped_keys: Option<String>,
}

/// Errors reading the crypto directory: which file and why.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file's contents are not in the documented format.
    #[error("{path} reads {text:?}, expected {expected}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
        /// The documented format.
        expected: &'static str,
    },
}

fn read_trimmed(path: &Path) -> Result<String, SysfsError> {
    fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| SysfsError::Read {
            path: path.to_owned(),
            source,
        })
}

fn read_optional(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses a sysfs mode mask as the kernel prints it (`0x%x`).
pub fn parse_mask(text: &str) -> Option<u32> {
    let hex = text.trim().strip_prefix("0x")?;
    u32::from_str_radix(hex, 16).ok()
}

fn parse_decimal(path: &Path, text: &str) -> Result<u32, SysfsError> {
    text.parse().map_err(|_| SysfsError::Format {
        path: path.to_owned(),
        text: text.to_owned(),
        expected: "a decimal number",
    })
}

/// Reads a queue/crypto directory.
pub fn read_crypto_sysfs(dir: &Path) -> Result<CryptoSysfs, SysfsError> {
    let p = dir.join("num_keyslots");
    let num_keyslots = parse_decimal(&p, &read_trimmed(&p)?)?;
    let p = dir.join("max_dun_bits");
    let max_dun_bits = parse_decimal(&p, &read_trimmed(&p)?)?;
    let modes_dir = dir.join("modes");
    let mut modes = BTreeMap::new();
    let entries = fs::read_dir(&modes_dir).map_err(|source| SysfsError::Read {
        path: modes_dir.clone(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| SysfsError::Read {
            path: modes_dir.clone(),
            source,
        })?;
        let path = entry.path();
        let text = read_trimmed(&path)?;
        let mask = parse_mask(&text).ok_or_else(|| SysfsError::Format {
            path: path.clone(),
            text: text.clone(),
            expected: "a hex mask like 0x1e00",
        })?;
        modes.insert(entry.file_name().to_string_lossy().into_owned(), mask);
    }
    Ok(CryptoSysfs {
        num_keyslots,
        max_dun_bits,
        modes,
        raw_keys: read_optional(&dir.join("raw_keys"))?,
        hw_wrapped_keys: read_optional(&dir.join("hw_wrapped_keys"))?,
    })
}

/// The sysfs name of AES-256-XTS (blk_crypto_modes[].name).
pub const AES_256_XTS: &str = "AES-256-XTS";

/// The expectations crypto-sysfs checks in native mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct CryptoExpect {
    /// `icelab.slots`.
    pub slots: Option<u32>,
    /// `icelab.max_dun_bits`.
    pub max_dun_bits: Option<u32>,
    /// `icelab.modes`.
    pub modes: Option<u32>,
    /// The kernel's (major, minor): from 6.15 on `raw_keys` must exist.
    pub kernel: Option<(u32, u32)>,
}

/// Compares what sysfs shows with the expectations; returns one line per
/// mismatch (empty when all match).
pub fn check_crypto_sysfs(seen: &CryptoSysfs, want: &CryptoExpect) -> Vec<String> {
    let mut bad = Vec::new();
    match want.slots {
        Some(n) if seen.num_keyslots != n => {
            bad.push(format!(
                "num_keyslots is {}, expected {n}",
                seen.num_keyslots
            ));
        }
        None if seen.num_keyslots == 0 => bad.push("num_keyslots is 0".to_owned()),
        _ => {}
    }
    match want.max_dun_bits {
        Some(n) if seen.max_dun_bits != n => {
            bad.push(format!(
                "max_dun_bits is {}, expected {n}",
                seen.max_dun_bits
            ));
        }
        None if seen.max_dun_bits == 0 => bad.push("max_dun_bits is 0".to_owned()),
        _ => {}
    }
    match (seen.modes.get(AES_256_XTS), want.modes) {
        (None, _) => bad.push(format!("modes/{AES_256_XTS} is absent")),
        (Some(&m), Some(w)) if m != w => {
            bad.push(format!("modes/{AES_256_XTS} is {m:#x}, expected {w:#x}"));
        }
        _ => {}
    }
    match seen.raw_keys.as_deref() {
        Some("supported") => {}
        Some(other) => bad.push(format!("raw_keys reads {other:?}, expected \"supported\"")),
        None if want.kernel.is_some_and(|k| k >= (6, 15)) => {
            bad.push(
                "raw_keys is absent (Linux 6.15+ shows it when the device supports raw keys)"
                    .to_owned(),
            );
        }
        None => {}
    }
    bad
}

/// The facts of a crypto directory.
pub fn crypto_facts(seen: &CryptoSysfs) -> Value {
    let modes: serde_json::Map<String, Value> = seen
        .modes
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(format!("{v:#x}"))))
        .collect();
    json!({
        "num_keyslots": seen.num_keyslots,
        "max_dun_bits": seen.max_dun_bits,
        "modes": modes,
        "raw_keys": seen.raw_keys,
        "hw_wrapped_keys": seen.hw_wrapped_keys,
    })
}

// --- ext4 ------------------------------------------------------------------------

/// How long mke2fs may take before `icelab.timeout_factor`.
const MKFS_TIMEOUT: Duration = Duration::from_secs(90);

/// Formats `disk` as ext4 with the encrypt feature and 4 KiB blocks.
/// Uses `mkfs.ext4` if the initramfs has it, else `mke2fs -t ext4`.
/// Records `mkfs_command`.
pub fn mkfs_ext4(ctx: &Ctx, disk: &Path, facts: &mut Facts) -> Result<(), Failure> {
    mkfs_ext4_features(ctx, disk, "encrypt", facts)
}

/// Formats `disk` as ext4 with 4 KiB blocks and the comma-separated
/// `features` (`-O`), e.g. `encrypt,stable_inodes` (which IV_INO_LBLK_*
/// policies require: their keys depend on inode numbers, so the
/// filesystem must never renumber inodes). Records `mkfs_command`.
pub fn mkfs_ext4_features(
    ctx: &Ctx,
    disk: &Path,
    features: &str,
    facts: &mut Facts,
) -> Result<(), Failure> {
    let disk = disk.to_string_lossy();
    let common = ["-F", "-q", "-O", features, "-b", "4096", &disk];
    let (program, args): (&str, Vec<&str>) = if command::which("mkfs.ext4").is_some() {
        ("mkfs.ext4", common.to_vec())
    } else {
        (
            "mke2fs",
            ["-t", "ext4"].iter().chain(&common).copied().collect(),
        )
    };
    let line = format!("{program} {}", args.join(" "));
    facts.set("mkfs_command", line.clone());
    ctx.step(line);
    command::run(program, &args, ctx.scaled(MKFS_TIMEOUT))?;
    Ok(())
}

/// Mounts `disk` as ext4 on `mountpoint` with `data`; on ENODEV (ext4 not
/// loaded and no kernel modprobe helper) loads ext4 with modprobe and
/// tries once more.
pub fn mount_ext4(ctx: &Ctx, disk: &Path, mountpoint: &Path, data: &str) -> Result<(), Failure> {
    fs::create_dir_all(mountpoint).map_err(|e| {
        Failure(format!(
            "cannot create mount point {}: {e}",
            mountpoint.display()
        ))
    })?;
    let source = disk.to_string_lossy();
    ctx.step(format!("mount {source} {} -o {data}", mountpoint.display()));
    match sys::mount(&source, mountpoint, "ext4", 0, data) {
        Err(e) if e.errno == libc::ENODEV && modprobe_usable(&ctx.uname.release).is_some() => {
            ctx.step("modprobe ext4");
            modprobe("ext4", ctx.config.timeout_factor)?;
            Ok(sys::mount(&source, mountpoint, "ext4", 0, data).map_err(mount_failure)?)
        }
        other => Ok(other.map_err(mount_failure)?),
    }
}

/// Mounts `icelab.disk` on `icelab.mountpoint` with `icelab.mount_data`
/// and checks that /proc/mounts shows every requested option (a kernel
/// that ignores `inlinecrypt` fails here). Returns the options as mounted,
/// also recorded as the fact `mount_options`.
pub fn mount_configured(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    let config = &ctx.config;
    mount_ext4(ctx, &config.disk, &config.mountpoint, &config.mount_data)?;
    state.mounted = true;
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let options = mount_options(&mounts, &config.mountpoint).ok_or_else(|| {
        Failure(format!(
            "{} is not in /proc/mounts after mount",
            config.mountpoint.display()
        ))
    })?;
    facts.set("mount_options", options.clone());
    for wanted in config.mount_data.split(',').filter(|o| !o.is_empty()) {
        if !has_option(&options, wanted) {
            return fail(format!(
                "mounted, but /proc/mounts shows options {options:?} without {wanted:?}"
            ));
        }
    }
    Ok(options)
}

fn mount_failure(e: SysError) -> Failure {
    let hint = match e.errno {
        libc::EINVAL => {
            " (is the kernel built with FS_ENCRYPTION_INLINE_CRYPT? see the kernel log)"
        }
        libc::ENODEV => " (ext4 is not available)",
        _ => "",
    };
    Failure(format!("{e}{hint}"))
}

/// The options of the filesystem mounted at `mountpoint`, from the text of
/// /proc/mounts (the last entry wins, as the kernel stacks mounts).
pub fn mount_options(proc_mounts: &str, mountpoint: &Path) -> Option<String> {
    let want = mountpoint.to_string_lossy();
    proc_mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[1] == want).then(|| f[3].to_owned())
    })
}

/// Whether `option` is one of the comma-separated `options`.
pub fn has_option(options: &str, option: &str) -> bool {
    options.split(',').any(|o| o == option)
}

/// Offset of the ext4 superblock on the disk.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// `s_magic` offset within the superblock, and its value.
const S_MAGIC: usize = 0x38;
const EXT4_MAGIC: u16 = 0xef53;
/// `s_uuid` offset within the superblock.
const S_UUID: usize = 0x68;

/// The filesystem UUID from an ext4 superblock (1024 bytes), formatted
/// as `8-4-4-4-12` lower-case hex; `None` if the magic is wrong.
pub fn ext4_uuid(superblock: &[u8]) -> Option<String> {
    let magic = superblock.get(S_MAGIC..S_MAGIC + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != EXT4_MAGIC {
        return None;
    }
    let u = superblock.get(S_UUID..S_UUID + 16)?;
    let h = crate::data::hex(u);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Reads the ext4 UUID of `disk`.
pub fn read_ext4_uuid(disk: &Path) -> Result<String, Failure> {
    let file =
        File::open(disk).map_err(|e| Failure(format!("cannot open {}: {e}", disk.display())))?;
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, SUPERBLOCK_OFFSET)
        .map_err(|e| {
            Failure(format!(
                "cannot read the superblock of {}: {e}",
                disk.display()
            ))
        })?;
    ext4_uuid(&sb).ok_or_else(|| {
        Failure(format!(
            "{} has no ext4 superblock (bad magic)",
            disk.display()
        ))
    })
}

/// Writes back every dirty page (sync(2)) and drops the page, dentry and
/// inode caches, so later reads come from the disk.
pub fn sync_and_drop_caches() -> Result<(), Failure> {
    sys::sync();
    fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| Failure(format!("cannot write 3 to /proc/sys/vm/drop_caches: {e}")))
}

// --- kernel log ------------------------------------------------------------------

/// The message fscrypt logs, once per boot and mode, when it starts using
/// blk-crypto for a mode (fs/crypto/inline_crypt.c,
/// fscrypt_log_blk_crypto_impl(): `"fscrypt: %s using blk-crypto
/// (native)\n"` or `"fscrypt: %s using blk-crypto-fallback\n"` with the
/// mode's friendly name).
pub fn impl_message(mode: &str, expect: Expect) -> String {
    match expect {
        Expect::Native => format!("fscrypt: {mode} using blk-crypto (native)"),
        Expect::Fallback => format!("fscrypt: {mode} using blk-crypto-fallback"),
    }
}

/// What the kernel log says about fscrypt's implementation choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplLines<'a> {
    /// The record with the expected message, if any.
    pub expected: Option<&'a kmsg::Record>,
    /// The record with the other implementation's message, if any.
    pub other: Option<&'a kmsg::Record>,
}

/// Finds fscrypt's "using blk-crypto" records for `mode` in `records`.
pub fn find_impl_lines<'a>(
    records: &'a [kmsg::Record],
    mode: &str,
    expect: Expect,
) -> ImplLines<'a> {
    let other_expect = match expect {
        Expect::Native => Expect::Fallback,
        Expect::Fallback => Expect::Native,
    };
    let want = impl_message(mode, expect);
    let other = impl_message(mode, other_expect);
    ImplLines {
        expected: records.iter().find(|r| r.text.contains(&want)),
        other: records.iter().find(|r| r.text.contains(&other)),
    }
}

/// The records that mention fscrypt or blk-crypto (for the facts).
pub fn crypto_log_lines(records: &[kmsg::Record], max: usize) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.text.contains("fscrypt") || r.text.contains("blk-crypto"))
        .take(max)
        .map(|r| r.text.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_depends_reads_modinfo() {
        let mut image =
            b"\x7fELF....license=GPL\0depends=virtio,virtio_ring\0retpoline=Y\0".to_vec();
        assert_eq!(module_depends(&image), vec!["virtio", "virtio_ring"]);
        image = b"\0name=x\0depends=\0".to_vec();
        assert!(module_depends(&image).is_empty());
        assert!(module_depends(b"no modinfo here").is_empty());
        assert!(is_compressed_module(Path::new("/lib/modules/x.ko.xz")));
        assert!(!is_compressed_module(Path::new(
            "/lib/modules/icelab_vblk.ko"
        )));
    }

    #[test]
    fn masks_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_mask("0x1e00\n"), Some(0x1e00));
        assert_eq!(parse_mask("0x200"), Some(0x200));
        assert_eq!(parse_mask("7680"), None);
        assert_eq!(parse_mask("0xzz"), None);
    }

    fn ufs() -> CryptoSysfs {
        CryptoSysfs {
            num_keyslots: 32,
            max_dun_bits: 64,
            modes: [(AES_256_XTS.to_owned(), 0x1e00)].into_iter().collect(),
            raw_keys: Some("supported".into()),
            hw_wrapped_keys: None,
        }
    }

    #[test]
    fn crypto_sysfs_matches_and_mismatches() {
        let want = CryptoExpect {
            slots: Some(32),
            max_dun_bits: Some(64),
            modes: Some(0x1e00),
            kernel: Some((7, 3)),
        };
        assert!(check_crypto_sysfs(&ufs(), &want).is_empty());
        let mut seen = ufs();
        seen.num_keyslots = 2;
        seen.modes.insert(AES_256_XTS.into(), 0x200);
        seen.raw_keys = None;
        assert_eq!(
            check_crypto_sysfs(&seen, &want),
            vec![
                "num_keyslots is 2, expected 32",
                "modes/AES-256-XTS is 0x200, expected 0x1e00",
                "raw_keys is absent (Linux 6.15+ shows it when the device supports raw keys)",
            ]
        );
        // Older kernels have no raw_keys file; unchecked values only need
        // to be non-zero.
        let old = CryptoExpect {
            kernel: Some((6, 12)),
            ..CryptoExpect::default()
        };
        assert!(check_crypto_sysfs(&seen, &old).is_empty());
        seen.modes.clear();
        assert_eq!(
            check_crypto_sysfs(&seen, &old),
            vec!["modes/AES-256-XTS is absent"]
        );
    }

    #[test]
    fn crypto_facts_show_masks_in_hex() {
        let v = crypto_facts(&ufs());
        assert_eq!(v["modes"]["AES-256-XTS"], "0x1e00");
        assert_eq!(v["num_keyslots"], 32);
        assert_eq!(v["raw_keys"], "supported");
        assert_eq!(v["hw_wrapped_keys"], Value::Null);
    }

    #[test]
    fn reads_a_crypto_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(d.join("num_keyslots"), "32\n").expect("write");
        fs::write(d.join("max_dun_bits"), "64\n").expect("write");
        fs::write(d.join("raw_keys"), "supported\n").expect("write");
        fs::create_dir(d.join("modes")).expect("mkdir");
        fs::write(d.join("modes/AES-256-XTS"), "0x1e00\n").expect("write");
        assert_eq!(read_crypto_sysfs(d).expect("reads"), ufs());
        fs::write(d.join("modes/AES-256-XTS"), "lots\n").expect("write");
        let e = read_crypto_sysfs(d).expect_err("bad mask");
        assert!(
            e.to_string()
                .ends_with("reads \"lots\", expected a hex mask like 0x1e00"),
            "{e}"
        );
        fs::remove_file(d.join("num_keyslots")).expect("rm");
        let e = read_crypto_sysfs(d).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }

    #[test]
    fn mount_options_take_the_last_entry() {
        let mounts = "proc /proc proc rw 0 0\n/dev/vdb /mnt ext4 rw,relatime 0 0\n\
                      /dev/vda /mnt ext4 rw,relatime,inlinecrypt 0 0\n";
        let o = mount_options(mounts, Path::new("/mnt")).expect("mounted");
        assert_eq!(o, "rw,relatime,inlinecrypt");
        assert!(has_option(&o, "inlinecrypt"));
        assert!(!has_option(&o, "inline"));
        assert_eq!(mount_options(mounts, Path::new("/tmp")), None);
    }

    #[test]
    fn ext4_uuid_from_superblock() {
        let mut sb = [0u8; 1024];
        sb[S_MAGIC..S_MAGIC + 2].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        for (i, b) in sb[S_UUID..S_UUID + 16].iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            ext4_uuid(&sb).as_deref(),
            Some("00010203-0405-0607-0809-0a0b0c0d0e0f")
        );
        sb[S_MAGIC] = 0;
        assert_eq!(ext4_uuid(&sb), None);
    }

    fn rec(seq: u64, text: &str) -> kmsg::Record {
        kmsg::Record {
            prio: 6,
            seq,
            ts_usec: seq * 1000,
            text: text.into(),
        }
    }

    #[test]
    fn impl_lines_are_found_both_ways() {
        assert_eq!(
            impl_message("AES-256-XTS", Expect::Native),
            "fscrypt: AES-256-XTS using blk-crypto (native)"
        );
        let records = vec![
            rec(1, "icelab_vblk: virtio2: inline encryption: 32 keyslots"),
            rec(2, "fscrypt: AES-256-XTS using blk-crypto (native)"),
            rec(3, "EXT4-fs (vda): mounted filesystem"),
        ];
        let native = find_impl_lines(&records, AES_256_XTS, Expect::Native);
        assert_eq!(native.expected.map(|r| r.seq), Some(2));
        assert_eq!(native.other, None);
        let fallback = find_impl_lines(&records, AES_256_XTS, Expect::Fallback);
        assert_eq!(fallback.expected, None);
        assert_eq!(fallback.other.map(|r| r.seq), Some(2));
        assert_eq!(
            crypto_log_lines(&records, 10),
            vec!["fscrypt: AES-256-XTS using blk-crypto (native)"]
        );
    }
}
