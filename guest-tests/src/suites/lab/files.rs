//! Writing the matrix's files in their shapes (buffered, O_DIRECT,
//! overwrite in place, sparse, truncate and extend), reading them back,
//! and describing them for the host's verifier (the `manifest` facts).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use icelab_contract::manifest::{FileEntry, Manifest, Plaintext, PolicySpec};
use serde_json::Value;

use super::plan::{BLOCK_SIZE, Case, DIRECT_CHUNKS, FileSpec, Shape};
use crate::data;
use crate::runner::{Failure, fail};
use crate::suites::steps;

/// The byte the overwrite test writes before restoring the generator's
/// bytes (any value that is neither zero nor likely in the generator's
/// output over a whole range).
pub const OVERWRITE_PATTERN: u8 = 0xa5;

fn io_fail(what: String) -> impl FnOnce(io::Error) -> Failure {
    move |e| Failure(format!("{what}: {e}"))
}

/// A buffer of `len` bytes whose start is aligned to [`BLOCK_SIZE`] (what
/// O_DIRECT on an encrypted ext4 file needs), without unsafe code: a
/// larger vector and the aligned window inside it.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let align = BLOCK_SIZE as usize;
        let raw = vec![0u8; len + align];
        let start = raw.as_ptr().align_offset(align);
        Aligned { raw, start, len }
    }

    fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// What writing one file observed beyond its contents.
#[derive(Debug, Default)]
pub struct WriteNotes {
    /// For O_DIRECT: the outcome of a write aligned to 512 B but not to
    /// the block (`"EINVAL"` when the kernel really does direct I/O with
    /// fscrypt's block alignment rule, `"accepted"` otherwise).
    pub misaligned_direct_write: Option<String>,
}

/// Creates `path` and writes it as `spec` says with the contents seed
/// `seed`, fsyncs it and returns it (open for reading its policy and
/// inode).
pub fn write(path: &Path, spec: &FileSpec, seed: u64) -> Result<(File, WriteNotes), Failure> {
    let shown = path.display().to_string();
    let mut notes = WriteNotes::default();
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true).mode(0o644);
    if spec.shape == Shape::Direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let mut file = options
        .open(path)
        .map_err(io_fail(format!("cannot create {shown}")))?;
    let sync = |f: &File| f.sync_all().map_err(io_fail(format!("fsync {shown}")));
    let pwrite = |f: &File, at: u64, len: u64| {
        f.write_all_at(&data::bytes_at(seed, at, len as usize), at)
            .map_err(io_fail(format!("writing {len} bytes at {at} of {shown}")))
    };
    match spec.shape {
        Shape::Whole => {
            file.write_all(&spec.expected(seed))
                .map_err(io_fail(format!("writing {} bytes to {shown}", spec.size)))?;
            sync(&file)?;
        }
        Shape::Direct => {
            write_direct(&file, &shown, spec, seed)?;
            sync(&file)?;
            notes.misaligned_direct_write = Some(probe_misaligned(&file, seed));
            sync(&file)?;
            read_direct(&file, &shown, spec, seed)?;
        }
        Shape::Overwrite { at, len } => {
            pwrite(&file, 0, spec.size)?;
            sync(&file)?;
            file.write_all_at(&vec![OVERWRITE_PATTERN; len as usize], at)
                .map_err(io_fail(format!(
                    "overwriting {len} bytes at {at} of {shown}"
                )))?;
            sync(&file)?;
            // The pattern must come back from the disk, not the page cache.
            steps::sync_and_drop_caches()?;
            let mut back = vec![0u8; len as usize];
            file.read_exact_at(&mut back, at)
                .map_err(io_fail(format!("reading the overwritten range of {shown}")))?;
            if let Some(i) = back.iter().position(|&b| b != OVERWRITE_PATTERN) {
                return fail(format!(
                    "{shown}: byte {} reads {:#04x} after the overwrite with {OVERWRITE_PATTERN:#04x}",
                    at + i as u64,
                    back[i]
                ));
            }
            pwrite(&file, at, len)?;
            sync(&file)?;
        }
        Shape::Sparse { ranges } => {
            // Last range first: every write lands beyond or before data.
            for &(s, e) in ranges.iter().rev() {
                pwrite(&file, s, e - s)?;
            }
            file.set_len(spec.size)
                .map_err(io_fail(format!("ftruncate {shown} to {}", spec.size)))?;
            sync(&file)?;
        }
        Shape::TruncateExtend {
            first,
            cut,
            hole_end,
            resume,
        } => {
            pwrite(&file, 0, first)?;
            sync(&file)?;
            file.set_len(cut)
                .map_err(io_fail(format!("truncating {shown} to {cut}")))?;
            sync(&file)?;
            file.set_len(hole_end)
                .map_err(io_fail(format!("extending {shown} to {hole_end}")))?;
            pwrite(&file, resume, spec.size - resume)?;
            sync(&file)?;
        }
    }
    Ok((file, notes))
}

/// O_DIRECT writes of the whole file in [`DIRECT_CHUNKS`]-sized pieces.
fn write_direct(file: &File, shown: &str, spec: &FileSpec, seed: u64) -> Result<(), Failure> {
    let mut at = 0;
    for &chunk in DIRECT_CHUNKS.iter().cycle() {
        if at >= spec.size {
            break;
        }
        let len = chunk.min(spec.size - at);
        let mut buf = Aligned::new(len as usize);
        data::fill_at(seed, at, buf.buf());
        let n = file.write_at(buf.buf(), at).map_err(io_fail(format!(
            "O_DIRECT write of {len} bytes at {at} of {shown}"
        )))?;
        if n as u64 != len {
            return fail(format!(
                "O_DIRECT write of {len} bytes at {at} of {shown} wrote {n}"
            ));
        }
        at += len;
    }
    Ok(())
}

/// Writes the generator's bytes 512..1024 through the O_DIRECT file
/// descriptor (aligned buffer, offset aligned to 512 but not to the
/// block); reports whether the kernel refused it.
fn probe_misaligned(file: &File, seed: u64) -> String {
    let mut buf = Aligned::new(512);
    data::fill_at(seed, 512, buf.buf());
    match file.write_at(buf.buf(), 512) {
        Ok(_) => "accepted".to_owned(),
        Err(e) => crate::sys::Errno(e.raw_os_error().unwrap_or(0))
            .name()
            .to_owned(),
    }
}

/// Reads the whole file back through the O_DIRECT descriptor and compares.
fn read_direct(file: &File, shown: &str, spec: &FileSpec, seed: u64) -> Result<(), Failure> {
    let mut buf = Aligned::new(spec.size as usize);
    file.read_exact_at(buf.buf(), 0)
        .map_err(io_fail(format!("O_DIRECT read of {shown}")))?;
    compare(shown, buf.buf(), &spec.expected(seed), BLOCK_SIZE)
}

/// Reads `path` and compares it with `spec`'s contents under `seed`;
/// `dus` only for the message (which data unit differs).
pub fn read_back(path: &Path, spec: &FileSpec, seed: u64, dus: u64) -> Result<(), Failure> {
    let shown = path.display().to_string();
    let mut back = Vec::with_capacity(spec.size as usize);
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut back))
        .map_err(io_fail(format!("reading {shown} back")))?;
    compare(&shown, &back, &spec.expected(seed), dus)
}

fn compare(shown: &str, got: &[u8], want: &[u8], dus: u64) -> Result<(), Failure> {
    match data::first_difference(got, want) {
        None => Ok(()),
        Some(at) => fail(format!(
            "{shown}: read {} bytes, expected {}; first difference at byte {at} (data unit {} of {dus} B)",
            got.len(),
            want.len(),
            at as u64 / dus
        )),
    }
}

/// The policy part of a manifest entry.
pub fn policy_spec(case: &Case) -> PolicySpec {
    PolicySpec {
        contents_mode: "AES-256-XTS".to_owned(),
        flags: case
            .scheme
            .flag_names()
            .iter()
            .map(|f| (*f).to_owned())
            .collect(),
        log2_data_unit_size: case.log2_dus,
    }
}

/// One file's manifest entry (verifier/README.md): the key as its seed,
/// never the key.
pub fn manifest_entry(
    case: &Case,
    spec: &FileSpec,
    key_seed: u64,
    content_seed: u64,
    meta: &fs::Metadata,
) -> FileEntry {
    FileEntry {
        name: Some(case.file_name(spec)),
        inode: meta.ino(),
        size: Some(meta.len()),
        policy: Some(policy_spec(case)),
        master_key_hex: None,
        master_key_seed: Some(data::seed_hex(key_seed)),
        hw_wrapped_key_seed: None,
        plaintext: Plaintext::Splitmix64 {
            seed: content_seed,
            ranges: Some(spec.ranges().into_iter().map(|(s, e)| [s, e]).collect()),
        },
    }
}

/// The `manifest` fact of a test: `entries` on the filesystem `fs_uuid`
/// (the guest's side of the serialization boundary).
pub fn manifest_fact(fs_uuid: &str, entries: &[FileEntry]) -> Value {
    serde_json::to_value(Manifest {
        fs_uuid: Some(fs_uuid.to_owned()),
        files: entries.to_vec(),
        plain_files: Vec::new(),
    })
    .unwrap_or(Value::Null)
}

/// `s_feature_compat` bit of ext4's `stable_inodes`.
pub const COMPAT_STABLE_INODES: u32 = 0x0800;
/// `s_feature_incompat` bit of ext4's `encrypt`.
pub const INCOMPAT_ENCRYPT: u32 = 0x1_0000;

/// `(s_feature_compat, s_feature_incompat)` of an ext4 superblock (1024
/// bytes; offsets 0x5c and 0x60).
pub fn ext4_features(superblock: &[u8]) -> Option<(u32, u32)> {
    let word = |at: usize| {
        let b = superblock.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    Some((word(0x5c)?, word(0x60)?))
}

/// Checks that the ext4 filesystem on `disk` has `encrypt` and
/// `stable_inodes` (the IV_INO_LBLK_* policies need both).
pub fn check_features(disk: &Path) -> Result<(), Failure> {
    let shown = disk.display();
    let file = File::open(disk).map_err(io_fail(format!("cannot open {shown}")))?;
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, 1024)
        .map_err(io_fail(format!("cannot read the superblock of {shown}")))?;
    let (compat, incompat) = ext4_features(&sb).unwrap_or((0, 0));
    let mut missing = Vec::new();
    if compat & COMPAT_STABLE_INODES == 0 {
        missing.push("stable_inodes");
    }
    if incompat & INCOMPAT_ENCRYPT == 0 {
        missing.push("encrypt");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        fail(format!(
            "the ext4 on {shown} lacks {}: format it with mkfs.ext4 -O encrypt,stable_inodes",
            missing.join(" and ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suites::lab::plan::CASES;
    use serde_json::json;

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [0, 1, 512, 4096, 12288] {
            let mut a = Aligned::new(len);
            assert_eq!(a.buf().len(), len);
            assert_eq!(a.buf().as_ptr() as usize % BLOCK_SIZE as usize, 0);
        }
    }

    #[test]
    fn every_shape_writes_and_reads_back_on_a_host_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let case = CASES[0];
        for spec in case.files() {
            let path = dir.path().join(spec.leaf);
            // tmpfs has no O_DIRECT and drop_caches needs root: the
            // shapes that use them run in the guest only.
            if matches!(spec.shape, Shape::Direct | Shape::Overwrite { .. }) {
                continue;
            }
            let (file, _) = write(&path, &spec, 77).expect("write");
            assert_eq!(file.metadata().expect("stat").len(), spec.size);
            read_back(&path, &spec, 77, 4096).expect("read back");
            let e = read_back(&path, &spec, 78, 4096);
            if spec.ranges().is_empty() {
                assert!(e.is_ok());
            } else {
                assert!(e.expect_err("other seed").0.contains("first difference"));
            }
        }
    }

    #[test]
    fn manifest_entry_names_the_seeds_not_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, b"x").expect("write");
        let meta = fs::metadata(&path).expect("stat");
        let case = CASES.iter().find(|c| c.log2_dus == 9).expect("dus512");
        let spec = case.files()[1];
        let entry = manifest_entry(case, &spec, 0xab, 7, &meta);
        let fact = manifest_fact("5e9e0e69-8096-44d2-b149-79c608aea629", &[entry]);
        let e = &fact["files"][0];
        assert_eq!(e["master_key_seed"], "00000000000000ab");
        assert_eq!(e["size"], 1);
        assert_eq!(e["plaintext"]["seed"], 7);
        assert_eq!(e["plaintext"]["ranges"], json!([[0, 1]]));
        assert_eq!(e["policy"]["log2_data_unit_size"], 9);
        assert_eq!(e["name"], format!("{}/1", case.name));
        assert!(e.get("master_key_hex").is_none());
        // The host reads it back as the contract's manifest.
        let back: Manifest = serde_json::from_value(fact).expect("the contract's schema");
        assert_eq!(back.files[0].inode, meta.ino());
    }

    #[test]
    fn features_from_a_superblock() {
        let mut sb = [0u8; 1024];
        sb[0x5c..0x60].copy_from_slice(&COMPAT_STABLE_INODES.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&(INCOMPAT_ENCRYPT | 0x40).to_le_bytes());
        assert_eq!(
            ext4_features(&sb),
            Some((COMPAT_STABLE_INODES, INCOMPAT_ENCRYPT | 0x40))
        );
        assert_eq!(ext4_features(&sb[..0x62]), None);
    }
}
