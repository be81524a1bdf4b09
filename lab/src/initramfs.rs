//! The lab's initramfs: the in-guest runner as `/init`, the driver module,
//! busybox, e2fsprogs, keyutils, fscrypt and fio with the shared libraries
//! they need, all taken from the build root. No root disk is needed.

use super::cpio::Archive;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// File name of the driver module.
pub const MODULE_FILE: &str = "icelab_vblk.ko";
/// Where the module sits in the initramfs (the runner's default).
pub const MODULE_PATH: &str = "/lib/modules/icelab_vblk.ko";

/// Tools taken from the build root: (name in the initramfs, candidates in
/// the root).
const TOOLS: &[(&str, &[&str])] = &[
    ("/bin/busybox", &["usr/bin/busybox", "bin/busybox"]),
    ("/sbin/mke2fs", &["usr/sbin/mke2fs", "sbin/mke2fs"]),
    ("/sbin/debugfs", &["usr/sbin/debugfs", "sbin/debugfs"]),
    ("/bin/keyctl", &["usr/bin/keyctl", "bin/keyctl"]),
    ("/bin/fscrypt", &["usr/bin/fscrypt"]),
    ("/bin/fio", &["usr/bin/fio"]),
];

/// Busybox applets linked into /bin.
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "rmmod",
    "lsmod",
    "dmesg",
    "cat",
    "ls",
    "sync",
    "poweroff",
    "echo",
    "mkdir",
    "dd",
    "cmp",
    "sleep",
    "uname",
    "head",
    "tail",
    "grep",
    "hexdump",
    "sha256sum",
    "stat",
    "rm",
    "cp",
    "mv",
    "truncate",
    "df",
    "find",
    "xargs",
    "od",
    "wc",
];

/// Builds the initramfs from the build root `rootfs` into `dir` and
/// returns its path, `initramfs-<content hash>.cpio`.
///
/// Named by content so that concurrent runs with different runners (two
/// checkouts, or a rebuild in between) each boot their own archive; an
/// identical archive is reused. Archives of other contents untouched for a
/// day are deleted.
pub fn build(rootfs: &Path, runner: &Path, module: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut archive = Archive::new();
    for dir in [
        "/dev", "/proc", "/sys", "/tmp", "/mnt", "/run", "/etc", "/root",
    ] {
        archive.dir(dir);
    }
    archive.char_device("/dev/console", 5, 1);
    archive.char_device("/dev/null", 1, 3);
    archive.file("/init", 0o755, read(runner)?);
    archive.file(MODULE_PATH, 0o644, read(module)?);
    for (dest, candidates) in TOOLS {
        let found = candidates
            .iter()
            .map(|c| rootfs.join(c))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "the build root {} has no {dest}; delete it so `icelab build` rebuilds it",
                    rootfs.display()
                )
            })?;
        archive.file(dest, 0o755, read(&found)?);
        add_libraries(&mut archive, rootfs, &found)?;
    }
    for applet in APPLETS {
        archive.symlink(&format!("/bin/{applet}"), "busybox");
    }
    archive.symlink("/sbin/mkfs.ext4", "mke2fs");
    let mke2fs_conf = rootfs.join("etc/mke2fs.conf");
    if mke2fs_conf.is_file() {
        archive.file("/etc/mke2fs.conf", 0o644, read(&mke2fs_conf)?);
    }
    archive.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    );
    archive.file("/etc/group", 0o644, b"root:x:0:\n".to_vec());
    let mut bytes = Vec::new();
    archive
        .write_to(&mut bytes)
        .context("cannot write the initramfs")?;
    let out = dir.join(format!("initramfs-{:016x}.cpio", content_hash(&bytes)));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let unchanged = std::fs::metadata(&out).is_ok_and(|meta| meta.len() == bytes.len() as u64);
    if unchanged {
        // Fresh again, so that a concurrent run's prune leaves it alone.
        let _ = std::fs::File::options()
            .append(true)
            .open(&out)
            .and_then(|file| file.set_modified(std::time::SystemTime::now()));
    } else {
        let mut temporary = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        temporary
            .write_all(&bytes)
            .context("cannot write the initramfs")?;
        temporary
            .persist(&out)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    prune(dir, &out);
    Ok(out)
}

/// A name for `bytes` (a cache key, stable across releases).
fn content_hash(bytes: &[u8]) -> u64 {
    super::cache_key::CacheKey::default().field(bytes).finish()
}

/// Deletes initramfs archives other than `keep` not modified for a day
/// (and the single fixed-name archive of earlier versions).
fn prune(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours =
            name == "initramfs.cpio" || (name.starts_with("initramfs-") && name.ends_with(".cpio"));
        let stale = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > day);
        if ours && path != keep && (stale || name == "initramfs.cpio") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Adds the shared libraries `binary` needs, as `ldd` inside the root
/// resolves them (a static binary needs none).
fn add_libraries(archive: &mut Archive, rootfs: &Path, binary: &Path) -> anyhow::Result<()> {
    let inside = Path::new("/").join(
        binary
            .strip_prefix(rootfs)
            .context("tool outside the root")?,
    );
    let output = Command::new("chroot")
        .arg(rootfs)
        .arg("ldd")
        .arg(&inside)
        .output()
        .with_context(|| format!("cannot run ldd in the build root {}", rootfs.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(());
        }
        bail!(
            "ldd {} failed in the build root: {}",
            inside.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for library in parse_ldd(&text) {
        if archive.contains(&library) {
            continue;
        }
        let source = rootfs.join(library.trim_start_matches('/'));
        // Follow symlinks inside the root (absolute targets are root-relative).
        let real = resolve_in_root(rootfs, &source)?;
        archive.file(&library, 0o755, read(&real)?);
    }
    Ok(())
}

/// The library paths in `ldd` output.
fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

fn resolve_in_root(rootfs: &Path, path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut current = path.to_owned();
    for _ in 0..16 {
        let metadata = std::fs::symlink_metadata(&current)
            .with_context(|| format!("{} is missing in the build root", current.display()))?;
        if !metadata.file_type().is_symlink() {
            return Ok(current);
        }
        let target = std::fs::read_link(&current)?;
        current = if target.is_absolute() {
            rootfs.join(target.strip_prefix("/").unwrap_or(&target))
        } else {
            current.parent().unwrap_or(rootfs).join(target)
        };
    }
    bail!("too many symlinks resolving {}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
