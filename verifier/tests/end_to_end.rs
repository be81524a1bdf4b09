//! End to end: a real ext4 image (mkfs.ext4 + debugfs on the host) whose
//! file gets an fscrypt v2 context xattr and ciphertext written in place by
//! this test, then checked by `verify`; then each fault the emulator can
//! inject (flipped byte, swapped key halves, DUN off by one, plaintext) and
//! a wrong key / policy / hole must be reported precisely.
//!
//! debugfs stores the context under xattr index 0 rather than 9, but shows
//! both as "c", which is all the verifier reads. Without e2fsprogs the
//! tests fail, naming scripts/install-deps.

mod common;

use common::{debugfs_w, require_e2fsprogs, sh};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use icelab_verifier::dun::{FileCrypt, IvScheme};
use icelab_verifier::ext4::{Debugfs, InodeInfo};
use icelab_verifier::hex::to_hex;
use icelab_verifier::kdf::MasterKeyHkdf;
use icelab_verifier::xts::XtsKey;
use icelab_verifier::{Manifest, Plaintext, PolicySpec, verify};

const UUID: &str = "5e9e0e69-8096-44d2-b149-79c608aea629";
const SIZE: u64 = 3 * 4096 + 100;
const MK: [u8; 64] = [0x5a; 64];
const NONCE: [u8; 16] = [7; 16];

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    SwapKeyHalves,
    DunPlusOne,
    Plaintext,
}

struct Fixture {
    _dir: tempfile::TempDir,
    img: PathBuf,
    manifest: Manifest,
    info: InodeInfo,
    dus: u64,
    /// Image offset of each data unit of the file.
    offsets: Vec<u64>,
}

fn build(flags: u8, log2_dus: u8, fault: Fault) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "encrypt", "-b", "4096", "-U", UUID])
        .arg(&img));
    let plaintext = Plaintext::Splitmix64 {
        seed: 42,
        ranges: None,
    };
    let mut pt = vec![0; SIZE as usize];
    plaintext.fill(0, SIZE, &mut pt);
    let src = dir.path().join("src");
    fs::write(&src, &pt).unwrap();
    let out = debugfs_w(&img, &format!("write {} f", src.display()));
    let ino: u64 = out
        .split("Allocated inode:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("allocated inode");

    let master = MasterKeyHkdf::new(&MK);
    let mut ctx = vec![2, 1, 4, flags, log2_dus, 0, 0, 0];
    ctx.extend_from_slice(&master.key_identifier());
    ctx.extend_from_slice(&NONCE);
    let ctx_path = dir.path().join("ctx");
    fs::write(&ctx_path, &ctx).unwrap();
    debugfs_w(&img, &format!("ea_set -f {} <{ino}> c", ctx_path.display()));

    let fs_ = Debugfs::new(&img);
    let sb = fs_.superblock().unwrap();
    let info = fs_.inode(ino).unwrap();
    assert_eq!(info.size, SIZE);
    let dus = if log2_dus == 0 {
        4096
    } else {
        1u64 << log2_dus
    };
    let per_block = 4096 / dus;
    let offsets: Vec<u64> = (0..SIZE.div_ceil(dus))
        .map(|i| {
            let lblk = i / per_block;
            let e = info
                .extents
                .iter()
                .find(|e| (e.logical..e.logical + e.len).contains(&lblk))
                .expect("debugfs write maps every block");
            (e.physical + lblk - e.logical) * 4096 + (i % per_block) * dus
        })
        .collect();

    let scheme = IvScheme::from_flags(flags).unwrap();
    let crypt = FileCrypt::derive(&master, scheme, &NONCE, &sb.uuid, ino);
    let mut key = crypt.key;
    if fault == Fault::SwapKeyHalves {
        key.rotate_left(32);
    }
    let xts = XtsKey::new(&key);
    let file = OpenOptions::new().write(true).open(&img).unwrap();
    for (i, &off) in offsets.iter().enumerate() {
        let mut du = vec![0; dus as usize];
        plaintext.fill(i as u64 * dus, SIZE, &mut du);
        let dun = crypt.dun(i as u64 + u64::from(fault == Fault::DunPlusOne));
        if fault != Fault::Plaintext {
            xts.encrypt_data_unit(dun, &mut du);
        }
        file.write_all_at(&du, off).unwrap();
    }
    let flag_names = match scheme {
        IvScheme::PerFile => vec![],
        IvScheme::IvInoLblk64 => vec!["IV_INO_LBLK_64".to_string()],
        IvScheme::IvInoLblk32 => vec!["IV_INO_LBLK_32".to_string()],
    };
    let manifest = Manifest {
        fs_uuid: Some(UUID.to_string()),
        files: vec![icelab_verifier::FileEntry {
            name: Some("f".into()),
            inode: ino,
            size: Some(SIZE),
            policy: Some(PolicySpec {
                contents_mode: "AES-256-XTS".into(),
                flags: flag_names,
                log2_data_unit_size: log2_dus,
            }),
            master_key_hex: Some(to_hex(&MK)),
            master_key_seed: None,
            hw_wrapped_key_seed: None,
            plaintext,
        }],
        plain_files: vec![],
    };
    Fixture {
        _dir: dir,
        img,
        manifest,
        info,
        dus,
        offsets,
    }
}

const POLICIES: [(u8, u8); 4] = [(0x02, 0), (0x0a, 9), (0x12, 10), (0x02, 9)];

#[test]
fn clean_image_passes_for_every_policy() {
    require_e2fsprogs();
    for (flags, log2) in POLICIES {
        let fx = build(flags, log2, Fault::None);
        let r = verify(&fx.img, &fx.manifest).unwrap();
        assert!(r.passed(), "flags {flags:#x} log2 {log2}: {r}");
        assert_eq!(r.files, 1);
        assert_eq!(r.data_units_checked, SIZE.div_ceil(fx.dus));
        assert_eq!(fx.info.context.nonce, NONCE);
    }
}

#[test]
fn flipped_byte_is_reported_with_unit_offset_and_digests() {
    require_e2fsprogs();
    for (flags, log2) in POLICIES {
        let fx = build(flags, log2, Fault::None);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fx.img)
            .unwrap();
        let at = fx.offsets[1] + 17;
        let mut b = [0];
        file.read_exact_at(&mut b, at).unwrap();
        file.write_all_at(&[b[0] ^ 1], at).unwrap();
        let r = verify(&fx.img, &fx.manifest).unwrap();
        assert!(!r.passed());
        assert_eq!(r.mismatch_count, 1, "{r}");
        let m = &r.mismatches[0];
        assert_eq!((m.inode, m.data_unit), (fx.manifest.files[0].inode, 1));
        assert_eq!(m.image_offset, Some(fx.offsets[1]));
        assert_ne!(m.expected, m.actual);
        assert_eq!(m.expected.len(), 16);
        assert_eq!(r.plaintext_hit_count, 0);
    }
}

#[test]
fn engine_faults_are_detected() {
    require_e2fsprogs();
    for (flags, log2) in POLICIES {
        for fault in [Fault::SwapKeyHalves, Fault::DunPlusOne, Fault::Plaintext] {
            let fx = build(flags, log2, fault);
            let r = verify(&fx.img, &fx.manifest).unwrap();
            let units = SIZE.div_ceil(fx.dus);
            assert!(!r.passed());
            assert_eq!(r.mismatch_count, units, "{r}");
            assert!(r.problems.is_empty(), "{r}");
            if fault == Fault::Plaintext {
                assert_eq!(r.plaintext_hit_count, units, "{r}");
                let mut hits: Vec<u64> = r.plaintext_hits.iter().map(|h| h.image_offset).collect();
                hits.sort();
                assert_eq!(hits, fx.offsets);
            } else {
                assert_eq!(r.plaintext_hit_count, 0, "{r}");
            }
        }
    }
}

#[test]
fn plaintext_is_found_even_when_the_key_is_wrong() {
    require_e2fsprogs();
    let fx = build(0x02, 9, Fault::Plaintext);
    let mut m = fx.manifest.clone();
    m.files[0].master_key_hex = Some(to_hex(&[0x5b; 64]));
    let r = verify(&fx.img, &m).unwrap();
    assert_eq!(r.problems.len(), 1, "{r}");
    assert_eq!(r.plaintext_hit_count, fx.offsets.len() as u64, "{r}");
}

#[test]
fn wrong_key_policy_uuid_and_holes_are_reported() {
    require_e2fsprogs();
    let fx = build(0x0a, 0, Fault::None);
    let mut m = fx.manifest.clone();
    m.files[0].master_key_hex = Some(to_hex(&[0x5b; 64]));
    let r = verify(&fx.img, &m).unwrap();
    assert!(r.problems[0].message.contains("key identifier"), "{r}");

    let mut m = fx.manifest.clone();
    m.files[0].policy.as_mut().unwrap().flags = vec!["IV_INO_LBLK_32".into()];
    let r = verify(&fx.img, &m).unwrap();
    assert!(r.problems[0].message.contains("policy"), "{r}");

    let mut m = fx.manifest.clone();
    m.fs_uuid = Some("00000000-0000-0000-0000-000000000000".into());
    let r = verify(&fx.img, &m).unwrap();
    assert!(!r.passed() && r.problems[0].message.contains("UUID"), "{r}");

    // A freed / never-used inode and a file without a context are findings.
    for ino in [99, 2] {
        let mut m = fx.manifest.clone();
        m.files[0].inode = ino;
        let r = verify(&fx.img, &m).unwrap();
        assert_eq!(r.problems.len(), 1, "{r}");
        assert_eq!(r.problems[0].inode, ino);
    }

    // Punch logical block 1: a hole where the manifest says data was written
    // is a mismatch; once the manifest says block 1 was never written, the
    // sparse file passes.
    debugfs_w(
        &fx.img,
        &format!("punch <{}> 1 1", fx.manifest.files[0].inode),
    );
    let r = verify(&fx.img, &fx.manifest).unwrap();
    assert_eq!(r.mismatch_count, 1, "{r}");
    assert_eq!(
        (r.mismatches[0].data_unit, r.mismatches[0].image_offset),
        (1, None)
    );
    let mut m = fx.manifest.clone();
    m.files[0].plaintext = Plaintext::Splitmix64 {
        seed: 42,
        ranges: Some(vec![[0, 4096], [8192, SIZE]]),
    };
    let r = verify(&fx.img, &m).unwrap();
    assert!(r.passed(), "{r}");
    assert_eq!(r.data_units_checked, 4);
}
