//! AES-256-XTS over data units (IEEE 1619-2018), the engine's fast path.
//!
//! Each data unit is one XTS "data unit" in IEEE 1619 terms: its tweak `i`
//! is the DUN as a 128-bit little-endian number, `T0 = AES-ENC(K2, i)`, and
//! block `j` uses `Tj = T0 * alpha^j` in GF(2^128). Data units are whole
//! multiples of 16 bytes, so ciphertext stealing never applies.
//!
//! Three backends, chosen per key:
//!
//! - [`Backend::Vaes`] (`vaes`, the default where the CPU has VAES, AVX2
//!   and VPCLMULQDQ): the engine's own XTS with 256-bit VAES instructions,
//!   two blocks per instruction, 16 blocks in flight, and the initial
//!   tweaks of consecutive data units encrypted together. It is written
//!   for CPUs that have VAES but not AVX-512 (AMD Zen 3, the machines the
//!   benchmarks run on), where OpenSSL 3.5/3.6 use their 128-bit AES-NI
//!   XTS (`aesni_xts_encrypt`, six blocks in flight): OpenSSL's VAES XTS
//!   needs AVX-512. `icelab bench crypto` compares them.
//! - [`Backend::OpenSsl`] (`evp`, the default elsewhere): OpenSSL's EVP
//!   built into the binary, one data unit per `EVP_CipherUpdate` with the
//!   DUN as IV (its AVX-512 VAES code where the CPU has AVX-512, AES-NI
//!   otherwise). The input is prefetched [`PREFETCH_AHEAD`] bytes ahead
//!   (`prefetch`).
//! - [`Backend::AesCrate`] (`aes_crate`): the engine's own XTS loop around
//!   the `aes` crate, for keys OpenSSL refuses (it will not encrypt under a
//!   key whose halves are equal, IEEE 1619 allows it, and so does the VAES
//!   backend) and as a reference.
//!
//! Requests of at least [`PARALLEL_MIN_BYTES`] are split across the rayon
//! thread pool. [`XtsKey::crypt_from`] works out of place, so the device
//! encrypts guest memory without copying it first.
//!
//! `xts-mode` is the test oracle for every backend (the tests below,
//! `tests/xts_vectors.rs` with the IEEE 1619 vectors and
//! `tests/xts_props.rs`); it is not used here because it encrypts one block
//! per call.

mod aes_crate;
mod evp;
pub(crate) mod openssl_memory;
mod prefetch;
mod vaes;

use rayon::prelude::*;

use super::secure::scrub_stack;
pub use evp::openssl_version;
pub use prefetch::{PREFETCH_AHEAD, prefetch_range};

/// Size of an AES block.
const BLOCK: usize = 16;
/// Requests at least this large are split across threads. Below it, the
/// hand-off to the pool costs more than it saves: at 128 KiB on 2 cores the
/// split made the device's CRYPTO path 1.5x slower (0.7 vs 0.36 CPU s/GB
/// with `icelab bench device --block-size 128K`), since every queue already
/// has a thread of its own.
pub const PARALLEL_MIN_BYTES: usize = 1024 * 1024;
/// Smallest piece a split request is cut into.
const PARALLEL_PIECE_BYTES: usize = 64 * 1024;

/// Which way the data goes through the cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Plaintext to ciphertext (CRYPTO_OUT).
    Encrypt,
    /// Ciphertext to plaintext (CRYPTO_IN).
    Decrypt,
}

/// Which implementation does the AES-256-XTS of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The engine's own VAES/AVX2 code (x86-64 CPUs with VAES, AVX2 and
    /// VPCLMULQDQ).
    Vaes,
    /// OpenSSL's EVP (the vendored library, see [`openssl_version`]).
    OpenSsl,
    /// The engine's own loop around the `aes` crate.
    AesCrate,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 3] = [Backend::Vaes, Backend::OpenSsl, Backend::AesCrate];

    /// Whether this CPU can run the backend ([`Backend::Vaes`] needs
    /// VAES, AVX2 and VPCLMULQDQ; the others run anywhere).
    pub fn is_available(self) -> bool {
        match self {
            Backend::Vaes => vaes::supported(),
            Backend::OpenSsl | Backend::AesCrate => true,
        }
    }
}

/// An expanded AES-256-XTS key: K1 encrypts data, K2 encrypts tweaks.
///
/// Not `Clone`: every copy of a key schedule is one more to wipe. Dropping
/// it wipes every schedule it made (`zeroize` for the VAES and `aes` crate
/// schedules, OpenSSL's cleansing free). The engine keeps it in the key
/// arena (`SecureBox`); the VAES and `aes` crate schedules are inline, so
/// they are there too, and OpenSSL's go to the arena through its
/// allocator hooks (see `evp`).
pub struct XtsKey {
    inner: Inner,
}

// Not boxed: the VAES and `aes` crate schedules are inline so that they
// live in the key arena slot that holds the `XtsKey` (a box would be on the
// heap). `SecureBox::new` asserts at compile time that it fits a slot.
enum Inner {
    Vaes(vaes::VaesXts),
    Evp(evp::EvpXts),
    Aes(aes_crate::AesXts),
}

impl XtsKey {
    /// Expands a 64-byte XTS key (K1 || K2) for the fastest backend the
    /// CPU runs: [`Backend::Vaes`] if it can, else [`Backend::OpenSsl`]
    /// (with its fallback).
    pub fn new(key: &[u8; 64]) -> Self {
        #[cfg(test)]
        let backend = tests::NEW_BACKEND.get();
        #[cfg(not(test))]
        let backend = Backend::Vaes;
        Self::with_backend(key, backend)
    }

    /// Like [`XtsKey::new`] with a chosen backend. [`Backend::Vaes`] falls
    /// back to OpenSSL on a CPU without VAES; [`Backend::OpenSsl`] falls
    /// back to the `aes` crate for a key OpenSSL refuses (equal halves).
    pub fn with_backend(key: &[u8; 64], backend: Backend) -> Self {
        let inner = match backend {
            Backend::Vaes => match vaes::VaesXts::new(key) {
                Some(vaes) => Inner::Vaes(vaes),
                None => Self::openssl(key),
            },
            Backend::OpenSsl => Self::openssl(key),
            Backend::AesCrate => Inner::Aes(aes_crate::AesXts::new(key)),
        };
        Self { inner }
    }

    /// OpenSSL, or the `aes` crate for a key OpenSSL refuses.
    fn openssl(key: &[u8; 64]) -> Inner {
        match evp::EvpXts::new(key) {
            Ok(evp) => Inner::Evp(evp),
            Err(error) => {
                // The error names no key material.
                tracing::debug!("{error}; using the aes crate for this key");
                Inner::Aes(aes_crate::AesXts::new(key))
            }
        }
    }

    /// The backend this key uses.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Vaes(_) => Backend::Vaes,
            Inner::Evp(_) => Backend::OpenSsl,
            Inner::Aes(_) => Backend::AesCrate,
        }
    }

    /// Whether crypting leaves key material on the calling thread's stack,
    /// so that the caller must [`scrub_stack`] after it: the `aes` crate's
    /// backends copy the round keys there; OpenSSL's XTS assembly and the
    /// VAES backend keep them in registers, loaded from the schedule where
    /// they are used (checked by tests in keyslots.rs and `vaes`).
    pub fn leaves_key_on_stack(&self) -> bool {
        matches!(self.inner, Inner::Aes(_))
    }

    /// Encrypts or decrypts `data` in place as consecutive data units of
    /// `data_unit_size` bytes, the first with DUN `first_dun`, each next one
    /// with the DUN plus one (wrapping at 2^128; callers check the range).
    ///
    /// `data.len()` must be a multiple of `data_unit_size`, which must be a
    /// non-zero multiple of 16 of at most 16 MiB; the engine validates
    /// these before calling.
    pub fn crypt(
        &self,
        direction: Direction,
        data: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
    ) {
        debug_assert!(data_unit_size >= BLOCK && data_unit_size.is_multiple_of(BLOCK));
        debug_assert!(data.len().is_multiple_of(data_unit_size));
        if data.len() >= PARALLEL_MIN_BYTES && rayon::current_num_threads() > 1 {
            let units_per_piece = piece_units(data.len(), data_unit_size);
            data.par_chunks_mut(units_per_piece * data_unit_size)
                .enumerate()
                .for_each(|(index, piece)| {
                    let dun = first_dun.wrapping_add((index * units_per_piece) as u128);
                    self.crypt_pieces(direction, None, piece, data_unit_size, dun, PREFETCH_AHEAD);
                    self.scrub_after_piece();
                });
        } else {
            self.crypt_serial(direction, data, data_unit_size, first_dun);
        }
    }

    /// [`XtsKey::crypt`] on the calling thread only.
    pub fn crypt_serial(
        &self,
        direction: Direction,
        data: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
    ) {
        self.crypt_pieces(
            direction,
            None,
            data,
            data_unit_size,
            first_dun,
            PREFETCH_AHEAD,
        );
    }

    /// Like [`XtsKey::crypt`], but out of place: `dest` gets the result for
    /// `source`, each block of which is read once (the `aes` crate backend
    /// reads it byte by byte, in order, in its first XOR with the tweak;
    /// OpenSSL and the VAES backend load each block into a register once). The device encrypts
    /// guest memory this way: a guest that changes its buffer meanwhile
    /// changes only what it gets, never what the engine computed from a
    /// byte it saw twice.
    ///
    /// # Panics
    /// If `source` and `dest` differ in length.
    pub fn crypt_from(
        &self,
        direction: Direction,
        source: &[u8],
        dest: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
    ) {
        self.crypt_from_prefetching(
            direction,
            source,
            dest,
            data_unit_size,
            first_dun,
            PREFETCH_AHEAD,
        );
    }

    /// [`XtsKey::crypt_from`] with the source prefetched `prefetch_ahead`
    /// bytes ahead instead of [`PREFETCH_AHEAD`] (0: no prefetch), for
    /// measuring the prefetch (an A/B of the distance, benches/README.md).
    /// The `aes` crate backend does not prefetch.
    ///
    /// # Panics
    /// If `source` and `dest` differ in length.
    pub fn crypt_from_prefetching(
        &self,
        direction: Direction,
        source: &[u8],
        dest: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
        prefetch_ahead: usize,
    ) {
        assert_eq!(source.len(), dest.len(), "source and destination lengths");
        debug_assert!(data_unit_size >= BLOCK && data_unit_size.is_multiple_of(BLOCK));
        debug_assert!(dest.len().is_multiple_of(data_unit_size));
        if dest.len() >= PARALLEL_MIN_BYTES && rayon::current_num_threads() > 1 {
            let units_per_piece = piece_units(dest.len(), data_unit_size);
            let piece = units_per_piece * data_unit_size;
            dest.par_chunks_mut(piece)
                .zip(source.par_chunks(piece))
                .enumerate()
                .for_each(|(index, (dest, source))| {
                    let dun = first_dun.wrapping_add((index * units_per_piece) as u128);
                    let source = Some(source);
                    self.crypt_pieces(direction, source, dest, data_unit_size, dun, prefetch_ahead);
                    self.scrub_after_piece();
                });
        } else {
            self.crypt_pieces(
                direction,
                Some(source),
                dest,
                data_unit_size,
                first_dun,
                prefetch_ahead,
            );
        }
    }

    /// The serial path: in place when `source` is `None`, else from
    /// `source` (same length as `data`) into `data`.
    #[inline(always)]
    fn crypt_pieces(
        &self,
        direction: Direction,
        source: Option<&[u8]>,
        data: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
        prefetch_ahead: usize,
    ) {
        debug_assert!(source.is_none_or(|source| source.len() == data.len()));
        match &self.inner {
            Inner::Vaes(vaes) => vaes.crypt_pieces(
                direction,
                source,
                data,
                data_unit_size,
                first_dun,
                prefetch_ahead,
            ),
            Inner::Evp(evp) => evp.crypt_pieces(
                direction,
                source,
                data,
                data_unit_size,
                first_dun,
                prefetch_ahead,
            ),
            Inner::Aes(aes) => aes.crypt_pieces(direction, source, data, data_unit_size, first_dun),
        }
    }

    /// A pool thread scrubs the stack a split request's piece used, when
    /// the backend leaves key material there; the serial path is scrubbed
    /// by its caller, `ProgrammedKey`.
    fn scrub_after_piece(&self) {
        if self.leaves_key_on_stack() {
            scrub_stack();
        }
    }
}

/// Data units per parallel piece: the request split evenly over the pool,
/// but never into pieces smaller than [`PARALLEL_PIECE_BYTES`].
fn piece_units(len: usize, data_unit_size: usize) -> usize {
    let units = len / data_unit_size;
    let threads = rayon::current_num_threads().max(1);
    let min_units = PARALLEL_PIECE_BYTES.div_ceil(data_unit_size).max(1);
    units.div_ceil(threads).max(min_units)
}

/// Multiplication by alpha (x) in GF(2^128) with the XTS polynomial
/// x^128 + x^7 + x^2 + x + 1, little-endian bit order (IEEE 1619 §5.2).
#[inline(always)]
pub fn mul_alpha(tweak: u128) -> u128 {
    let carry = (tweak >> 127) as u8;
    (tweak << 1) ^ u128::from(0x87 * carry)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aes::Aes256;
    use std::cell::Cell;

    thread_local! {
        /// What [`XtsKey::new`] asks for on this thread (tests of the
        /// engine's key paths set it to run them with each backend).
        pub(crate) static NEW_BACKEND: Cell<Backend> = const { Cell::new(Backend::Vaes) };
    }
    use aes::cipher::KeyInit;
    use aes::cipher::array::Array;
    use xts_mode::Xts128;

    /// Every test runs against every backend the CPU has.
    fn keys(key: &[u8; 64]) -> impl Iterator<Item = XtsKey> + '_ {
        let available = Backend::ALL
            .into_iter()
            .filter(|backend| backend.is_available());
        available.map(|backend| {
            let xts = XtsKey::with_backend(key, backend);
            assert_eq!(xts.backend(), backend);
            xts
        })
    }

    fn oracle(key: &[u8; 64], data: &mut [u8], dus: usize, dun: u128, direction: Direction) {
        let k1 = Aes256::new(&Array::try_from(&key[..32]).unwrap());
        let k2 = Aes256::new(&Array::try_from(&key[32..]).unwrap());
        let xts = Xts128::new(k1, k2);
        match direction {
            Direction::Encrypt => xts.encrypt_area(data, dus, dun, |i| i.to_le_bytes().into()),
            Direction::Decrypt => xts.decrypt_area(data, dus, dun, |i| i.to_le_bytes().into()),
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn mul_alpha_reduces_with_0x87() {
        assert_eq!(mul_alpha(1), 2);
        assert_eq!(mul_alpha(1 << 127), 0x87);
        assert_eq!(mul_alpha((1 << 127) | 1), 0x87 ^ 2);
    }

    #[test]
    fn equals_oracle_for_every_data_unit_size() {
        let key: [u8; 64] = core::array::from_fn(|i| i as u8 * 3 + 1);
        for xts in keys(&key) {
            for shift in 9..=12 {
                let dus = 1usize << shift;
                for dun in [0u128, 1, u64::MAX as u128 - 1, u128::MAX - 3] {
                    let plain = pattern(dus * 3, shift as u8);
                    let mut fast = plain.clone();
                    xts.crypt(Direction::Encrypt, &mut fast, dus, dun);
                    let mut slow = plain.clone();
                    oracle(&key, &mut slow, dus, dun, Direction::Encrypt);
                    assert_eq!(fast, slow, "dus {dus} dun {dun:#x}");
                    xts.crypt(Direction::Decrypt, &mut fast, dus, dun);
                    assert_eq!(fast, plain);
                }
            }
        }
    }

    /// Unit sizes that are not whole groups of lanes or backend batches:
    /// partial lane groups, block-by-block tails, padded tails.
    #[test]
    fn equals_oracle_for_odd_data_unit_sizes() {
        let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ 0x5a);
        for xts in keys(&key) {
            for blocks in [
                1usize, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15, 16, 17, 31, 33, 63, 65, 100,
            ] {
                let dus = blocks * BLOCK;
                for units in [1usize, 2, 5, 70] {
                    let dun = u64::MAX as u128 - 2;
                    let plain = pattern(dus * units, blocks as u8);
                    let mut fast = plain.clone();
                    xts.crypt_serial(Direction::Encrypt, &mut fast, dus, dun);
                    let mut slow = plain.clone();
                    oracle(&key, &mut slow, dus, dun, Direction::Encrypt);
                    assert_eq!(fast, slow, "dus {dus} units {units}");
                    xts.crypt_serial(Direction::Decrypt, &mut fast, dus, dun);
                    assert_eq!(fast, plain, "dus {dus} units {units}");
                }
            }
        }
    }

    /// A request whose DUNs wrap at 2^128 (inside a batch of initial
    /// tweaks) equals its units done one by one, each checked against the
    /// oracle with its own DUN.
    #[test]
    fn dun_wraps_at_2_pow_128() {
        let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(11) ^ 0x3c);
        for xts in keys(&key) {
            for (dus, units, first) in [(512usize, 3usize, u128::MAX - 1), (64, 20, u128::MAX - 5)]
            {
                let plain = pattern(dus * units, 4);
                let mut whole = plain.clone();
                xts.crypt(Direction::Encrypt, &mut whole, dus, first);
                for (index, unit) in plain.chunks_exact(dus).enumerate() {
                    let dun = first.wrapping_add(index as u128);
                    let mut slow = unit.to_vec();
                    oracle(&key, &mut slow, dus, dun, Direction::Encrypt);
                    let got = &whole[index * dus..(index + 1) * dus];
                    assert_eq!(got, slow.as_slice(), "{:?} dun {dun:#x}", xts.backend());
                }
                xts.crypt(Direction::Decrypt, &mut whole, dus, first);
                assert_eq!(whole, plain);
            }
        }
    }

    /// Out of place equals in place for every shape the in-place tests
    /// cover, serial and split, and leaves the source as it was.
    #[test]
    fn out_of_place_equals_in_place() {
        let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(13) ^ 0xa5);
        for xts in keys(&key) {
            for (dus, units) in [
                (16usize, 1usize),
                (48, 3),
                (512, 1),
                (512, 70),
                (4096, 1),
                (4096, 32),
                (1040, 5),
                (4096, PARALLEL_MIN_BYTES / 4096 + 3),
            ] {
                for direction in [Direction::Encrypt, Direction::Decrypt] {
                    let dun = u64::MAX as u128 - 1;
                    let source = pattern(dus * units, units as u8);
                    let mut in_place = source.clone();
                    xts.crypt(direction, &mut in_place, dus, dun);
                    let mut dest = vec![0xeeu8; source.len()];
                    xts.crypt_from(direction, &source, &mut dest, dus, dun);
                    assert_eq!(dest, in_place, "dus {dus} units {units} {direction:?}");
                    assert_eq!(source, pattern(dus * units, units as u8));
                }
            }
        }
    }

    #[test]
    fn parallel_split_equals_serial() {
        let key: [u8; 64] = core::array::from_fn(|i| 255 - i as u8);
        for xts in keys(&key) {
            let plain = pattern(PARALLEL_MIN_BYTES * 4 + 4096, 9);
            let mut parallel = plain.clone();
            xts.crypt(
                Direction::Encrypt,
                &mut parallel,
                4096,
                u64::MAX as u128 - 40,
            );
            let mut serial = plain.clone();
            xts.crypt_serial(Direction::Encrypt, &mut serial, 4096, u64::MAX as u128 - 40);
            assert_eq!(parallel, serial);
            let mut slow = plain.clone();
            oracle(
                &key,
                &mut slow,
                4096,
                u64::MAX as u128 - 40,
                Direction::Encrypt,
            );
            assert_eq!(parallel, slow);
        }
    }

    /// OpenSSL refuses to encrypt under a key whose halves are equal; such
    /// a key still works, through the `aes` crate when OpenSSL is asked
    /// for, and through the VAES backend, which takes any key.
    #[test]
    fn equal_halves_fall_back_to_the_aes_crate() {
        let mut key = [0x42u8; 64];
        key[0] = 1;
        key[32] = 1;
        let xts = XtsKey::with_backend(&key, Backend::OpenSsl);
        assert_eq!(xts.backend(), Backend::AesCrate);
        assert!(xts.leaves_key_on_stack());
        let plain = pattern(4096, 1);
        let mut slow = plain.clone();
        oracle(&key, &mut slow, 512, 3, Direction::Encrypt);
        for xts in [xts, XtsKey::new(&key)] {
            let mut fast = plain.clone();
            xts.crypt(Direction::Encrypt, &mut fast, 512, 3);
            assert_eq!(fast, slow, "{:?}", xts.backend());
        }
        let fallback = XtsKey::with_backend(&[7u8; 64], Backend::OpenSsl);
        assert_eq!(fallback.backend(), Backend::AesCrate);
        let distinct: [u8; 64] = core::array::from_fn(|i| i as u8);
        let openssl = XtsKey::with_backend(&distinct, Backend::OpenSsl);
        assert_eq!(openssl.backend(), Backend::OpenSsl);
    }

    /// `XtsKey::new` takes the VAES backend wherever the CPU has it, for
    /// any key, and OpenSSL elsewhere.
    #[test]
    fn new_prefers_vaes_where_the_cpu_has_it() {
        let distinct: [u8; 64] = core::array::from_fn(|i| i as u8);
        let expected = match Backend::Vaes.is_available() {
            true => Backend::Vaes,
            false => Backend::OpenSsl,
        };
        assert_eq!(XtsKey::new(&distinct).backend(), expected);
        if Backend::Vaes.is_available() {
            let xts = XtsKey::new(&[7u8; 64]);
            assert_eq!(xts.backend(), Backend::Vaes);
            assert!(!xts.leaves_key_on_stack());
        }
    }

    #[test]
    fn openssl_is_the_vendored_3_5_or_later() {
        let version = openssl_version();
        let number = version
            .strip_prefix("OpenSSL ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default();
        let mut parts = number
            .split('.')
            .map(|part| part.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        assert!((major, minor) >= (3, 5), "{version}");
    }
}
