//! The check: recompute every data unit of every file from its plaintext
//! and compare with the image; then scan the whole image for plaintext.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::default_key::DefaultKeyReport;
use crate::dun::{FSCRYPT_MODE_AES_256_XTS, FileCrypt, IvScheme};
use crate::ext4::{Debugfs, Extent, InodeInfo, InodeLayout, Superblock};
use crate::hex::{from_hex, to_hex};
use crate::hw_kdf;
use crate::kdf::MasterKeyHkdf;
use crate::manifest::{FileEntry, Manifest, PlainFile, PolicySpec};
use crate::xts::XtsKey;
use crate::{Error, Result};

/// At most this many mismatches are itemised; all are counted.
pub const MAX_ITEMISED: usize = 256;

/// A data unit whose bytes on the image are not the expected ciphertext.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    pub inode: u64,
    /// Data unit index within the file.
    pub data_unit: u64,
    /// Byte offset of the data unit on the image; `None` for a hole.
    pub image_offset: Option<u64>,
    /// First 16 hex digits of SHA-256 of the expected ciphertext.
    pub expected: String,
    /// Same for the bytes found ("hole" when nothing is mapped).
    pub actual: String,
}

/// A plaintext data unit found on the image.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PlaintextHit {
    pub image_offset: u64,
    pub data_unit_size: u32,
    pub digest: String,
}

/// A file that could not be checked as stated (wrong key, policy, size).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub inode: u64,
    pub message: String,
}

/// The verifier's findings.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub files: u64,
    pub data_units_checked: u64,
    pub mismatch_count: u64,
    pub plaintext_hit_count: u64,
    /// The first [`MAX_ITEMISED`] mismatches.
    pub mismatches: Vec<Mismatch>,
    /// The first [`MAX_ITEMISED`] plaintext hits.
    pub plaintext_hits: Vec<PlaintextHit>,
    pub problems: Vec<Problem>,
    /// Unencrypted files of the manifest (`plain_files`).
    pub plain_files: u64,
    /// Without a default key: file system blocks of plain files compared
    /// with their plaintext on the raw image (with one, see
    /// [`DefaultKeyReport::plain_file_units_in_view`]).
    pub plain_file_units_checked: u64,
    /// Of those, the ones that are not the plaintext.
    pub plain_file_mismatch_count: u64,
    /// The first [`MAX_ITEMISED`] plain-file blocks that are not their
    /// plaintext (on the raw image, or in the default-key view); `expected`
    /// and `actual` digest the bytes below `i_size`.
    pub plain_file_mismatches: Vec<Mismatch>,
    /// Present when the image was checked with the device's default key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_key: Option<DefaultKeyReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatch_count == 0
            && self.plaintext_hit_count == 0
            && self.problems.is_empty()
            && self.plain_file_mismatch_count == 0
            && self
                .default_key
                .as_ref()
                .is_none_or(DefaultKeyReport::passed)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "inode {}: {}", p.inode, p.message)?;
        }
        for m in &self.mismatches {
            let at = m.image_offset.map_or("hole".to_string(), |o| o.to_string());
            writeln!(
                f,
                "mismatch: inode {} data unit {} at image offset {at}: expected {} actual {}",
                m.inode, m.data_unit, m.expected, m.actual
            )?;
        }
        for h in &self.plaintext_hits {
            writeln!(
                f,
                "plaintext on image at offset {} ({}-byte unit {})",
                h.image_offset, h.data_unit_size, h.digest
            )?;
        }
        for m in &self.plain_file_mismatches {
            let at = m.image_offset.map_or("hole".to_string(), |o| o.to_string());
            writeln!(
                f,
                "plain file mismatch: inode {} block {} at image offset {at}: expected {} actual {}",
                m.inode, m.data_unit, m.expected, m.actual
            )?;
        }
        if self.plain_files > 0 && self.default_key.is_none() {
            writeln!(
                f,
                "plain files: {} files, {} blocks checked against their plaintext on the image, {} mismatches",
                self.plain_files, self.plain_file_units_checked, self.plain_file_mismatch_count
            )?;
        }
        if let Some(d) = &self.default_key {
            write!(f, "{d}")?;
        }
        write!(
            f,
            "verifier: {} files, {} data units checked, {} mismatches, {} plaintext hits, {} problems",
            self.files,
            self.data_units_checked,
            self.mismatch_count,
            self.plaintext_hit_count,
            self.problems.len()
        )
    }
}

pub(crate) fn digest16(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data)[..8])
}

/// Check `image` (a bare ext4 filesystem) against `manifest`, reading the
/// superblock, block maps, sizes and fscrypt contexts with e2fsprogs.
pub fn verify(image: &Path, manifest: &Manifest) -> Result<Report> {
    let fs = Debugfs::new(image);
    let sb = fs.superblock()?;
    let inodes = read_inodes(&fs, manifest)?;
    let mut report = verify_with(image, manifest, &sb, &inodes)?;
    // Plain files are plaintext on an image without a default key.
    let (checked, mismatched) = check_plain_files(&fs, image, manifest, &sb, &mut report)?;
    report.plain_file_units_checked = checked;
    report.plain_file_mismatch_count = mismatched;
    Ok(report)
}

/// The fscrypt inode of each `manifest.files` entry, or why it could not
/// be read. Not being able to run the tools stops everything; an inode
/// that cannot be read (freed, not regular, no context) is a finding.
pub(crate) fn read_inodes(
    fs: &Debugfs,
    manifest: &Manifest,
) -> Result<Vec<std::result::Result<InodeInfo, String>>> {
    let mut inodes = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        inodes.push(match fs.inode(f.inode) {
            Ok(info) => Ok(info),
            Err(e @ Error::Tool { .. }) => return Err(e),
            Err(e) => Err(e.to_string()),
        });
    }
    Ok(inodes)
}

/// Compare every block of every plain file (block map read by `fs`, data
/// read from `data`) with its plaintext, bytes below `i_size` only (ext4
/// zeroes a last block's tail, but the positive control does not depend
/// on it). Returns (blocks checked, blocks not the plaintext); itemises
/// into `report.plain_file_mismatches`, counts `report.plain_files`, and
/// reports an unreadable inode or a wrong size as a problem.
pub(crate) fn check_plain_files(
    fs: &Debugfs,
    data: &Path,
    manifest: &Manifest,
    sb: &Superblock,
    report: &mut Report,
) -> Result<(u64, u64)> {
    let img = File::open(data).map_err(|source| Error::Image {
        path: data.to_path_buf(),
        source,
    })?;
    let (mut checked, mut mismatched) = (0, 0);
    for entry in &manifest.plain_files {
        report.plain_files += 1;
        let layout = match fs.layout(entry.inode) {
            Ok(l) => l,
            Err(e @ Error::Tool { .. }) => return Err(e),
            Err(e) => {
                report.problems.push(Problem {
                    inode: entry.inode,
                    message: format!("plain file: {e}"),
                });
                continue;
            }
        };
        if let Some(size) = entry.size
            && size != layout.size
        {
            report.problems.push(Problem {
                inode: entry.inode,
                message: format!(
                    "plain file: manifest size {size} but the inode's is {}",
                    layout.size
                ),
            });
            continue;
        }
        let (c, m) = check_plain_file(entry, &layout, sb.block_size, &img, data, report)?;
        checked += c;
        mismatched += m;
    }
    Ok((checked, mismatched))
}

fn check_plain_file(
    entry: &PlainFile,
    layout: &InodeLayout,
    block_size: u32,
    img: &File,
    path: &Path,
    report: &mut Report,
) -> Result<(u64, u64)> {
    let bs = u64::from(block_size);
    let mut expected = vec![0u8; block_size as usize];
    let mut actual = vec![0u8; block_size as usize];
    let (mut checked, mut mismatched) = (0, 0);
    for lblk in 0..layout.size.div_ceil(bs) {
        let n = (layout.size - lblk * bs).min(bs) as usize;
        entry.plaintext.fill(lblk * bs, layout.size, &mut expected);
        checked += 1;
        let (found, offset) = match locate(&layout.extents, lblk) {
            // A hole or unwritten extent reads as zeros.
            None if expected[..n].iter().all(|&b| b == 0) => continue,
            None => ("hole".to_string(), None),
            Some(pblk) => {
                let offset = pblk * bs;
                img.read_exact_at(&mut actual, offset)
                    .map_err(|source| Error::Image {
                        path: path.to_path_buf(),
                        source,
                    })?;
                if actual[..n] == expected[..n] {
                    continue;
                }
                (digest16(&actual[..n]), Some(offset))
            }
        };
        mismatched += 1;
        if report.plain_file_mismatches.len() < MAX_ITEMISED {
            report.plain_file_mismatches.push(Mismatch {
                inode: entry.inode,
                data_unit: lblk,
                image_offset: offset,
                expected: digest16(&expected[..n]),
                actual: found,
            });
        }
    }
    Ok((checked, mismatched))
}

/// [`verify`] with the filesystem facts already read: `inodes[i]` belongs
/// to `manifest.files[i]`, or says why it could not be read. Checks the
/// fscrypt files and scans for their plaintext; plain files are not
/// checked here.
pub fn verify_with(
    image: &Path,
    manifest: &Manifest,
    sb: &Superblock,
    inodes: &[std::result::Result<InodeInfo, String>],
) -> Result<Report> {
    if inodes.len() != manifest.files.len() {
        return Err(Error::Manifest(format!(
            "{} inodes read for {} manifest files",
            inodes.len(),
            manifest.files.len()
        )));
    }
    let img = File::open(image).map_err(|source| Error::Image {
        path: image.to_path_buf(),
        source,
    })?;
    let read_at = |buf: &mut [u8], off: u64| {
        img.read_exact_at(buf, off).map_err(|source| Error::Image {
            path: image.to_path_buf(),
            source,
        })
    };
    let mut report = Report::default();
    if let Some(u) = &manifest.fs_uuid {
        let stated = from_hex(&u.replace('-', ""));
        if stated.as_deref() != Some(&sb.uuid[..]) {
            report.problems.push(Problem {
                inode: 0,
                message: format!(
                    "manifest fs UUID {u} is not the image's {}",
                    to_hex(&sb.uuid)
                ),
            });
        }
    }
    // Plaintext digests per data unit size, for the scan.
    let mut plaintext: HashMap<u32, HashSet<[u8; 32]>> = HashMap::new();
    for (entry, info) in manifest.files.iter().zip(inodes) {
        report.files += 1;
        // The plaintext is looked for even when the file cannot be checked
        // (wrong key, odd policy): its data unit size is the context's if
        // sensible, else the block size.
        if let Ok(info) = info {
            let dus = data_unit_size(info.context.log2_data_unit_size, sb).unwrap_or(sb.block_size);
            collect_plaintext(entry, info.size, dus, plaintext.entry(dus).or_default());
        }
        let checked = match info
            .as_ref()
            .map_err(String::clone)
            .and_then(|info| prepare(entry, info, sb).map(|p| (info, p)))
        {
            Ok(p) => p,
            Err(message) => {
                report.problems.push(Problem {
                    inode: entry.inode,
                    message,
                });
                continue;
            }
        };
        let (info, checked) = checked;
        check_file(entry, info, sb, &checked, &read_at, &mut report)?;
    }
    scan(&img, image, &plaintext, &mut report)?;
    Ok(report)
}

struct Prepared {
    crypt: FileCrypt,
    /// Data unit size in bytes.
    dus: u32,
}

/// The data unit size of a context's `log2_data_unit_size` (0: block size;
/// fscrypt allows 512 bytes up to the block size).
fn data_unit_size(log2: u8, sb: &Superblock) -> std::result::Result<u32, String> {
    match log2 {
        0 => Ok(sb.block_size),
        l if (9..=sb.block_size.trailing_zeros()).contains(&u32::from(l)) => Ok(1 << l),
        l => Err(format!("log2_data_unit_size {l} not allowed")),
    }
}

/// The fewest non-zero bytes a plaintext data unit needs to be looked for
/// on the image. A unit with a few bytes of data and zeros after them (the
/// tail of a file, or a range's edge) can equal filesystem metadata by
/// chance: a block bitmap with one byte set is a 1-in-256 match for a
/// one-byte tail. 16 random bytes make such a match a 2^-128 event; the
/// ciphertext check still covers every unit.
const MIN_DISTINCTIVE_BYTES: usize = 16;

/// Whether a plaintext data unit is distinctive enough to look for.
pub(crate) fn is_distinctive(unit: &[u8]) -> bool {
    unit.iter().filter(|&&b| b != 0).count() >= MIN_DISTINCTIVE_BYTES
}

/// Add the SHA-256 of every distinctive plaintext data unit of a file.
fn collect_plaintext(entry: &FileEntry, size: u64, dus: u32, set: &mut HashSet<[u8; 32]>) {
    let mut pt = vec![0u8; dus as usize];
    for index in 0..size.div_ceil(u64::from(dus)) {
        entry.plaintext.fill(index * u64::from(dus), size, &mut pt);
        if is_distinctive(&pt) {
            set.insert(Sha256::digest(&pt).into());
        }
    }
}

/// Cross-check the manifest against the on-disk context and derive keys.
fn prepare(
    entry: &FileEntry,
    info: &InodeInfo,
    sb: &Superblock,
) -> std::result::Result<Prepared, String> {
    let ctx = &info.context;
    if ctx.contents_mode != FSCRYPT_MODE_AES_256_XTS {
        return Err(format!(
            "contents mode {} is not AES-256-XTS",
            ctx.contents_mode
        ));
    }
    let scheme = IvScheme::from_flags(ctx.flags)?;
    let dus = data_unit_size(ctx.log2_data_unit_size, sb)?;
    if let Some(stated) = &entry.policy {
        check_policy(stated, scheme, ctx.log2_data_unit_size)?;
    }
    if let Some(size) = entry.size
        && size != info.size
    {
        return Err(format!(
            "manifest size {size} but the inode's is {}",
            info.size
        ));
    }
    let (master, id, hw_key) = match entry.hw_wrapped_key() {
        Some(hw_key) => {
            let hw_key = hw_key?;
            let master = MasterKeyHkdf::new(&hw_kdf::software_secret(&hw_key));
            let id = master.hw_wrapped_key_identifier();
            (master, id, Some(hw_key))
        }
        None => {
            let master = MasterKeyHkdf::new(&entry.master_key()?);
            let id = master.key_identifier();
            (master, id, None)
        }
    };
    if id != ctx.master_key_identifier {
        return Err(format!(
            "master key identifier {} derived from the manifest's key is not the context's {}",
            to_hex(&id),
            to_hex(&ctx.master_key_identifier)
        ));
    }
    let crypt = match hw_key {
        Some(hw_key) => FileCrypt::hw_wrapped(
            hw_kdf::inline_encryption_key(&hw_key),
            &master,
            scheme,
            entry.inode,
        )?,
        None => FileCrypt::derive(&master, scheme, &ctx.nonce, &sb.uuid, entry.inode),
    };
    Ok(Prepared { crypt, dus })
}

fn check_policy(
    stated: &PolicySpec,
    scheme: IvScheme,
    log2_dus: u8,
) -> std::result::Result<(), String> {
    if stated.contents_mode != "AES-256-XTS" {
        return Err(format!(
            "unsupported contents mode {}",
            stated.contents_mode
        ));
    }
    let mut want = IvScheme::PerFile;
    for f in &stated.flags {
        want = match f.as_str() {
            "IV_INO_LBLK_64" => IvScheme::IvInoLblk64,
            "IV_INO_LBLK_32" => IvScheme::IvInoLblk32,
            other => return Err(format!("unknown policy flag {other}")),
        };
    }
    if want != scheme || stated.log2_data_unit_size != log2_dus {
        return Err(format!(
            "manifest policy {want:?}/log2_dus {} but the on-disk context is {scheme:?}/{log2_dus}",
            stated.log2_data_unit_size
        ));
    }
    Ok(())
}

/// Where logical block `lblk` lives, if mapped and written.
fn locate(extents: &[Extent], lblk: u64) -> Option<u64> {
    let i = extents.partition_point(|e| e.logical + e.len <= lblk);
    let e = extents.get(i)?;
    (e.logical <= lblk && !e.unwritten).then(|| e.physical + (lblk - e.logical))
}

fn check_file(
    entry: &FileEntry,
    info: &InodeInfo,
    sb: &Superblock,
    p: &Prepared,
    read_at: &dyn Fn(&mut [u8], u64) -> Result<()>,
    report: &mut Report,
) -> Result<()> {
    let dus = u64::from(p.dus);
    let per_block = u64::from(sb.block_size) / dus;
    let xts = XtsKey::new(&p.crypt.key);
    let mut pt = vec![0u8; p.dus as usize];
    let mut ct = vec![0u8; p.dus as usize];
    let mut actual = vec![0u8; p.dus as usize];
    for index in 0..info.size.div_ceil(dus) {
        entry.plaintext.fill(index * dus, info.size, &mut pt);
        let all_zero = pt.iter().all(|&b| b == 0);
        let lblk = index / per_block;
        let Some(pblk) = locate(&info.extents, lblk) else {
            // A hole or unwritten extent reads as zeros.
            report.data_units_checked += 1;
            if !all_zero {
                ct.copy_from_slice(&pt);
                xts.encrypt_data_unit(p.crypt.dun(index), &mut ct);
                record(report, entry.inode, index, None, &ct, "hole".into());
            }
            continue;
        };
        let offset = pblk * u64::from(sb.block_size) + (index % per_block) * dus;
        ct.copy_from_slice(&pt);
        xts.encrypt_data_unit(p.crypt.dun(index), &mut ct);
        read_at(&mut actual, offset)?;
        report.data_units_checked += 1;
        if ct != actual {
            let found = digest16(&actual);
            record(report, entry.inode, index, Some(offset), &ct, found);
        }
    }
    Ok(())
}

fn record(
    report: &mut Report,
    inode: u64,
    data_unit: u64,
    image_offset: Option<u64>,
    expected: &[u8],
    actual: String,
) {
    report.mismatch_count += 1;
    if report.mismatches.len() < MAX_ITEMISED {
        report.mismatches.push(Mismatch {
            inode,
            data_unit,
            image_offset,
            expected: digest16(expected),
            actual,
        });
    }
}

/// Hash every aligned data unit of the image and look it up among the
/// distinctive plaintext data units (see [`MIN_DISTINCTIVE_BYTES`]).
fn scan(
    img: &File,
    path: &Path,
    plaintext: &HashMap<u32, HashSet<[u8; 32]>>,
    report: &mut Report,
) -> Result<()> {
    let len = img
        .metadata()
        .map_err(|source| Error::Image {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    for (&dus, set) in plaintext {
        if set.is_empty() {
            continue;
        }
        let mut off = 0;
        while off + u64::from(dus) <= len {
            let n = (len - off).min(CHUNK) / u64::from(dus) * u64::from(dus);
            let chunk = &mut buf[..n as usize];
            img.read_exact_at(chunk, off)
                .map_err(|source| Error::Image {
                    path: path.to_path_buf(),
                    source,
                })?;
            for (i, unit) in chunk.chunks_exact(dus as usize).enumerate() {
                let d: [u8; 32] = Sha256::digest(unit).into();
                if set.contains(&d) {
                    report.plaintext_hit_count += 1;
                    if report.plaintext_hits.len() < MAX_ITEMISED {
                        report.plaintext_hits.push(PlaintextHit {
                            image_offset: off + (i as u64) * u64::from(dus),
                            data_unit_size: dus,
                            digest: to_hex(&d[..8]),
                        });
                    }
                }
            }
            off += n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Plaintext;

    fn file(size: u64) -> FileEntry {
        FileEntry {
            name: None,
            inode: 12,
            size: Some(size),
            policy: None,
            master_key_hex: None,
            master_key_seed: Some("1".to_owned()),
            hw_wrapped_key_seed: None,
            plaintext: Plaintext::Splitmix64 {
                seed: 7,
                ranges: None,
            },
        }
    }

    #[test]
    fn a_short_tail_is_not_looked_for_but_full_units_are() {
        // 2 full 1 KiB units and a 1-byte tail: the tail's unit is one
        // byte and 1023 zeros, the shape of a nearly empty bitmap block.
        let mut set = HashSet::new();
        collect_plaintext(&file(2049), 2049, 1024, &mut set);
        assert_eq!(set.len(), 2);
        let mut tail = vec![0u8; 1024];
        file(2049).plaintext.fill(2048, 2049, &mut tail);
        assert!(!set.contains(&<[u8; 32]>::from(Sha256::digest(&tail))));
        let mut first = vec![0u8; 1024];
        file(2049).plaintext.fill(0, 2049, &mut first);
        assert!(set.contains(&<[u8; 32]>::from(Sha256::digest(&first))));
    }

    #[test]
    fn distinctive_needs_sixteen_non_zero_bytes() {
        let mut unit = vec![0u8; 512];
        unit[..15].fill(0xa5);
        assert!(!is_distinctive(&unit));
        unit[100] = 1;
        assert!(is_distinctive(&unit));
    }
}
