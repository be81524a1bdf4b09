//! The shared directory: a host directory packed into an ext4 image the
//! guest mounts read-write at `/share`, and copied back after the run.
//!
//! No network and no 9p in the lab's QEMU: a disk is the one channel the
//! guest already has. `mke2fs -d` packs the directory (owners, modes,
//! symlinks kept); after the guest unmounted it, `e2fsck -p` replays what
//! the journal still holds (a guest that died before unmounting) and
//! `debugfs rdump` unpacks it. Files the guest created or changed land in
//! the directory; files it deleted stay on the host.

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Command;

/// Free space in the image beyond the directory's contents.
const HEADROOM: u64 = 4 << 30;

/// Packs `dir` into a new ext4 image at `image` (sparse, the contents plus
/// [`HEADROOM`]).
pub fn pack(dir: &Path, image: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!(
            "--share {}: not a directory; give the directory to make available as /share",
            dir.display()
        );
    }
    let used = directory_bytes(dir)?;
    let size = (used + used / 4 + HEADROOM).next_multiple_of(1 << 20);
    let file = std::fs::File::create(image)
        .with_context(|| format!("cannot create the share image {}", image.display()))?;
    file.set_len(size)
        .with_context(|| format!("cannot size {} to {size} bytes", image.display()))?;
    drop(file);
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "encrypt",
            "-L",
            "icelab-share",
            "-d",
        ])
        .arg(dir)
        .arg(image);
    run_tool(mke2fs, &format!("mke2fs -d {}", dir.display()))
}

/// Runs a host tool to success; the error names `what` and the tool's
/// complaint (and scripts/install-deps when the tool is missing).
fn run_tool(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command.output().with_context(|| {
        format!(
            "cannot run {:?}; run scripts/install-deps",
            command.get_program()
        )
    })?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// What [`unpack`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyBack {
    /// Regular files in the image now in the directory.
    pub files: u64,
    /// e2fsck had to replay or repair (the guest did not unmount cleanly).
    pub repaired: bool,
}

/// Copies the image's contents back over `dir` (through a staging
/// directory in `work`).
pub fn unpack(image: &Path, dir: &Path, work: &Path) -> anyhow::Result<CopyBack> {
    let fsck = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(image)
        .output()
        .context("cannot run e2fsck (e2fsprogs); run scripts/install-deps")?;
    // 0: clean; 1: errors corrected. Anything else leaves it unreadable.
    let repaired = match fsck.status.code() {
        Some(0) => false,
        Some(1) => true,
        _ => bail!(
            "e2fsck -p {} failed ({}): {}; the share image is kept for inspection",
            image.display(),
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout).trim()
        ),
    };
    let staging = work.join("share-out");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let mut rdump = Command::new("debugfs");
    rdump
        .arg("-R")
        .arg(format!("rdump / {}", staging.display()))
        .arg(image);
    run_tool(rdump, &format!("debugfs rdump of {}", image.display()))?;
    // mke2fs made lost+found; the directory did not necessarily have one.
    if !dir.join("lost+found").exists() {
        let _ = std::fs::remove_dir(staging.join("lost+found"));
    }
    let files = count_files(&staging);
    let mut copy = Command::new("cp");
    copy.arg("-a")
        .arg(format!("{}/.", staging.display()))
        .arg(dir);
    run_tool(
        copy,
        &format!("copying the share back into {}", dir.display()),
    )?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(CopyBack { files, repaired })
}

/// Bytes of the regular files under `dir` (symlinks not followed).
fn directory_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("cannot read {}", current.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", current.display()))?;
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len().next_multiple_of(4096);
            }
            total += 256;
        }
    }
    Ok(total)
}

fn count_files(dir: &Path) -> u64 {
    let mut count = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => count += 1,
                _ => {}
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("-V").output().is_ok()
    }

    #[test]
    fn a_directory_goes_into_an_image_and_comes_back() {
        assert!(
            have("mke2fs") && have("debugfs"),
            "e2fsprogs: run scripts/install-deps"
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("share");
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub/script.sh"), "echo hi\n").expect("write");
        std::fs::write(dir.join("old"), "before").expect("write");
        let image = tmp.path().join("share.img");
        pack(&dir, &image).expect("pack");
        // What a guest would do: change a file, add one.
        std::fs::write(tmp.path().join("new"), "made in the guest").expect("write");
        let edit = Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} new", tmp.path().join("new").display()))
            .arg(&image)
            .output()
            .expect("debugfs");
        assert!(edit.status.success(), "{edit:?}");
        std::fs::remove_file(dir.join("old")).expect("rm");
        let back = unpack(&image, &dir, tmp.path()).expect("unpack");
        assert_eq!(
            std::fs::read_to_string(dir.join("new")).expect("new"),
            "made in the guest"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("sub/script.sh")).expect("kept"),
            "echo hi\n"
        );
        // Deleted on the host meanwhile, still in the image: back again.
        assert_eq!(
            std::fs::read_to_string(dir.join("old")).expect("old"),
            "before"
        );
        assert!(!dir.join("lost+found").exists());
        assert_eq!(back.files, 3);
        assert!(!back.repaired);
    }

    #[test]
    fn a_missing_directory_is_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let error = pack(&tmp.path().join("nope"), &tmp.path().join("x.img")).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
    }
}
