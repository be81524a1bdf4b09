//! The manifest: what the guest knows and the host cannot read from the
//! image (master key, which inodes, how the plaintext was generated),
//! written by the guest runner, merged by the host, read by the verifier.
//! Everything else (nonce, policy, block map, size, fs UUID) the verifier
//! reads itself; where the manifest also states it, it is cross-checked.
//! The schema is documented in verifier/README.md.

use serde::{Deserialize, Serialize};

/// The whole manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The fs UUID the guest saw (e.g. `8f3c...-...`); checked if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_uuid: Option<String>,
    pub files: Vec<FileEntry>,
    /// Unencrypted regular files the guest wrote from the generator: a
    /// positive control of the verifier's block mapping (plaintext on the
    /// image), or, with a device default key, of the decrypted view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plain_files: Vec<PlainFile>,
}

/// One encrypted regular file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// A label for reports (e.g. the guest test and path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub inode: u64,
    /// `i_size` as the guest saw it; checked if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The policy the guest set; checked against the on-disk context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// The raw fscrypt master key, hex. Exactly one of this,
    /// `master_key_seed` and `hw_wrapped_key_seed` must be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_hex: Option<String>,
    /// The seed the master key is generated from (16 hex digits, a u64):
    /// the key is the [`splitmix64`] generator's bytes at offsets 0..64
    /// under this seed (see [`master_key_from_seed`]). Lets the guest
    /// report a key without ever printing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_seed: Option<String>,
    /// The master key is a hardware-wrapped key (fscrypt's
    /// `FSCRYPT_ADD_KEY_FLAG_HW_WRAPPED`) that the guest imported
    /// (`BLKCRYPTOIMPORTKEY`) from the 32-byte raw key generated from this
    /// seed (16 hex digits, a u64; see [`hw_key_from_seed`]). The inline
    /// encryption key and the software secret (fscrypt's HKDF key) are the
    /// hardware KDF of that raw key (docs/PROTOCOL.md, "The hardware
    /// KDF"); the wrapped forms the kernel held do not matter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hw_wrapped_key_seed: Option<String>,
    pub plaintext: Plaintext,
}

/// One unencrypted regular file (no fscrypt policy).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlainFile {
    /// A label for reports (e.g. the guest test and path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub inode: u64,
    /// `i_size` as the guest saw it; checked if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub plaintext: Plaintext,
}

/// A v2 policy as the guest stated it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Only "AES-256-XTS".
    pub contents_mode: String,
    /// Any of "IV_INO_LBLK_64", "IV_INO_LBLK_32" (padding flags ignored).
    #[serde(default)]
    pub flags: Vec<String>,
    /// 0 = block size.
    #[serde(default)]
    pub log2_data_unit_size: u8,
}

/// How the file's final contents were produced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "generator", rename_all = "snake_case", deny_unknown_fields)]
pub enum Plaintext {
    /// Byte at file offset `o` is byte `o % 8` of the little-endian
    /// `splitmix64(seed + o / 8)` (see [`splitmix64`]) when `o` lies in one
    /// of `ranges` (half-open `[start, end)`; default: the whole file), and
    /// 0 otherwise (holes, never-written gaps).
    Splitmix64 {
        seed: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ranges: Option<Vec<[u64; 2]>>,
    },
}

/// SplitMix64's output function (Steele, Lea, Flood, "Fast splittable
/// pseudorandom number generators", OOPSLA 2014) applied to `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The size of the master keys the lab's guest generates (fscrypt's
/// `FSCRYPT_MAX_KEY_SIZE`; AES-256-XTS needs at least this much).
pub const SEEDED_KEY_SIZE: usize = 64;

/// The master key generated from `seed`: the bytes at offsets 0..64 of the
/// `splitmix64` plaintext generator seeded with `seed`, i.e. the
/// little-endian `splitmix64(seed + i)` for `i` in 0..8 (wrapping).
pub fn master_key_from_seed(seed: u64) -> [u8; SEEDED_KEY_SIZE] {
    let mut key = [0u8; SEEDED_KEY_SIZE];
    Plaintext::Splitmix64 { seed, ranges: None }.fill(0, SEEDED_KEY_SIZE as u64, &mut key);
    key
}

/// The size of the raw keys the lab's guest imports as hardware-wrapped
/// keys (the hardware KDF's key size, docs/PROTOCOL.md).
pub const HW_KEY_SIZE: usize = 32;

/// The raw key generated from `seed` for a hardware-wrapped key: the
/// `splitmix64` generator's bytes at offsets 0..32 under `seed` (the first
/// half of [`master_key_from_seed`]).
pub fn hw_key_from_seed(seed: u64) -> [u8; HW_KEY_SIZE] {
    let mut key = [0u8; HW_KEY_SIZE];
    Plaintext::Splitmix64 { seed, ranges: None }.fill(0, HW_KEY_SIZE as u64, &mut key);
    key
}

/// Parses a seed field: 1 to 16 hex digits, `0x` optional.
pub fn parse_seed(field: &str, seed: &str) -> std::result::Result<u64, String> {
    let digits = seed.strip_prefix("0x").unwrap_or(seed);
    let bad = || format!("{field} {seed:?} is not 1 to 16 hex digits");
    if digits.is_empty() || digits.len() > 16 {
        return Err(bad());
    }
    u64::from_str_radix(digits, 16).map_err(|_| bad())
}

/// Bytes from hex digits (either case, an even number of them, no
/// separators).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl FileEntry {
    /// The raw master key this entry states, from `master_key_hex` or
    /// `master_key_seed` (exactly one of them and `hw_wrapped_key_seed`
    /// must be present). A hardware-wrapped key has no raw master key:
    /// an error says so (see [`FileEntry::hw_wrapped_key`]).
    pub fn master_key(&self) -> std::result::Result<Vec<u8>, String> {
        match (
            &self.master_key_hex,
            &self.master_key_seed,
            &self.hw_wrapped_key_seed,
        ) {
            (Some(hex), None, None) => {
                from_hex(hex).ok_or_else(|| "master_key_hex is not hex".to_owned())
            }
            (None, Some(seed), None) => {
                parse_seed("master_key_seed", seed).map(|s| master_key_from_seed(s).to_vec())
            }
            (None, None, Some(_)) => Err(
                "the master key is hardware-wrapped (hw_wrapped_key_seed): its inline \
                 encryption key and software secret come from the hardware KDF, not a raw \
                 master key"
                    .to_owned(),
            ),
            (None, None, None) => Err(
                "none of master_key_hex, master_key_seed and hw_wrapped_key_seed is given"
                    .to_owned(),
            ),
            _ => Err(
                "more than one of master_key_hex, master_key_seed and hw_wrapped_key_seed is \
                 given; give one"
                    .to_owned(),
            ),
        }
    }

    /// The raw key of a hardware-wrapped master key (from
    /// `hw_wrapped_key_seed`, see [`hw_key_from_seed`]): `None` for a raw
    /// master key.
    pub fn hw_wrapped_key(&self) -> Option<std::result::Result<[u8; HW_KEY_SIZE], String>> {
        let seed = self.hw_wrapped_key_seed.as_deref()?;
        Some(parse_seed("hw_wrapped_key_seed", seed).map(hw_key_from_seed))
    }
}

impl Plaintext {
    /// Fill `buf` with the plaintext at file offsets `offset..`, zero at
    /// and beyond `size` (fscrypt pads the last data unit with zeros).
    pub fn fill(&self, offset: u64, size: u64, buf: &mut [u8]) {
        let Plaintext::Splitmix64 { seed, ranges } = self;
        let mut word = (u64::MAX, [0u8; 8]);
        for (i, b) in buf.iter_mut().enumerate() {
            let o = offset + i as u64;
            let inside = o < size
                && ranges
                    .as_ref()
                    .is_none_or(|r| r.iter().any(|[s, e]| (*s..*e).contains(&o)));
            *b = if inside {
                if word.0 != o / 8 {
                    word = (o / 8, splitmix64(seed.wrapping_add(o / 8)).to_le_bytes());
                }
                word.1[(o % 8) as usize]
            } else {
                0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn schema_round_trip() {
        let json = r#"{"fs_uuid":"5e9e0e69-8096-44d2-b149-79c608aea629","files":[
            {"name":"lblk64/4097","inode":12,"size":4097,
             "policy":{"contents_mode":"AES-256-XTS","flags":["IV_INO_LBLK_64"],"log2_data_unit_size":9},
             "master_key_seed":"0123456789abcdef","plaintext":{"generator":"splitmix64","seed":7,"ranges":[[0,4097]]}}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.files[0].inode, 12);
        let again: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(m, again);
        assert!(serde_json::from_str::<Manifest>(r#"{"files":[],"bogus":1}"#).is_err());
        // No plain files: the field is not written.
        assert!(m.plain_files.is_empty());
        assert!(!serde_json::to_string(&m).unwrap().contains("plain_files"));
    }

    #[test]
    fn schema_round_trip_with_plain_files() {
        let json = r#"{"files":[],"plain_files":[
            {"name":"plain/12388","inode":13,"size":12388,
             "plaintext":{"generator":"splitmix64","seed":9}},
            {"inode":14,"plaintext":{"generator":"splitmix64","seed":1,"ranges":[[0,512]]}}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.plain_files.len(), 2);
        assert_eq!(m.plain_files[0].name.as_deref(), Some("plain/12388"));
        assert_eq!((m.plain_files[1].inode, m.plain_files[1].size), (14, None));
        let again: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(m, again);
        let bogus = r#"{"files":[],"plain_files":[{"inode":1,"plaintext":{"generator":"splitmix64","seed":1},"policy":null}]}"#;
        assert!(serde_json::from_str::<Manifest>(bogus).is_err());
    }

    fn entry(hex: Option<&str>, seed: Option<&str>) -> FileEntry {
        FileEntry {
            name: None,
            inode: 12,
            size: None,
            policy: None,
            master_key_hex: hex.map(str::to_owned),
            master_key_seed: seed.map(str::to_owned),
            hw_wrapped_key_seed: None,
            plaintext: Plaintext::Splitmix64 {
                seed: 0,
                ranges: None,
            },
        }
    }

    #[test]
    fn master_key_from_a_seed_matches_known_keys() {
        // Computed with an independent Python implementation of the
        // definition in verifier/README.md.
        let known = "9daa8fa407387a151aca74c37c290498a2caec3b52958daff8ce2d916a5f4ecb\
                     0fa61f53ca6dfc4ec234577f31e6e90e7ed7bc1a010370421a6886a8e2d40f79";
        let key = entry(None, Some("0123456789abcdef")).master_key().unwrap();
        assert_eq!(to_hex(&key), known);
        // seed + i wraps: the second word of seed u64::MAX is splitmix64(0).
        let key = master_key_from_seed(u64::MAX);
        assert_eq!(to_hex(&key[..16]), "202c651b7771d9e4afcd1d7b39a820e2");
        let hex = entry(Some(known), None).master_key().unwrap();
        assert_eq!(to_hex(&hex), known);
    }

    #[test]
    fn master_key_needs_exactly_one_valid_field() {
        assert!(
            entry(None, None)
                .master_key()
                .unwrap_err()
                .contains("none of")
        );
        assert!(
            entry(Some("00"), Some("1"))
                .master_key()
                .unwrap_err()
                .contains("more than one")
        );
        assert!(
            entry(Some("0g"), None)
                .master_key()
                .unwrap_err()
                .contains("not hex")
        );
        for bad in ["", "xyz", "12345678123456781"] {
            assert!(entry(None, Some(bad)).master_key().is_err(), "{bad:?}");
        }
        assert_eq!(
            entry(None, Some("0x1")).master_key().unwrap(),
            master_key_from_seed(1).to_vec()
        );
    }

    #[test]
    fn hardware_wrapped_keys_come_from_their_seed() {
        let mut e = entry(None, None);
        e.hw_wrapped_key_seed = Some("0123456789abcdef".to_owned());
        assert_eq!(
            e.hw_wrapped_key(),
            Some(Ok(master_key_from_seed(0x0123_4567_89ab_cdef)[..32]
                .try_into()
                .unwrap()))
        );
        assert!(e.master_key().unwrap_err().contains("hardware-wrapped"));
        e.master_key_seed = Some("1".to_owned());
        assert!(e.master_key().unwrap_err().contains("more than one"));
        assert_eq!(entry(None, Some("1")).hw_wrapped_key(), None);
        e.hw_wrapped_key_seed = Some("xyz".to_owned());
        assert!(e.hw_wrapped_key().unwrap().is_err());
        // The JSON field, as the guest writes it.
        let json = r#"{"files":[{"inode":12,"hw_wrapped_key_seed":"00000000000000ff",
            "plaintext":{"generator":"splitmix64","seed":7}}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(
            m.files[0].hw_wrapped_key(),
            Some(Ok(hw_key_from_seed(0xff)))
        );
    }

    #[test]
    fn generator() {
        // SplitMix64 reference: seed 0 state advanced once gives
        // 0xe220a8397b1dcdaf (the first output of splitmix64 seeded with 0).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let p = Plaintext::Splitmix64 {
            seed: 0,
            ranges: Some(vec![[2, 9]]),
        };
        let mut b = [0xaa; 12];
        p.fill(0, 10, &mut b);
        let w0 = splitmix64(0).to_le_bytes();
        let w1 = splitmix64(1).to_le_bytes();
        assert_eq!(
            b,
            [
                0, 0, w0[2], w0[3], w0[4], w0[5], w0[6], w0[7], w1[0], 0, 0, 0
            ]
        );
    }
}
