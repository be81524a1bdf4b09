//! The policy matrix as data: which policies, data unit sizes and files
//! the `matrix` tests create, and what every file must hold afterwards.
//!
//! Pure (no I/O) so that the second boot (`lab-reboot`) can recompute the
//! same list from the code and `icelab.seed`, and so that it is
//! unit-tested on the host.

use crate::data;
use crate::fscrypt::{
    FSCRYPT_MODE_AES_256_CTS, FSCRYPT_MODE_AES_256_XTS, FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32,
    FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64, FSCRYPT_POLICY_FLAGS_PAD_32, FSCRYPT_POLICY_V2,
    FscryptPolicyV2, KeyIdentifier,
};

/// The filesystem block size the lab formats with (`mkfs.ext4 -b 4096`).
pub const BLOCK_SIZE: u64 = 4096;

/// How the IVs (DUNs) of a policy are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Flags 0: a key per file, DUN = data unit index.
    PerFile,
    /// IV_INO_LBLK_64: one key per mode, DUN = inode << 32 | index.
    Lblk64,
    /// IV_INO_LBLK_32: one key per mode, DUN = (u32)(hash(inode) + index).
    Lblk32,
}

impl Scheme {
    /// The policy flag bits.
    pub fn flags(self) -> u8 {
        match self {
            Scheme::PerFile => 0,
            Scheme::Lblk64 => FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64,
            Scheme::Lblk32 => FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32,
        }
    }

    /// The flag names as the verifier's manifest takes them.
    pub fn flag_names(self) -> &'static [&'static str] {
        match self {
            Scheme::PerFile => &[],
            Scheme::Lblk64 => &["IV_INO_LBLK_64"],
            Scheme::Lblk32 => &["IV_INO_LBLK_32"],
        }
    }
}

/// `log2(s_maxbytes)` of ext4 with extents and 4 KiB blocks: s_maxbytes
/// is `(2^32 - 1) << 12` (fs/ext4/super.c, ext4_max_size()), and fscrypt
/// sizes the DUN of per-file-key policies from it
/// (`fscrypt_max_file_dun_bits() = fls64(s_maxbytes - 1) - du_bits`).
pub const EXT4_MAX_FILE_BITS: u32 = 44;

/// How a file of the matrix is written. Whatever the shape, every byte a
/// file holds at the end is the offset generator's byte for its offset
/// (inside [`FileSpec::ranges`]) or zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One buffered write of the whole file.
    Whole,
    /// O_DIRECT writes from an aligned buffer, whole blocks (the size is a
    /// multiple of [`BLOCK_SIZE`]), in chunks of these sizes in turn.
    Direct,
    /// Whole file, then `[at, at + len)` overwritten in place with another
    /// pattern (synced, read back), then with the generator's bytes again.
    Overwrite {
        /// Start of the overwritten range.
        at: u64,
        /// Its length.
        len: u64,
    },
    /// Only `ranges` written (pwrite, out of order), then ftruncate to the
    /// size: holes before, between and after.
    Sparse {
        /// The written ranges `(start, end)`, sorted, disjoint.
        ranges: &'static [(u64, u64)],
    },
    /// `[0, first)` written and synced; truncated to `cut` (unaligned);
    /// extended with ftruncate to `hole_end`; then `[resume, size)`
    /// written with pwrite. `[cut, resume)` reads as zeros.
    TruncateExtend {
        /// Bytes first written.
        first: u64,
        /// The shorter size truncated to.
        cut: u64,
        /// The size ftruncate extends to.
        hole_end: u64,
        /// Where the final pwrite starts (>= `hole_end`).
        resume: u64,
    },
}

/// One file of a matrix test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// The file's name in the test's directory.
    pub leaf: &'static str,
    /// Its final size.
    pub size: u64,
    /// How it is written.
    pub shape: Shape,
}

impl FileSpec {
    /// The final plaintext ranges `[start, end)` holding generator bytes
    /// (empty ones left out); everything else up to the size is zero.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let all: Vec<(u64, u64)> = match self.shape {
            Shape::Whole | Shape::Direct | Shape::Overwrite { .. } => vec![(0, self.size)],
            Shape::Sparse { ranges } => ranges.to_vec(),
            Shape::TruncateExtend { cut, resume, .. } => vec![(0, cut), (resume, self.size)],
        };
        all.into_iter().filter(|(s, e)| s < e).collect()
    }

    /// The file's final contents under `seed` (its content seed).
    pub fn expected(&self, seed: u64) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(self.size).unwrap_or(0)];
        for (s, e) in self.ranges() {
            let (s, e) = (s as usize, e as usize);
            data::fill_at(seed, s as u64, &mut buf[s..e]);
        }
        buf
    }
}

/// The sparse file's written ranges: holes at the start, between, and
/// (after ftruncate to 1 MiB) at the end; partial blocks on both sides.
const SPARSE_RANGES: &[(u64, u64)] = &[
    (2 * 4096 + 100, 3 * 4096 + 7),
    (65536, 65536 + 8192),
    (300_000, 300_001),
    (700_001, 712_345),
];

/// The files every positive matrix test writes besides its big file.
const COMMON_FILES: &[FileSpec] = &[
    FileSpec {
        leaf: "0",
        size: 0,
        shape: Shape::Whole,
    },
    FileSpec {
        leaf: "1",
        size: 1,
        shape: Shape::Whole,
    },
    FileSpec {
        leaf: "4095",
        size: 4095,
        shape: Shape::Whole,
    },
    FileSpec {
        leaf: "4096",
        size: 4096,
        shape: Shape::Whole,
    },
    FileSpec {
        leaf: "4097",
        size: 4097,
        shape: Shape::Whole,
    },
    FileSpec {
        leaf: "sparse",
        size: 1 << 20,
        shape: Shape::Sparse {
            ranges: SPARSE_RANGES,
        },
    },
    FileSpec {
        leaf: "direct",
        size: 64 * 4096,
        shape: Shape::Direct,
    },
    FileSpec {
        leaf: "overwrite",
        size: 131_405,
        shape: Shape::Overwrite {
            at: 40_000,
            len: 20_000,
        },
    },
    FileSpec {
        leaf: "trunc-extend",
        size: 120_000,
        shape: Shape::TruncateExtend {
            first: 100_000,
            cut: 50_001,
            hole_end: 70_000,
            resume: 81_925,
        },
    },
];

/// Chunk sizes of the O_DIRECT writes (cycled): one, two and three blocks
/// per call, so requests of several sizes reach the device.
pub const DIRECT_CHUNKS: &[u64] = &[4096, 8192, 12288];

/// One policy × data unit size combination of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// The test's name, also its directory (relative to the mount point)
    /// and its master key's name.
    pub name: &'static str,
    /// The IV scheme.
    pub scheme: Scheme,
    /// `log2_data_unit_size` in the policy (0: the block size).
    pub log2_dus: u8,
    /// Size of the big file (`big`), several MiB.
    pub big: u64,
    /// Whether the kernel must refuse the policy (EINVAL, with the
    /// warning [`Case::refusal`] names) instead.
    pub rejected: bool,
}

/// 3 MiB + 17 B: 6145 data units of 512 B.
const BIG_512: u64 = (3 << 20) + 17;
/// 2 MiB + 4097 B: a partial last block.
const BIG: u64 = (2 << 20) + 4097;

/// fscrypt's warning for IV_INO_LBLK_* when the filesystem's largest file
/// has more than 2^32 data units of the policy's size.
pub const MAX_FILE_SIZE_WARNING: &str = "because its maximum file size is too large";

/// fscrypt's warning for IV_INO_LBLK_32 with data units smaller than the
/// block.
pub const SUBBLOCK_LBLK32_WARNING: &str =
    "Sub-block data units not yet supported with IV_INO_LBLK_32";

/// The matrix, in the order the tests run: the accepted policies first
/// (the second boot rereads those), then the refused ones.
pub const CASES: &[Case] = &[
    Case {
        name: "policy/default-dus4096",
        scheme: Scheme::PerFile,
        log2_dus: 0,
        big: BIG,
        rejected: false,
    },
    Case {
        name: "policy/default-dus1024",
        scheme: Scheme::PerFile,
        log2_dus: 10,
        big: BIG,
        rejected: false,
    },
    Case {
        name: "policy/default-dus512",
        scheme: Scheme::PerFile,
        log2_dus: 9,
        big: BIG_512,
        rejected: false,
    },
    Case {
        name: "policy/lblk64-dus4096",
        scheme: Scheme::Lblk64,
        log2_dus: 0,
        big: BIG,
        rejected: false,
    },
    Case {
        name: "policy/lblk32-dus4096",
        scheme: Scheme::Lblk32,
        log2_dus: 0,
        big: BIG,
        rejected: false,
    },
    // IV_INO_LBLK_* need data unit indices below 2^32; ext4's largest
    // file (2^44 B) has 2^35 units of 512 B, so the kernel refuses it.
    Case {
        name: "policy/lblk64-dus512-rejected",
        scheme: Scheme::Lblk64,
        log2_dus: 9,
        big: 0,
        rejected: true,
    },
    // fscrypt refuses sub-block data units with IV_INO_LBLK_32 (Linux
    // 6.7+: the 32-bit DUN could wrap inside a block).
    Case {
        name: "policy/lblk32-dus1024-rejected",
        scheme: Scheme::Lblk32,
        log2_dus: 10,
        big: 0,
        rejected: true,
    },
];

impl Case {
    /// The data unit size in bytes.
    pub fn data_unit_size(&self) -> u64 {
        if self.log2_dus == 0 {
            BLOCK_SIZE
        } else {
            1 << self.log2_dus
        }
    }

    /// The warning fscrypt logs (fs/crypto/policy.c) when it refuses this
    /// policy on ext4 with 4 KiB blocks, or `None` if it accepts it.
    /// Checked in the kernel's order: sub-block units with IV_INO_LBLK_32
    /// first, then the 2^32 data unit limit of both IV_INO_LBLK_* flags.
    pub fn refusal(&self) -> Option<&'static str> {
        let sub_block = self.data_unit_size() < BLOCK_SIZE;
        match self.scheme {
            Scheme::Lblk32 if sub_block => Some(SUBBLOCK_LBLK32_WARNING),
            Scheme::Lblk32 | Scheme::Lblk64
                if EXT4_MAX_FILE_BITS - self.data_unit_size().trailing_zeros() > 32 =>
            {
                Some(MAX_FILE_SIZE_WARNING)
            }
            _ => None,
        }
    }

    /// The files the test writes (none for a rejected policy).
    pub fn files(&self) -> Vec<FileSpec> {
        if self.rejected {
            return Vec::new();
        }
        let mut files = COMMON_FILES.to_vec();
        files.push(FileSpec {
            leaf: "big",
            size: self.big,
            shape: Shape::Whole,
        });
        files
    }

    /// A file's name relative to the mount point (its manifest name and
    /// the input of its content seed).
    pub fn file_name(&self, file: &FileSpec) -> String {
        format!("{}/{}", self.name, file.leaf)
    }

    /// The v2 policy the test sets with master key `key`: AES-256-XTS
    /// contents, AES-256-CTS filenames padded to 32 bytes.
    pub fn policy(&self, key: &KeyIdentifier) -> FscryptPolicyV2 {
        FscryptPolicyV2 {
            version: FSCRYPT_POLICY_V2,
            contents_encryption_mode: FSCRYPT_MODE_AES_256_XTS,
            filenames_encryption_mode: FSCRYPT_MODE_AES_256_CTS,
            flags: FSCRYPT_POLICY_FLAGS_PAD_32 | self.scheme.flags(),
            log2_data_unit_size: self.log2_dus,
            reserved: [0; 3],
            master_key_identifier: key.0,
        }
    }

    /// The DUN size fscrypt asks blk-crypto for
    /// (fs/crypto/inline_crypt.c, fscrypt_get_dun_bytes()).
    pub fn dun_bytes(&self) -> u32 {
        match self.scheme {
            Scheme::Lblk64 => 8,
            Scheme::Lblk32 => 4,
            Scheme::PerFile => {
                let log2 = self.data_unit_size().trailing_zeros();
                (EXT4_MAX_FILE_BITS - log2).div_ceil(8)
            }
        }
    }

    /// Whether a device with `max_dun_bits` and AES-256-XTS data unit
    /// mask `modes` can take this policy's keys (blk-crypto then uses it
    /// natively; otherwise blk-crypto-fallback encrypts in software).
    pub fn native_on(&self, max_dun_bits: u32, modes: u32) -> bool {
        let log2 = self.data_unit_size().trailing_zeros();
        self.dun_bytes() * 8 <= max_dun_bits && modes & (1 << log2) != 0
    }

    /// Total data units of the test's files.
    pub fn data_units(&self) -> u64 {
        let dus = self.data_unit_size();
        self.files().iter().map(|f| f.size.div_ceil(dus)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_covers_the_required_combinations() {
        let has = |scheme, dus| {
            CASES
                .iter()
                .any(|c| !c.rejected && c.scheme == scheme && c.data_unit_size() == dus)
        };
        for dus in [512, 1024, 4096] {
            assert!(has(Scheme::PerFile, dus), "default/{dus}");
        }
        assert!(has(Scheme::Lblk64, 4096));
        assert!(has(Scheme::Lblk32, 4096));
        for c in CASES {
            assert_eq!(c.rejected, c.refusal().is_some(), "{}", c.name);
        }
        // Accepted first, refused last.
        let first_refused = CASES.iter().position(|c| c.rejected);
        assert!(first_refused.is_some_and(|i| CASES[i..].iter().all(|c| c.rejected)));
        let total: u64 = CASES.iter().map(Case::data_units).sum();
        assert!(total > 10_000, "{total} data units");
        let names: std::collections::BTreeSet<_> = CASES.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CASES.len());
    }

    #[test]
    fn dun_bytes_and_paths_follow_the_kernel() {
        let case = |name: &str| *CASES.iter().find(|c| c.name == name).expect(name);
        // ufs: 64 DUN bits, data units 512..4096 (mask 0x1e00).
        for c in CASES {
            assert!(c.native_on(64, 0x1e00), "{}", c.name);
        }
        // emmc: 32 DUN bits.
        assert_eq!(case("policy/default-dus4096").dun_bytes(), 4);
        assert!(case("policy/default-dus4096").native_on(32, 0x1e00));
        assert_eq!(case("policy/default-dus512").dun_bytes(), 5);
        assert!(!case("policy/default-dus512").native_on(32, 0x1e00));
        assert!(!case("policy/default-dus1024").native_on(32, 0x1e00));
        assert!(!case("policy/lblk64-dus4096").native_on(32, 0x1e00));
        assert!(case("policy/lblk32-dus4096").native_on(32, 0x1e00));
        // A device without 512-byte data units.
        assert!(!case("policy/default-dus512").native_on(64, 0x1000));
    }

    #[test]
    fn ranges_and_expected_contents() {
        let files = CASES[0].files();
        let f = |leaf: &str| *files.iter().find(|f| f.leaf == leaf).expect(leaf);
        assert_eq!(f("0").ranges(), vec![]);
        assert_eq!(f("4097").ranges(), vec![(0, 4097)]);
        let t = f("trunc-extend");
        assert_eq!(t.ranges(), vec![(0, 50_001), (81_925, 120_000)]);
        let e = t.expected(9);
        assert_eq!(e.len(), 120_000);
        assert_eq!(e[..50_001], data::bytes_at(9, 0, 50_001)[..]);
        assert!(e[50_001..81_925].iter().all(|&b| b == 0));
        assert_eq!(e[81_925..], data::bytes_at(9, 81_925, 120_000 - 81_925)[..]);
        let s = f("sparse");
        let e = s.expected(3);
        assert!(e[..2 * 4096 + 100].iter().all(|&b| b == 0));
        assert_eq!(e[65536..65536 + 8192], data::bytes_at(3, 65536, 8192)[..]);
        assert!(e[712_345..].iter().all(|&b| b == 0));
        assert!(SPARSE_RANGES.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(SPARSE_RANGES.iter().all(|r| r.1 <= s.size));
        let d = f("direct");
        assert_eq!(d.size % BLOCK_SIZE, 0);
        for spec in &files {
            if let Shape::TruncateExtend {
                first,
                cut,
                hole_end,
                resume,
            } = spec.shape
            {
                assert!(cut < first && cut < hole_end && hole_end <= resume);
                assert!(resume < spec.size);
            }
        }
    }

    #[test]
    fn policy_fields() {
        let c = CASES
            .iter()
            .find(|c| c.scheme == Scheme::Lblk64)
            .expect("lblk64");
        let p = c.policy(&KeyIdentifier([1; 16]));
        assert_eq!(p.flags, 0x03 | 0x08);
        assert_eq!(p.version, 2);
        assert_eq!(p.master_key_identifier, [1; 16]);
        assert_eq!(c.file_name(&c.files()[0]), format!("{}/0", c.name));
        assert!(
            CASES
                .iter()
                .filter(|c| c.rejected)
                .all(|c| c.files().is_empty())
        );
    }
}
