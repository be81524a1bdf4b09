//! Images written through a device with a default key: every request
//! without a crypto context (file system metadata, directories,
//! unencrypted files) is AES-256-XTS under the device's 64-byte default
//! key, data unit size = the device's logical block size (512 to 4096),
//! DUN = the data unit's index on the device (byte offset / data unit
//! size), the same tweak convention as fscrypt's ([`crate::xts`]).
//! fscrypt file contents carry their own key and are not encrypted twice;
//! discarded and never-written data units stay all zeros.
//!
//! Method: find the data unit size at which the key decrypts the ext4
//! superblock; write the decrypted view of the image to a temporary file;
//! read the file system (superblock, block maps, fscrypt contexts) from
//! the view and check fscrypt files on the raw image as [`crate::verify`]
//! does; check plain files in the view; look for every distinctive unit
//! of the view on the raw image, and for raw units that look like
//! plaintext; `e2fsck -fn` the view.

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::check::{
    MAX_ITEMISED, PlaintextHit, Problem, Report, check_plain_files, is_distinctive, read_inodes,
    verify_with,
};
use crate::dun::Dun;
use crate::ext4::Debugfs;
use crate::hex::to_hex;
use crate::manifest::Manifest;
use crate::xts::XtsKey;
use crate::{Error, Result};

/// A default key is 64 raw bytes (AES-256-XTS: data key, tweak key).
pub const DEFAULT_KEY_SIZE: usize = 64;

/// The data unit sizes a device may use (its logical block size).
pub const DATA_UNIT_SIZES: [u32; 4] = [512, 1024, 2048, 4096];

/// Image byte offset of the primary superblock's `s_magic` (1024 + 0x38).
const MAGIC_OFFSET: u64 = 1080;
/// `EXT4_SUPER_MAGIC`, stored little-endian.
const EXT4_SUPER_MAGIC: u16 = 0xef53;
/// Image byte offset of `s_log_block_size` (1024 + 0x18).
const LOG_BLOCK_SIZE_OFFSET: u64 = 1048;
/// Images are read in chunks of this many bytes.
const CHUNK: usize = 1 << 20;
/// Lines of e2fsck's output kept in the report.
const FSCK_LINES: usize = 20;

/// What the default-key checks found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DefaultKeyReport {
    /// The data unit size at which the key decrypts the superblock; `None`
    /// when there is none (wrong key, or not a default-key image).
    pub data_unit_size: Option<u32>,
    /// The ext4 magic is on the raw image: the superblock is in the clear.
    pub superblock_magic_on_raw: bool,
    /// The ext4 magic is in the decrypted view.
    pub superblock_magic_in_view: bool,
    /// Distinct distinctive units of the view looked for on the raw image.
    pub view_units_looked_for: u64,
    /// Raw units equal to a unit of the view: plaintext on the image.
    pub metadata_hit_count: u64,
    /// The first [`MAX_ITEMISED`] of them.
    pub metadata_hits: Vec<PlaintextHit>,
    /// Raw units, not all zero, in which one byte value fills at least
    /// 1/8 of the unit: plaintext (see [`looks_like_plaintext`]).
    pub plaintext_like_unit_count: u64,
    /// Image offsets of the first [`MAX_ITEMISED`] of them.
    pub plaintext_like_units: Vec<u64>,
    /// File system blocks of plain files that hold their plaintext in the
    /// view.
    pub plain_file_units_in_view: u64,
    /// ... and those that do not (itemised in
    /// [`Report::plain_file_mismatches`]).
    pub plain_file_units_missing: u64,
    /// `e2fsck -fn` on the view exited 0.
    pub fsck_clean: bool,
    /// Its exit status (`None`: not run, or killed by a signal).
    pub fsck_exit_code: Option<i32>,
    /// The last lines of its output (stdout, then stderr).
    pub fsck_output: String,
}

impl DefaultKeyReport {
    pub fn passed(&self) -> bool {
        self.data_unit_size.is_some()
            && !self.superblock_magic_on_raw
            && self.superblock_magic_in_view
            && self.metadata_hit_count == 0
            && self.plaintext_like_unit_count == 0
            && self.plain_file_units_missing == 0
            && self.fsck_clean
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Itemised findings, then one summary line (each line ends in `\n`).
impl fmt::Display for DefaultKeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for h in &self.metadata_hits {
            writeln!(
                f,
                "default key: plaintext of the decrypted view on the raw image at offset {} ({}-byte unit {})",
                h.image_offset, h.data_unit_size, h.digest
            )?;
        }
        if let Some(dus) = self.data_unit_size {
            for o in &self.plaintext_like_units {
                writeln!(
                    f,
                    "default key: raw {dus}-byte unit at offset {o} looks like plaintext"
                )?;
            }
        }
        if !self.fsck_clean {
            for line in self.fsck_output.lines() {
                writeln!(f, "e2fsck: {line}")?;
            }
        }
        let Some(dus) = self.data_unit_size else {
            return writeln!(
                f,
                "default key: no data unit size decrypts the superblock; superblock magic raw {}",
                yes_no(self.superblock_magic_on_raw)
            );
        };
        let fsck = match (self.fsck_clean, self.fsck_exit_code) {
            (true, _) => "clean".to_string(),
            (false, Some(c)) => format!("NOT clean (exit {c})"),
            (false, None) => "NOT clean (killed)".to_string(),
        };
        writeln!(
            f,
            "default key: {dus}-byte units; superblock magic raw {} / view {}; \
             {} metadata units looked for on the raw image: {} found; \
             {} raw units look like plaintext; \
             plain files: {} units in the view, {} missing; e2fsck {fsck}",
            yes_no(self.superblock_magic_on_raw),
            yes_no(self.superblock_magic_in_view),
            self.view_units_looked_for,
            self.metadata_hit_count,
            self.plaintext_like_unit_count,
            self.plain_file_units_in_view,
            self.plain_file_units_missing,
        )
    }
}

/// Read a default key file: exactly [`DEFAULT_KEY_SIZE`] raw bytes. The
/// error names the file and its size, never the bytes.
pub fn read_key_file(
    path: &Path,
) -> std::result::Result<Zeroizing<[u8; DEFAULT_KEY_SIZE]>, String> {
    let io = |e: std::io::Error| format!("cannot read the default key {}: {e}", path.display());
    let mut file = File::open(path).map_err(io)?;
    let mut buf = Zeroizing::new([0u8; DEFAULT_KEY_SIZE + 1]);
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
    }
    if n != DEFAULT_KEY_SIZE {
        let size = if n > DEFAULT_KEY_SIZE {
            file.metadata()
                .map(|m| m.len().to_string())
                .unwrap_or_else(|_| format!("more than {DEFAULT_KEY_SIZE}"))
        } else {
            n.to_string()
        };
        return Err(format!(
            "the default key {} is {size} bytes; a default key is {DEFAULT_KEY_SIZE} raw bytes (AES-256-XTS)",
            path.display()
        ));
    }
    let mut key = Zeroizing::new([0u8; DEFAULT_KEY_SIZE]);
    key.copy_from_slice(&buf[..DEFAULT_KEY_SIZE]);
    Ok(key)
}

/// [`verify_with_default_key_in`] with the view in [`std::env::temp_dir`].
pub fn verify_with_default_key(
    image: &Path,
    manifest: &Manifest,
    key: &[u8; DEFAULT_KEY_SIZE],
) -> Result<Report> {
    verify_with_default_key_in(image, manifest, key, &std::env::temp_dir())
}

/// Check an image written through a device with the default key `key`;
/// the decrypted view (as large as the image, sparse where the image is
/// zero) is written to a temporary file in `view_dir` and removed before
/// returning, also on error. `Err` only when the check cannot be done
/// (e2fsprogs missing, unreadable image, no room for the view).
pub fn verify_with_default_key_in(
    image: &Path,
    manifest: &Manifest,
    key: &[u8; DEFAULT_KEY_SIZE],
    view_dir: &Path,
) -> Result<Report> {
    let key = Zeroizing::new(*key);
    let xts = XtsKey::new(&key);
    let raw = Image::open(image)?;
    let mut dk = DefaultKeyReport {
        superblock_magic_on_raw: raw.len >= MAGIC_OFFSET + 2
            && has_magic(&raw.read(MAGIC_OFFSET, 2)?),
        ..DefaultKeyReport::default()
    };
    let Some(dus) = detect_data_unit_size(&raw, &xts)? else {
        let mut report = Report::default();
        report.problems.push(Problem {
            inode: 0,
            message: "the default key does not decrypt an ext4 superblock at any data unit size \
                      from 512 to 4096: wrong key, or not a default-key image"
                .into(),
        });
        report.default_key = Some(dk);
        return Ok(report);
    };
    dk.data_unit_size = Some(dus);
    let mut problems = Vec::new();
    if raw.len % u64::from(dus) != 0 {
        problems.push(Problem {
            inode: 0,
            message: format!(
                "image size {} is not a multiple of the {dus}-byte data unit; the tail is not checked",
                raw.len
            ),
        });
    }

    let view = TempView::create(view_dir)?;
    let wanted = write_view(&raw, &xts, dus, &view, &mut dk)?;
    dk.view_units_looked_for = wanted.len() as u64;
    find_view_units_on_raw(&raw, dus, &wanted, &mut dk)?;
    drop(wanted);
    let mut magic = [0u8; 2];
    view.file
        .read_exact_at(&mut magic, MAGIC_OFFSET)
        .map_err(|source| view.error(source))?;
    dk.superblock_magic_in_view = has_magic(&magic);

    // The file system as the guest saw it is in the view; fscrypt file
    // contents are checked on the raw image (the device does not touch
    // them), plain files in the view.
    let fs = Debugfs::new(&view.path);
    let mut report = match fs.superblock() {
        Ok(sb) => {
            let inodes = read_inodes(&fs, manifest)?;
            let mut report = verify_with(image, manifest, &sb, &inodes)?;
            let (checked, missing) =
                check_plain_files(&fs, &view.path, manifest, &sb, &mut report)?;
            dk.plain_file_units_in_view = checked - missing;
            dk.plain_file_units_missing = missing;
            report
        }
        Err(e @ Error::Tool { .. }) => return Err(e),
        Err(e) => Report {
            problems: vec![Problem {
                inode: 0,
                message: format!("cannot read the superblock of the decrypted view: {e}"),
            }],
            ..Report::default()
        },
    };
    report.problems.splice(0..0, problems);
    let (code, output) = fsck(&view.path)?;
    dk.fsck_clean = code == Some(0);
    dk.fsck_exit_code = code;
    dk.fsck_output = output;
    report.default_key = Some(dk);
    Ok(report)
}

/// The raw image, read-only.
struct Image<'a> {
    file: File,
    path: &'a Path,
    len: u64,
}

impl<'a> Image<'a> {
    fn open(path: &'a Path) -> Result<Self> {
        let err = |source| Error::Image {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        Ok(Self { file, path, len })
    }

    fn read_into(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Image {
                path: self.path.to_path_buf(),
                source,
            })
    }

    fn read(&self, offset: u64, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.read_into(&mut buf, offset)?;
        Ok(buf)
    }
}

fn has_magic(bytes: &[u8]) -> bool {
    bytes[..2] == EXT4_SUPER_MAGIC.to_le_bytes()
}

/// The first data unit size at which image bytes 0..4096, decrypted unit
/// by unit (units all zero on the raw image stay zero), hold the ext4
/// magic at 1080, a sane `s_log_block_size` (at most 6: 64 KiB blocks),
/// and, at 2048..4096, zeros or something that looks like plaintext.
///
/// The last test tells 2048 from 4096: XTS encrypts each 16-byte block
/// with the tweak multiplied by alpha^j, j its index in the data unit, so
/// the first 2048 bytes of a 4096-byte unit decrypt correctly as a
/// 2048-byte unit with the same DUN (0), superblock included. Bytes
/// 2048..4096 (block 0's zero padding with 4 KiB blocks, group
/// descriptors with smaller blocks) decrypt to random bytes at the wrong
/// one of the two sizes. The other sizes put the superblock at a
/// different DUN or position; a wrong size or key passes the magic and
/// `s_log_block_size` by chance with probability about 2^-45.
fn detect_data_unit_size(raw: &Image, xts: &XtsKey) -> Result<Option<u32>> {
    const HEAD: u64 = 4096;
    if raw.len < HEAD {
        return Ok(None);
    }
    let head = raw.read(0, HEAD as usize)?;
    for dus in DATA_UNIT_SIZES {
        let mut buf = Zeroizing::new(head.clone());
        for (i, unit) in buf.chunks_exact_mut(dus as usize).enumerate() {
            if unit.iter().any(|&b| b != 0) {
                xts.decrypt_data_unit(Dun(i as u64), unit);
            }
        }
        let at = LOG_BLOCK_SIZE_OFFSET as usize;
        let log_block_size = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let tail = &buf[2048..];
        if has_magic(&buf[MAGIC_OFFSET as usize..])
            && log_block_size <= 6
            && (tail.iter().all(|&b| b == 0) || looks_like_plaintext(tail))
        {
            return Ok(Some(dus));
        }
    }
    Ok(None)
}

/// Whether a raw unit (not all zeros) looks like plaintext: one byte value
/// fills at least 1/8 of it. In AES-XTS ciphertext each byte value is a
/// Binomial(n, 1/256) count, mean n/256; by the Chernoff bound reaching n/8
/// has probability below e^-160 for n = 512 (e^-1300 for 4096), times 256
/// values. File system metadata (inode tables, bitmaps, group descriptors,
/// directories, the journal) is mostly zeros or 0xff and always trips it;
/// text usually does (spaces); random-looking data does not.
pub fn looks_like_plaintext(unit: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    for &b in unit {
        counts[usize::from(b)] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0) as usize;
    max * 8 >= unit.len()
}

/// SHA-256 truncated to 128 bits: the set is not adversarial, and a
/// 4 GiB image of 512-byte units holds 8 Mi of them.
fn digest128(unit: &[u8]) -> [u8; 16] {
    Sha256::digest(unit)[..16].try_into().expect("16 bytes")
}

/// Pass 1: decrypt every data unit into the view, except units that are
/// all zeros on the raw image, which stay zeros: those were never written
/// or were discarded (the device writes zeros only as ciphertext, and an
/// XTS ciphertext unit is all zeros with probability 2^-4096 or less).
/// Returns the digests of the view's distinctive units; flags raw units
/// that look like plaintext.
fn write_view(
    raw: &Image,
    xts: &XtsKey,
    dus: u32,
    view: &TempView,
    dk: &mut DefaultKeyReport,
) -> Result<HashSet<[u8; 16]>> {
    let d = u64::from(dus);
    let whole = raw.len / d * d;
    view.file
        .set_len(raw.len)
        .map_err(|source| view.error(source))?;
    let mut wanted = HashSet::new();
    // The view holds the decrypted file system: wiped when done.
    let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
    let mut off = 0;
    while off < whole {
        let n = (whole - off).min(CHUNK as u64) as usize;
        let chunk = &mut buf[..n];
        raw.read_into(chunk, off)?;
        let mut any = false;
        for (i, unit) in chunk.chunks_exact_mut(dus as usize).enumerate() {
            if unit.iter().all(|&b| b == 0) {
                continue;
            }
            any = true;
            let at = off + i as u64 * d;
            if looks_like_plaintext(unit) {
                dk.plaintext_like_unit_count += 1;
                if dk.plaintext_like_units.len() < MAX_ITEMISED {
                    dk.plaintext_like_units.push(at);
                }
            }
            xts.decrypt_data_unit(Dun(at / d), unit);
            if is_distinctive(unit) {
                wanted.insert(digest128(unit));
            }
        }
        if any {
            view.file
                .write_all_at(chunk, off)
                .map_err(|source| view.error(source))?;
        }
        off += n as u64;
    }
    Ok(wanted)
}

/// Pass 2: every aligned unit of the raw image that is the plaintext of a
/// distinctive unit of the view (anywhere) is a hit.
fn find_view_units_on_raw(
    raw: &Image,
    dus: u32,
    wanted: &HashSet<[u8; 16]>,
    dk: &mut DefaultKeyReport,
) -> Result<()> {
    let d = u64::from(dus);
    let whole = raw.len / d * d;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0;
    while off < whole {
        let n = (whole - off).min(CHUNK as u64) as usize;
        let chunk = &mut buf[..n];
        raw.read_into(chunk, off)?;
        for (i, unit) in chunk.chunks_exact(dus as usize).enumerate() {
            // All-zero units are never distinctive.
            if unit.iter().all(|&b| b == 0) {
                continue;
            }
            let digest = Sha256::digest(unit);
            if wanted.contains(&digest[..16]) {
                dk.metadata_hit_count += 1;
                if dk.metadata_hits.len() < MAX_ITEMISED {
                    dk.metadata_hits.push(PlaintextHit {
                        image_offset: off + i as u64 * d,
                        data_unit_size: dus,
                        digest: to_hex(&digest[..8]),
                    });
                }
            }
        }
        off += n as u64;
    }
    Ok(())
}

/// `e2fsck -fn view`: its exit status and the last [`FSCK_LINES`] lines
/// of its output (stdout and stderr interleaved as written, without the
/// version banner, the view's temporary path shown as `VIEW`).
fn fsck(view: &Path) -> Result<(Option<i32>, String)> {
    let tool = |source| Error::Tool {
        tool: "e2fsck".into(),
        source,
    };
    let (mut reader, writer) = std::io::pipe().map_err(tool)?;
    let mut cmd = Command::new("e2fsck");
    cmd.arg("-fn")
        .arg(view)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(tool)?)
        .stderr(writer);
    let mut child = cmd.spawn().map_err(tool)?;
    // The command holds the pipe's write ends: close them, or the read
    // below never sees the end.
    drop(cmd);
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(tool)?;
    let status = child.wait().map_err(tool)?;
    let text = String::from_utf8_lossy(&bytes).replace(&*view.to_string_lossy(), "VIEW");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("e2fsck 1."))
        .collect();
    let tail = lines[lines.len().saturating_sub(FSCK_LINES)..].join("\n");
    Ok((status.code(), tail))
}

/// A file in a directory that is removed when dropped (on every path out
/// of the check, errors included). Created new, mode 0600: it holds the
/// decrypted file system.
struct TempView {
    path: PathBuf,
    file: File,
}

impl TempView {
    fn create(dir: &Path) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!(
            "icelab-verifier-view-{}-{nanos}-{}.img",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| Error::View {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, file })
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error::View {
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for TempView {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::splitmix64;

    fn random_unit(n: usize, seed: u64) -> Vec<u8> {
        (0..n.div_ceil(8) as u64)
            .flat_map(|i| splitmix64(seed + i).to_le_bytes())
            .take(n)
            .collect()
    }

    #[test]
    fn plaintext_looks_like_plaintext_and_ciphertext_does_not() {
        let key = [0x42u8; 64];
        let xts = XtsKey::new(&key);
        for n in [512, 4096] {
            // Structured: zeros with a few fields, a full bitmap, text.
            let mut inode_table = vec![0u8; n];
            inode_table[..64].copy_from_slice(&random_unit(64, 1));
            assert!(looks_like_plaintext(&inode_table));
            assert!(looks_like_plaintext(&vec![0xff; n]));
            let text = b"the quick brown fox jumps over a lazy dog ".repeat(n / 42 + 1);
            assert!(looks_like_plaintext(&text[..n]));
            assert!(!looks_like_plaintext(&random_unit(n, 7)));
            for dun in 0..200 {
                let mut c = vec![0u8; n];
                xts.encrypt_data_unit(Dun(dun), &mut c);
                assert!(!looks_like_plaintext(&c), "{n} {dun}");
            }
        }
    }

    #[test]
    fn key_file_must_hold_64_bytes() {
        let dir = std::env::temp_dir().join(format!("icelab-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [0usize, 32, 63, 65, 4096] {
            let p = dir.join(format!("k{n}"));
            std::fs::write(&p, vec![0xabu8; n]).unwrap();
            let e = read_key_file(&p).unwrap_err();
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(e.contains(&format!("is {n} bytes")), "{e}");
            assert!(e.contains("64 raw bytes"), "{e}");
            assert!(!e.contains("abab"), "{e}");
        }
        let p = dir.join("k64");
        std::fs::write(&p, [0xabu8; 64]).unwrap();
        assert_eq!(*read_key_file(&p).unwrap(), [0xab; 64]);
        assert!(read_key_file(&dir.join("absent")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_view_is_removed_on_drop() {
        let dir = std::env::temp_dir();
        let v = TempView::create(&dir).unwrap();
        let path = v.path.clone();
        let w = TempView::create(&dir).unwrap();
        assert_ne!(path, w.path);
        assert!(path.exists());
        drop(v);
        assert!(!path.exists());
    }

    #[test]
    fn the_superblock_is_found_at_its_data_unit_size_only() {
        // A fake image: zeros except a superblock with the magic and
        // s_log_block_size 2, encrypted at each size in turn.
        let key = [0x17u8; 64];
        let xts = XtsKey::new(&key);
        let mut plain = vec![0u8; 16384];
        plain[1024..2048].copy_from_slice(&random_unit(1024, 3));
        plain[MAGIC_OFFSET as usize..][..2].copy_from_slice(&EXT4_SUPER_MAGIC.to_le_bytes());
        plain[LOG_BLOCK_SIZE_OFFSET as usize..][..4].copy_from_slice(&2u32.to_le_bytes());
        let dir = std::env::temp_dir();
        // Zero units never written (left zero) or written (encrypted).
        for (dus, written) in DATA_UNIT_SIZES
            .into_iter()
            .flat_map(|d| [(d, false), (d, true)])
        {
            let mut img = plain.clone();
            for (i, u) in img.chunks_exact_mut(dus as usize).enumerate() {
                if written || u.iter().any(|&b| b != 0) {
                    xts.encrypt_data_unit(Dun(i as u64), u);
                }
            }
            let v = TempView::create(&dir).unwrap();
            v.file.write_all_at(&img, 0).unwrap();
            let raw = Image::open(&v.path).unwrap();
            assert_eq!(
                detect_data_unit_size(&raw, &xts).unwrap(),
                Some(dus),
                "written {written}"
            );
            let other = XtsKey::new(&[0x18; 64]);
            assert_eq!(detect_data_unit_size(&raw, &other).unwrap(), None);
        }
    }
}
