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
    fn hex_and_differences() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(seed_hex(0xff), "00000000000000ff");
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"ab"), Some(2));
    }
}
