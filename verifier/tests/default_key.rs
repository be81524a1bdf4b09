//! The device default key, end to end without QEMU: a real ext4 image
//! (`mkfs.ext4 -d` with an unencrypted file and a directory, plus an
//! fscrypt file whose context is set with debugfs and whose ciphertext is
//! written in place, as in end_to_end.rs) is turned into what a device
//! with a default key writes: every data unit that is not all zeros and
//! not fscrypt file contents encrypted with AES-256-XTS under the default
//! key, DUN = byte offset / data unit size. Needs e2fsprogs (mkfs.ext4,
//! debugfs, dumpe2fs, e2fsck).

mod common;

use common::{debugfs_w, require_e2fsprogs, sh};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use icelab_verifier::default_key::verify_with_default_key_in;
use icelab_verifier::dun::{Dun, FileCrypt, IvScheme};
use icelab_verifier::ext4::Debugfs;
use icelab_verifier::hex::to_hex;
use icelab_verifier::kdf::MasterKeyHkdf;
use icelab_verifier::xts::XtsKey;
use icelab_verifier::{FileEntry, Manifest, PlainFile, Plaintext, Report, verify};

const UUID: &str = "5e9e0e69-8096-44d2-b149-79c608aea629";
const BS: u64 = 4096;
const ENC_SIZE: u64 = 2 * BS + 300;
const PLAIN_SIZE: u64 = 3 * BS + 100;
const MK: [u8; 64] = [0x5a; 64];
const NONCE: [u8; 16] = [7; 16];
const DEFAULT_KEY: [u8; 64] = [0xc3; 64];

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> u64 {
    text.split(label)
        .nth(1)
        .and_then(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .find(|s| !s.is_empty())
        })
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
}

struct Fixture {
    dir: tempfile::TempDir,
    /// The file system as the guest sees it (no default key).
    plain_img: PathBuf,
    manifest: Manifest,
    /// Image offsets of the fscrypt file's blocks (its own key; the
    /// device leaves them alone).
    enc_blocks: Vec<u64>,
    /// Image offsets of the plain file's blocks.
    plain_blocks: Vec<u64>,
    /// Image offset of the root directory's inode.
    root_inode: u64,
}

fn block_offsets(img: &Path, ino: u64) -> Vec<u64> {
    let layout = Debugfs::new(img).layout(ino).unwrap();
    let mut out = Vec::new();
    for e in &layout.extents {
        out.extend((0..e.len).map(|i| (e.physical + i) * BS));
    }
    out
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let plain_text = Plaintext::Splitmix64 {
        seed: 9,
        ranges: None,
    };
    let mut pt = vec![0; PLAIN_SIZE as usize];
    plain_text.fill(0, PLAIN_SIZE, &mut pt);
    fs::write(src.join("plain"), &pt).unwrap();
    fs::write(src.join("d/note"), "a directory and a small file\n").unwrap();
    let img = dir.path().join("plain.img");
    fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "encrypt", "-b", "4096", "-U", UUID, "-d"])
        .arg(&src)
        .arg(&img));
    let plain_ino = number_after(&debugfs_w(&img, "stat /plain"), "Inode:");

    // The fscrypt file: per-file key, data unit = block.
    let enc_text = Plaintext::Splitmix64 {
        seed: 42,
        ranges: None,
    };
    let mut pt = vec![0; ENC_SIZE as usize];
    enc_text.fill(0, ENC_SIZE, &mut pt);
    let enc_src = dir.path().join("enc");
    fs::write(&enc_src, &pt).unwrap();
    let ino = number_after(
        &debugfs_w(&img, &format!("write {} enc", enc_src.display())),
        "Allocated inode:",
    );
    let master = MasterKeyHkdf::new(&MK);
    let mut ctx = vec![2, 1, 4, 0x02, 0, 0, 0, 0];
    ctx.extend_from_slice(&master.key_identifier());
    ctx.extend_from_slice(&NONCE);
    let ctx_path = dir.path().join("ctx");
    fs::write(&ctx_path, &ctx).unwrap();
    debugfs_w(&img, &format!("ea_set -f {} <{ino}> c", ctx_path.display()));
    let sb = Debugfs::new(&img).superblock().unwrap();
    let crypt = FileCrypt::derive(&master, IvScheme::PerFile, &NONCE, &sb.uuid, ino);
    let xts = XtsKey::new(&crypt.key);
    let enc_blocks = block_offsets(&img, ino);
    let file = OpenOptions::new().write(true).open(&img).unwrap();
    for (i, &off) in enc_blocks.iter().enumerate() {
        let mut du = vec![0; BS as usize];
        enc_text.fill(i as u64 * BS, ENC_SIZE, &mut du);
        xts.encrypt_data_unit(crypt.dun(i as u64), &mut du);
        file.write_all_at(&du, off).unwrap();
    }
    let imap = debugfs_w(&img, "imap <2>");
    let root_inode = number_after(&imap, "located at block") * BS
        + u64::from_str_radix(imap.split("offset 0x").nth(1).unwrap().trim(), 16).unwrap();

    let manifest = Manifest {
        fs_uuid: Some(UUID.into()),
        files: vec![FileEntry {
            name: Some("enc".into()),
            inode: ino,
            size: Some(ENC_SIZE),
            policy: None,
            master_key_hex: Some(to_hex(&MK)),
            master_key_seed: None,
            hw_wrapped_key_seed: None,
            plaintext: enc_text,
        }],
        plain_files: vec![PlainFile {
            name: Some("plain".into()),
            inode: plain_ino,
            size: Some(PLAIN_SIZE),
            plaintext: plain_text,
        }],
    };
    Fixture {
        plain_blocks: block_offsets(&img, plain_ino),
        dir,
        plain_img: img,
        manifest,
        enc_blocks,
        root_inode,
    }
}

impl Fixture {
    /// What a device with `key` and `dus`-byte units writes for the same
    /// file system.
    fn default_key_image(&self, key: &[u8; 64], dus: u64, name: &str) -> PathBuf {
        let mut img = fs::read(&self.plain_img).unwrap();
        let xts = XtsKey::new(key);
        for (i, unit) in img.chunks_exact_mut(dus as usize).enumerate() {
            let off = i as u64 * dus;
            let fscrypt = self.enc_blocks.contains(&(off / BS * BS));
            if !fscrypt && unit.iter().any(|&b| b != 0) {
                xts.encrypt_data_unit(Dun(off / dus), unit);
            }
        }
        let path = self.dir.path().join(name);
        fs::write(&path, &img).unwrap();
        path
    }

    /// Copy `len` bytes at `from` of the plaintext image to `to` of `img`.
    fn put_plaintext(&self, img: &Path, from: u64, to: u64, len: u64) {
        let src = fs::File::open(&self.plain_img).unwrap();
        let mut buf = vec![0; len as usize];
        src.read_exact_at(&mut buf, from).unwrap();
        let dst = OpenOptions::new().write(true).open(img).unwrap();
        dst.write_all_at(&buf, to).unwrap();
    }

    /// Verify with a view directory that must be empty afterwards.
    fn check(&self, img: &Path, manifest: &Manifest, key: &[u8; 64]) -> Report {
        let views = self.dir.path().join("views");
        fs::create_dir_all(&views).unwrap();
        let r = verify_with_default_key_in(img, manifest, key, &views).unwrap();
        assert_eq!(fs::read_dir(&views).unwrap().count(), 0, "view left behind");
        r
    }
}

#[test]
fn default_key_image_passes_at_every_data_unit_size() {
    require_e2fsprogs();
    let fx = fixture();
    for dus in [512, 1024, 2048, 4096] {
        let img = fx.default_key_image(&DEFAULT_KEY, dus, "dk.img");
        let r = fx.check(&img, &fx.manifest, &DEFAULT_KEY);
        assert!(r.passed(), "{dus}: {r}");
        let dk = r.default_key.as_ref().unwrap();
        assert_eq!(dk.data_unit_size, Some(dus as u32));
        assert!(!dk.superblock_magic_on_raw && dk.superblock_magic_in_view);
        assert!(dk.fsck_clean, "{}", dk.fsck_output);
        assert_eq!(dk.plain_file_units_in_view, PLAIN_SIZE.div_ceil(BS));
        assert_eq!(dk.plain_file_units_missing, 0);
        assert_eq!(dk.metadata_hit_count, 0);
        assert!(dk.view_units_looked_for > 10, "{r}");
        assert_eq!((r.files, r.data_units_checked), (1, ENC_SIZE.div_ceil(BS)));
        assert_eq!(r.plain_files, 1);
        let text = r.to_string();
        assert!(
            text.contains(&format!(
                "default key: {dus}-byte units; superblock magic raw no / view yes"
            )),
            "{text}"
        );
        assert!(
            text.lines()
                .last()
                .unwrap()
                .starts_with("verifier: 1 files")
        );
        // The key is not in the report.
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains(&to_hex(&DEFAULT_KEY[..8])));
    }
}

#[test]
fn plain_image_plain_files_are_a_positive_control() {
    require_e2fsprogs();
    let fx = fixture();
    let r = verify(&fx.plain_img, &fx.manifest).unwrap();
    assert!(r.passed(), "{r}");
    assert!(r.default_key.is_none());
    assert_eq!(r.plain_files, 1);
    assert_eq!(r.plain_file_units_checked, PLAIN_SIZE.div_ceil(BS));
    assert_eq!(r.plaintext_hit_count, 0, "plain files are not scanned for");

    let mut m = fx.manifest.clone();
    m.plain_files[0].plaintext = Plaintext::Splitmix64 {
        seed: 10,
        ranges: None,
    };
    let r = verify(&fx.plain_img, &m).unwrap();
    assert!(!r.passed());
    assert_eq!(r.plain_file_mismatch_count, PLAIN_SIZE.div_ceil(BS), "{r}");
    assert_eq!(
        r.plain_file_mismatches[1].image_offset,
        Some(fx.plain_blocks[1])
    );
    assert!(r.to_string().contains("plain file mismatch: inode"), "{r}");

    let mut m = fx.manifest.clone();
    m.plain_files[0].size = Some(PLAIN_SIZE + 1);
    let r = verify(&fx.plain_img, &m).unwrap();
    assert!(r.problems[0].message.contains("size"), "{r}");
    m.plain_files[0].inode = 2;
    let r = verify(&fx.plain_img, &m).unwrap();
    assert!(r.problems[0].message.contains("not a regular file"), "{r}");
}

#[test]
fn an_image_without_default_key_or_a_wrong_key_finds_no_superblock() {
    require_e2fsprogs();
    let fx = fixture();
    let r = fx.check(&fx.plain_img, &fx.manifest, &DEFAULT_KEY);
    assert!(!r.passed());
    assert!(
        r.problems[0]
            .message
            .contains("does not decrypt an ext4 superblock"),
        "{r}"
    );
    let dk = r.default_key.as_ref().unwrap();
    assert!(dk.superblock_magic_on_raw && dk.data_unit_size.is_none());

    let img = fx.default_key_image(&DEFAULT_KEY, 4096, "dk.img");
    let mut wrong = DEFAULT_KEY;
    wrong[63] ^= 1;
    let r = fx.check(&img, &fx.manifest, &wrong);
    assert!(!r.passed());
    assert!(r.problems[0].message.contains("wrong key"), "{r}");
    let dk = r.default_key.as_ref().unwrap();
    assert!(!dk.superblock_magic_on_raw && dk.data_unit_size.is_none());
}

#[test]
fn metadata_left_in_the_clear_is_found() {
    require_e2fsprogs();
    let fx = fixture();
    for dus in [512, 4096] {
        let img = fx.default_key_image(&DEFAULT_KEY, dus, "dk.img");
        // The unit holding the root directory's inode, written in the clear.
        let at = fx.root_inode / dus * dus;
        fx.put_plaintext(&img, at, at, dus);
        let r = fx.check(&img, &fx.manifest, &DEFAULT_KEY);
        assert!(!r.passed());
        let dk = r.default_key.as_ref().unwrap();
        assert_eq!(dk.plaintext_like_unit_count, 1, "{r}");
        assert_eq!(dk.plaintext_like_units, vec![at]);
        assert!(!dk.fsck_clean, "{r}");
        assert!(
            r.to_string()
                .contains(&format!("unit at offset {at} looks like plaintext"))
        );
    }
}

#[test]
fn a_copy_of_a_block_in_the_clear_is_a_metadata_hit() {
    require_e2fsprogs();
    let fx = fixture();
    // Block 2047 is free and zero: a misdirected or duplicated write of the
    // plain file's first block, in the clear, leaves the file system clean;
    // only the scan sees it (the data is random, so not plaintext-like).
    assert!(debugfs_w(&fx.plain_img, "testb 2047").contains("not in use"));
    for dus in [1024, 4096] {
        let img = fx.default_key_image(&DEFAULT_KEY, dus, "dk.img");
        fx.put_plaintext(&img, fx.plain_blocks[0], 2047 * BS, BS);
        let r = fx.check(&img, &fx.manifest, &DEFAULT_KEY);
        assert!(!r.passed());
        let dk = r.default_key.as_ref().unwrap();
        assert_eq!(dk.metadata_hit_count, BS / dus, "{r}");
        assert_eq!(dk.metadata_hits[0].image_offset, 2047 * BS);
        assert_eq!(dk.plaintext_like_unit_count, 0, "{r}");
        assert!(dk.fsck_clean, "{r}");
        assert_eq!(dk.plain_file_units_missing, 0);
    }
}

#[test]
fn plain_file_or_fscrypt_contents_written_wrongly_are_found() {
    require_e2fsprogs();
    let fx = fixture();
    // The plain file's second block in the clear: missing from the view.
    let img = fx.default_key_image(&DEFAULT_KEY, 4096, "dk.img");
    fx.put_plaintext(&img, fx.plain_blocks[1], fx.plain_blocks[1], BS);
    let r = fx.check(&img, &fx.manifest, &DEFAULT_KEY);
    assert!(!r.passed());
    let dk = r.default_key.as_ref().unwrap();
    assert_eq!(dk.plain_file_units_missing, 1, "{r}");
    assert_eq!(
        r.plain_file_mismatches[0].image_offset,
        Some(fx.plain_blocks[1])
    );

    // fscrypt contents encrypted again with the default key: mismatches.
    let img = fx.default_key_image(&DEFAULT_KEY, 4096, "dk.img");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut unit = vec![0; BS as usize];
    f.read_exact_at(&mut unit, fx.enc_blocks[0]).unwrap();
    XtsKey::new(&DEFAULT_KEY).encrypt_data_unit(Dun(fx.enc_blocks[0] / BS), &mut unit);
    f.write_all_at(&unit, fx.enc_blocks[0]).unwrap();
    let r = fx.check(&img, &fx.manifest, &DEFAULT_KEY);
    assert!(!r.passed());
    assert_eq!(r.mismatch_count, 1, "{r}");
    assert_eq!(r.mismatches[0].image_offset, Some(fx.enc_blocks[0]));
    assert!(r.default_key.as_ref().unwrap().fsck_clean);
}
