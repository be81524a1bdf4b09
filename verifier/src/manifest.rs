//! The manifest: what the guest knows and the host cannot read from the
//! image (master key, which inodes, how the plaintext was generated).
//! Everything else (nonce, policy, block map, size, fs UUID) the verifier
//! reads itself; where the manifest also states it, it is cross-checked.
//! The schema is documented in verifier/README.md.

use serde::{Deserialize, Serialize};

/// The whole manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The fs UUID the guest saw (e.g. `8f3c...-...`); checked if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_uuid: Option<String>,
    pub files: Vec<FileEntry>,
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
    /// The raw fscrypt master key, hex.
    pub master_key_hex: String,
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

    #[test]
    fn schema_round_trip() {
        let json = r#"{"fs_uuid":"5e9e0e69-8096-44d2-b149-79c608aea629","files":[
            {"name":"lblk64/4097","inode":12,"size":4097,
             "policy":{"contents_mode":"AES-256-XTS","flags":["IV_INO_LBLK_64"],"log2_data_unit_size":9},
             "master_key_hex":"00ff","plaintext":{"generator":"splitmix64","seed":7,"ranges":[[0,4097]]}}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.files[0].inode, 12);
        let again: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(m, again);
        assert!(serde_json::from_str::<Manifest>(r#"{"files":[],"bogus":1}"#).is_err());
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
