//! AES-256-XTS over data units (IEEE 1619-2018), the engine's fast path.
//!
//! Each data unit is one XTS "data unit" in IEEE 1619 terms: its tweak `i`
//! is the DUN as a 128-bit little-endian number, `T0 = AES-ENC(K2, i)`, and
//! block `j` uses `Tj = T0 * alpha^j` in GF(2^128). Data units are whole
//! multiples of 16 bytes, so ciphertext stealing never applies.
//!
//! Speed comes from the `aes` crate's backends: the per-block work runs
//! inside a [`BlockCipherEncClosure`] so that it is compiled together with
//! (and inlined into) whichever backend the CPU supports at run time:
//! VAES-512, VAES-256 or AES-NI. Blocks are processed in the backend's own
//! batch width (`ParBlocksSize`), tweaks for a whole request are produced
//! by one batched encryption under K2, and requests larger than
//! [`PARALLEL_MIN_BYTES`] are split across the rayon thread pool.
//!
//! `xts-mode` is the test oracle for this module (see the tests below and
//! `tests/xts_oracle.rs`); it is not used here because it encrypts one block
//! per call.

use aes::Aes256;
use aes::cipher::array::Array;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Block, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt,
    BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit,
    ParBlocks, consts::U16,
};
use rayon::prelude::*;

/// Size of an AES block.
const BLOCK: usize = 16;
/// Data units whose tweaks are encrypted in one batch.
const TWEAK_BATCH: usize = 64;
/// Requests at least this large are split across threads.
pub const PARALLEL_MIN_BYTES: usize = 128 * 1024;
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

/// An expanded AES-256-XTS key: K1 encrypts data, K2 encrypts tweaks.
///
/// The `aes` crate's `zeroize` feature wipes both key schedules on drop.
#[derive(Clone)]
pub struct XtsKey {
    data_key: Aes256,
    tweak_key: Aes256,
}

impl XtsKey {
    /// Expands a 64-byte XTS key (K1 || K2).
    pub fn new(key: &[u8; 64]) -> Self {
        let (k1, k2) = key.split_at(32);
        Self {
            data_key: Aes256::new(&Array::try_from(k1).expect("32-byte half")),
            tweak_key: Aes256::new(&Array::try_from(k2).expect("32-byte half")),
        }
    }

    /// Encrypts or decrypts `data` in place as consecutive data units of
    /// `data_unit_size` bytes, the first with DUN `first_dun`, each next one
    /// with the DUN plus one (wrapping at 2^128; callers check the range).
    ///
    /// `data.len()` must be a multiple of `data_unit_size`, which must be a
    /// non-zero multiple of 16; the engine validates both before calling.
    pub fn crypt(
        &self,
        direction: Direction,
        data: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
    ) {
        debug_assert!(data_unit_size >= BLOCK && data_unit_size % BLOCK == 0);
        debug_assert!(data.len() % data_unit_size == 0);
        if data.len() >= PARALLEL_MIN_BYTES && rayon::current_num_threads() > 1 {
            let units_per_piece = piece_units(data.len(), data_unit_size);
            data.par_chunks_mut(units_per_piece * data_unit_size)
                .enumerate()
                .for_each(|(index, piece)| {
                    let dun = first_dun.wrapping_add((index * units_per_piece) as u128);
                    self.crypt_serial(direction, piece, data_unit_size, dun);
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
        let mut tweaks = [Block::<Aes256>::default(); TWEAK_BATCH];
        let mut dun = first_dun;
        for batch in data.chunks_mut(data_unit_size * TWEAK_BATCH) {
            let units = batch.len() / data_unit_size;
            for tweak in tweaks.iter_mut().take(units) {
                *tweak = Array::from(dun.to_le_bytes());
                dun = dun.wrapping_add(1);
            }
            self.tweak_key.encrypt_blocks(&mut tweaks[..units]);
            let job = DataUnits {
                data: batch,
                data_unit_size,
                tweaks: &tweaks[..units],
            };
            match direction {
                Direction::Encrypt => self.data_key.encrypt_with_backend(job),
                Direction::Decrypt => self.data_key.decrypt_with_backend(job),
            }
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

/// A batch of data units and their initial tweaks `T0`, run through the
/// data key's backend.
struct DataUnits<'a> {
    data: &'a mut [u8],
    data_unit_size: usize,
    tweaks: &'a [Block<Aes256>],
}

impl BlockSizeUser for DataUnits<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for DataUnits<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        for (unit, tweak) in self.data.chunks_exact_mut(self.data_unit_size).zip(self.tweaks) {
            xts_unit::<B, _>(unit, tweak, |blocks| backend.encrypt_par_blocks_inplace(blocks), |b| {
                backend.encrypt_block_inplace(b)
            });
        }
    }
}

impl BlockCipherDecClosure for DataUnits<'_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        for (unit, tweak) in self.data.chunks_exact_mut(self.data_unit_size).zip(self.tweaks) {
            xts_unit::<B, _>(unit, tweak, |blocks| backend.decrypt_par_blocks_inplace(blocks), |b| {
                backend.decrypt_block_inplace(b)
            });
        }
    }
}

/// One data unit: `C_j = E(P_j ^ T_j) ^ T_j`, batch by batch in the
/// backend's width, the last partial batch block by block.
#[inline(always)]
fn xts_unit<B, F>(
    unit: &mut [u8],
    first_tweak: &Block<Aes256>,
    mut par: F,
    single: impl Fn(&mut Block<Aes256>),
) where
    B: aes::cipher::ParBlocksSizeUser<BlockSize = U16>,
    F: FnMut(&mut ParBlocks<B>),
{
    let width = B::ParBlocksSize::USIZE;
    let mut next_tweak = u128::from_le_bytes(first_tweak.0);
    let mut batch: ParBlocks<B> = Default::default();
    let mut tweaks: Array<u128, B::ParBlocksSize> = Default::default();
    let mut chunks = unit.chunks_exact_mut(BLOCK * width);
    for chunk in &mut chunks {
        next_tweak = fill_tweaks(&mut tweaks, next_tweak);
        for ((block, tweak), bytes) in batch.iter_mut().zip(tweaks.iter()).zip(chunk.chunks_exact(BLOCK)) {
            *block = Array::from(xor16(bytes, *tweak));
        }
        par(&mut batch);
        for ((block, tweak), bytes) in batch.iter().zip(tweaks.iter()).zip(chunk.chunks_exact_mut(BLOCK)) {
            bytes.copy_from_slice(&xor16(block, *tweak));
        }
    }
    let rest = chunks.into_remainder();
    let rest_tweaks = &mut tweaks[..rest.len() / BLOCK];
    fill_tweaks(rest_tweaks, next_tweak);
    for (bytes, tweak) in rest.chunks_exact_mut(BLOCK).zip(rest_tweaks.iter()) {
        let mut block = Array::from(xor16(bytes, *tweak));
        single(&mut block);
        bytes.copy_from_slice(&xor16(&block, *tweak));
    }
}

/// Fills `tweaks` with `start * alpha^i` and returns the tweak after the
/// last. The first eight come from a chain of [`mul_alpha`]; every later
/// one is its predecessor-by-eight times alpha^8, so the work runs as
/// eight independent chains instead of one long dependency chain.
#[inline(always)]
fn fill_tweaks(tweaks: &mut [u128], start: u128) -> u128 {
    let mut tweak = start;
    let head = tweaks.len().min(8);
    for slot in tweaks.iter_mut().take(head) {
        *slot = tweak;
        tweak = mul_alpha(tweak);
    }
    for index in 8..tweaks.len() {
        tweaks[index] = mul_alpha_pow8(tweaks[index - 8]);
    }
    match tweaks.len() {
        0..=8 => tweak,
        len => mul_alpha(tweaks[len - 1]),
    }
}

/// `bytes ^ tweak` for one 16-byte block.
#[inline(always)]
fn xor16(bytes: &[u8], tweak: u128) -> [u8; 16] {
    let mut word = [0u8; 16];
    word.copy_from_slice(bytes);
    (u128::from_le_bytes(word) ^ tweak).to_le_bytes()
}

/// `v * 0x87` carry-less, for every byte `v`: what the eight bits shifted
/// out of the top by a multiplication with alpha^8 reduce to.
const REDUCE_BY_BYTE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut value = 0;
    while value < 256 {
        let mut product = 0u16;
        let mut bit = 0;
        while bit < 8 {
            if value & (1 << bit) != 0 {
                product ^= 0x87 << bit;
            }
            bit += 1;
        }
        table[value] = product;
        value += 1;
    }
    table
};

/// Multiplication by alpha^8 in GF(2^128) (eight [`mul_alpha`] steps).
#[inline(always)]
fn mul_alpha_pow8(tweak: u128) -> u128 {
    (tweak << 8) ^ u128::from(REDUCE_BY_BYTE[(tweak >> 120) as usize])
}

/// Multiplication by alpha (x) in GF(2^128) with the XTS polynomial
/// x^128 + x^7 + x^2 + x + 1, little-endian bit order (IEEE 1619 §5.2).
#[inline(always)]
pub fn mul_alpha(tweak: u128) -> u128 {
    let carry = (tweak >> 127) as u8;
    (tweak << 1) ^ u128::from(0x87 * carry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xts_mode::Xts128;

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
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn mul_alpha_pow8_is_eight_steps() {
        for seed in [1u128, u128::MAX, 0x8000_0000_0000_0000_0000_0000_0000_00ff, 0xdead_beef << 100] {
            let stepped = (0..8).fold(seed, |t, _| mul_alpha(t));
            assert_eq!(mul_alpha_pow8(seed), stepped, "{seed:#x}");
        }
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
        let xts = XtsKey::new(&key);
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

    #[test]
    fn parallel_split_equals_serial() {
        let key: [u8; 64] = core::array::from_fn(|i| 255 - i as u8);
        let xts = XtsKey::new(&key);
        let plain = pattern(PARALLEL_MIN_BYTES * 4 + 4096, 9);
        let mut parallel = plain.clone();
        xts.crypt(Direction::Encrypt, &mut parallel, 4096, u64::MAX as u128 - 40);
        let mut serial = plain.clone();
        xts.crypt_serial(Direction::Encrypt, &mut serial, 4096, u64::MAX as u128 - 40);
        assert_eq!(parallel, serial);
        let mut slow = plain.clone();
        oracle(&key, &mut slow, 4096, u64::MAX as u128 - 40, Direction::Encrypt);
        assert_eq!(parallel, slow);
    }
}
