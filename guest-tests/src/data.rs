//! Test data: seeded pseudo-random file contents that the host can
//! regenerate from the reported seed (to look for plaintext on the disk
//! image), and small encoding helpers.
//!
//! The content generator is specified here so that another
//! implementation can reproduce it byte for byte:
//!
//! - the file's stream seed is `seed XOR fnv1a64(file name)` where
//!   `fnv1a64` is 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime
//!   0x100000001b3) over the name's UTF-8 bytes;
//! - the stream is SplitMix64 (Steele, Lea, Flood, "Fast splittable
//!   pseudorandom number generators", OOPSLA 2014) started at the stream
//!   seed: each step adds 0x9e3779b97f4a7c15 to the state and outputs
//!   `z = state; z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9; z = (z ^ (z >> 27))
//!   * 0x94d049bb133111eb; z ^ (z >> 31)` (wrapping arithmetic);
//! - the file's bytes are the outputs, each as 8 little-endian bytes,
//!   truncated to the file size.
//!
//! Not cryptographic, and it does not need to be: it only has to make
//! every data unit distinct and recognisable.
//!
//! The lab suite uses a second, offset-based generator ([`fill_at`]) and
//! derives its master keys from it ([`master_key_bytes`]); see below.

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next outputs, little-endian, the last one
    /// truncated.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The stream seed of the file `name` under the run's `seed`.
pub fn file_seed(seed: u64, name: &str) -> u64 {
    seed ^ fnv1a64(name.as_bytes())
}

/// The contents of the file `name` of `size` bytes under the run's `seed`.
pub fn file_contents(seed: u64, name: &str, size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    SplitMix64::new(file_seed(seed, name)).fill(&mut buf);
    buf
}

// --- the lab suite's offset-based generator ---------------------------------------
//
// The lab suite (and the host's verifier, verifier/README.md) use a
// different function from the stream above: the byte at file offset `o` is
// byte `o % 8` of the little-endian `splitmix64(seed + o / 8)` (wrapping
// add), where `splitmix64` is SplitMix64's output function applied to its
// argument. Any range of a file can then be (re)written at any offset, in
// any order, and still hold "the generator's bytes".

/// SplitMix64's output function applied to `x`: one step from state `x`.
pub fn splitmix64(x: u64) -> u64 {
    SplitMix64::new(x).next_u64()
}

/// Fills `buf` with the offset-based generator's bytes for file offsets
/// `offset..offset + buf.len()` under `seed`.
pub fn fill_at(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut o = offset;
    let mut rest = &mut buf[..];
    while !rest.is_empty() {
        let word = splitmix64(seed.wrapping_add(o / 8)).to_le_bytes();
        let from = (o % 8) as usize;
        let n = (8 - from).min(rest.len());
        rest[..n].copy_from_slice(&word[from..from + n]);
        rest = &mut rest[n..];
        o += n as u64;
    }
}

/// The generator's bytes for `offset..offset + len` under `seed`.
pub fn bytes_at(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fill_at(seed, offset, &mut buf);
    buf
}

/// The seed of the master key named `name` (e.g. `policy/lblk64-dus512`)
/// under the run's `seed`: `seed XOR fnv1a64(name)`.
pub fn key_seed(seed: u64, name: &str) -> u64 {
    seed ^ fnv1a64(name.as_bytes())
}

/// The seed of the contents of the file `name` (relative to the mount
/// point) under the run's `seed`: `seed XOR fnv1a64(name)`.
pub fn content_seed(seed: u64, name: &str) -> u64 {
    seed ^ fnv1a64(name.as_bytes())
}

/// Bytes of a generated master key (fscrypt's `FSCRYPT_MAX_KEY_SIZE`).
pub const MASTER_KEY_SIZE: usize = 64;

/// The master key generated from `key_seed`: the generator's bytes at
/// offsets 0..64. The host's verifier derives the same key from the
/// reported seed, so the key itself is never printed. Wiped when dropped.
pub fn master_key_bytes(key_seed: u64) -> zeroize::Zeroizing<[u8; MASTER_KEY_SIZE]> {
    let mut key = zeroize::Zeroizing::new([0u8; MASTER_KEY_SIZE]);
    fill_at(key_seed, 0, key.as_mut());
    key
}

/// Bytes of a generated raw key for a hardware-wrapped key (the hardware
/// KDF's key size).
pub const HW_KEY_SIZE: usize = icelab_contract::manifest::HW_KEY_SIZE;

/// The raw key generated from `key_seed` that the lab imports as a
/// hardware-wrapped key: the generator's bytes at offsets 0..32 (the
/// manifest's `hw_wrapped_key_seed` names the seed). Wiped when dropped.
pub fn hw_key_bytes(key_seed: u64) -> zeroize::Zeroizing<[u8; HW_KEY_SIZE]> {
    let mut key = zeroize::Zeroizing::new([0u8; HW_KEY_SIZE]);
    fill_at(key_seed, 0, key.as_mut());
    key
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Formats a 64-bit seed as 16 hex digits (how `icelab.seed` takes it).
pub fn seed_hex(seed: u64) -> String {
    format!("{seed:016x}")
}

/// The index of the first byte where `a` and `b` differ (or where the
/// shorter ends), `None` if they are equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_keys_are_what_the_manifest_says() {
        for seed in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(
                *hw_key_bytes(seed),
                icelab_contract::manifest::hw_key_from_seed(seed)
            );
            assert_eq!(
                hw_key_bytes(seed)[..],
                master_key_bytes(seed)[..HW_KEY_SIZE]
            );
        }
    }

    #[test]
    fn splitmix64_matches_the_reference_outputs() {
        // First outputs of the reference implementation seeded with 0
        // (the widely published SplitMix64 test vector).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(g.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn fnv1a64_matches_the_reference_outputs() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn contents_are_deterministic_truncated_and_distinct() {
        let a = file_contents(7, "file-4096", 4096);
        assert_eq!(a, file_contents(7, "file-4096", 4096));
        assert_ne!(a, file_contents(8, "file-4096", 4096));
        assert_ne!(a, file_contents(7, "file-1", 4096));
        let short = file_contents(7, "file-4096", 13);
        assert_eq!(short[..], a[..13]);
        let word = SplitMix64::new(file_seed(7, "file-4096")).next_u64();
        assert_eq!(a[..8], word.to_le_bytes());
    }

    #[test]
    fn offset_generator_is_position_independent() {
        let whole = bytes_at(0x1234, 0, 100);
        let word = splitmix64(0x1234 + 2).to_le_bytes();
        assert_eq!(whole[16..24], word);
        for (start, len) in [(0, 0), (3, 1), (5, 13), (8, 8), (17, 83)] {
            assert_eq!(
                bytes_at(0x1234, start as u64, len),
                whole[start..start + len]
            );
        }
        // Offsets wrap the seed: the byte at 8 of seed u64::MAX is the
        // first of seed 0.
        assert_eq!(bytes_at(u64::MAX, 8, 8), bytes_at(0, 0, 8));
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn master_key_matches_the_verifiers_definition() {
        // The same known answer as the verifier's manifest test
        // (computed independently in Python).
        let key = master_key_bytes(0x0123_4567_89ab_cdef);
        assert_eq!(
            hex(key.as_ref()),
            "9daa8fa407387a151aca74c37c290498a2caec3b52958daff8ce2d916a5f4ecb\
             0fa61f53ca6dfc4ec234577f31e6e90e7ed7bc1a010370421a6886a8e2d40f79"
        );
        assert_eq!(key_seed(5, "a"), 5 ^ 0xaf63_dc4c_8601_ec8c);
        assert_eq!(content_seed(5, "a"), key_seed(5, "a"));
    }

    #[test]
    fn hex_and_differences() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(seed_hex(0xff), "00000000000000ff");
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"ab"), Some(2));
    }
}
