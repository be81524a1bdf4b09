//! The peers icelab is measured against: qemu-storage-daemon's
//! vhost-user-blk export of a raw image and of a LUKS image with
//! aes-xts-plain64 (host-side encryption, the software counterpart of
//! ICE on).
//!
//! The LUKS image is made LUKS2 first (cryptsetup, 4096-byte sectors, like
//! icelab's 4096-byte data units). QEMU's `luks` block driver (up to at
//! least 7.2, the version on bookworm) opens LUKS1 only and refuses LUKS2
//! with "LUKS version 2 is not supported"; the image is then made LUKS1
//! with the same cipher (aes-xts-plain64, 512-bit key, sha256), which has
//! 512-byte sectors. Which one was used, and why, is part of the output.

use anyhow::{Context, bail};
use std::path::Path;
use std::process::{Command, Stdio};

/// The bench passphrase (the images are throw-away).
pub const PASSPHRASE: &str = "icelab-bench";

/// Room for the LUKS header in front of the payload (LUKS2's default
/// 16 MiB; LUKS1's is 2 MiB).
const HEADER_ROOM: u64 = 16 << 20;

/// The LUKS format of the peer's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LuksFormat {
    /// LUKS2, aes-xts-plain64, 4096-byte sectors (cryptsetup).
    Luks2,
    /// LUKS1, aes-xts-plain64, 512-byte sectors.
    Luks1,
}

impl std::fmt::Display for LuksFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LuksFormat::Luks2 => "LUKS2 aes-xts-plain64 512-bit key, 4096-byte sectors",
            LuksFormat::Luks1 => "LUKS1 aes-xts-plain64 512-bit key, 512-byte sectors",
        })
    }
}

/// Makes a LUKS image at `image` whose payload holds `size` bytes, in the
/// best format QEMU can open; returns the format and why it was chosen.
/// With `fill`, the whole file is written before it is formatted, so the
/// payload is allocated and in the page cache (its plaintext is whatever
/// the written bytes decrypt to; the bench does not care).
pub fn make_luks_image(
    dir: &Path,
    image: &Path,
    size: u64,
    fill: bool,
) -> anyhow::Result<(LuksFormat, String)> {
    let key = dir.join("passphrase");
    std::fs::write(&key, PASSPHRASE)?;
    let file = std::fs::File::create(image)?;
    file.set_len(size + HEADER_ROOM)?;
    if fill {
        super::device::fill_file(&file, size + HEADER_ROOM)?;
    }
    drop(file);
    let have_cryptsetup = Command::new("cryptsetup")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_cryptsetup {
        create_luks1_qemu_img(image, size + HEADER_ROOM, fill)?;
        return Ok((
            LuksFormat::Luks1,
            "made by qemu-img create -f luks (no cryptsetup for LUKS2; scripts/install-deps installs it)"
                .to_owned(),
        ));
    }
    cryptsetup_format(image, &key, LuksFormat::Luks2)?;
    let refusal = match qemu_opens(image) {
        Ok(()) => {
            return Ok((
                LuksFormat::Luks2,
                "made by cryptsetup luksFormat --type luks2; QEMU opens it".to_owned(),
            ));
        }
        Err(message) => message,
    };
    // luksFormat rewrites the header area; a filled payload is kept.
    if !fill {
        std::fs::File::create(image)?.set_len(size + HEADER_ROOM)?;
    }
    cryptsetup_format(image, &key, LuksFormat::Luks1)?;
    if let Err(message) = qemu_opens(image) {
        bail!("QEMU cannot open a LUKS1 image either: {message}");
    }
    Ok((
        LuksFormat::Luks1,
        format!(
            "made by cryptsetup luksFormat --type luks1, because QEMU's luks driver refused LUKS2 ({refusal}); same cipher, the data path differs only in the sector size"
        ),
    ))
}

fn cryptsetup_format(image: &Path, key: &Path, format: LuksFormat) -> anyhow::Result<()> {
    let mut command = Command::new("cryptsetup");
    command.args([
        "luksFormat",
        "--batch-mode",
        "--cipher",
        "aes-xts-plain64",
        "--key-size",
        "512",
        "--hash",
        "sha256",
        // The key derivation only slows the start; the data path ignores it.
        "--pbkdf-force-iterations",
        "1000",
    ]);
    match format {
        LuksFormat::Luks2 => command.args([
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--sector-size",
            "4096",
        ]),
        LuksFormat::Luks1 => command.args(["--type", "luks1"]),
    };
    let output = command
        .arg(image)
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .context("cannot run cryptsetup")?;
    if !output.status.success() {
        bail!(
            "cryptsetup luksFormat ({format}) failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn create_luks1_qemu_img(image: &Path, size: u64, fill: bool) -> anyhow::Result<()> {
    let output = Command::new("qemu-img")
        .arg("create")
        .args(["-q", "-f", "luks", "--object"])
        .arg(format!("secret,id=sec0,data={PASSPHRASE}"))
        .args([
            "-o",
            if fill {
                "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time=10,preallocation=full"
            } else {
                "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time=10"
            },
        ])
        .arg(image)
        .arg(size.to_string())
        .stdin(Stdio::null())
        .output()
        .context("cannot run qemu-img")?;
    if !output.status.success() {
        bail!(
            "qemu-img create -f luks failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether QEMU's luks driver opens `image`; its message when not.
fn qemu_opens(image: &Path) -> Result<(), String> {
    let output = Command::new("qemu-img")
        .arg("info")
        .arg("--object")
        .arg(format!("secret,id=sec0,data={PASSPHRASE}"))
        .arg("--image-opts")
        .arg(format!(
            "driver=luks,key-secret=sec0,file.filename={}",
            image.display()
        ))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let message = String::from_utf8_lossy(&output.stderr);
        let message = message.trim();
        // qemu-img prefixes "qemu-img: Could not open '...': ".
        Err(message.rsplit(": ").next().unwrap_or(message).to_owned())
    }
}
