//! The ext4 filesystem on the disk: mkfs, mount (and the options
//! /proc/mounts shows), the UUID from the superblock.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use super::driver::{modprobe, modprobe_usable};
use crate::command;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, fail};
use crate::sys::{self, SysError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
