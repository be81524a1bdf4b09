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
//! VAES-512, VAES-256 or AES-NI, so the XOR and tweak code below is
//! vectorised for that backend's registers too. (`aes` detects VAES at run
//! time from 0.9.4 on; 0.9.2 and earlier use AES-NI unless built with
//! `--cfg aes_backend="avx512"`, which costs this path about half its
//! speed: keep Cargo.lock at 0.9.4 or later.) Then:
//!
//! - blocks go through the backend's batch width (`ParBlocksSize`, 64 blocks
//!   for VAES-512) in place, across data unit boundaries, so 512-byte units
//!   fill whole batches as well;
//! - tweaks come from `TweakLanes`, eight consecutive tweaks stepped by
//!   alpha^8 as vector operations, written into one of two buffers while
//!   the other one's batch is encrypted;
//! - the initial tweaks `T0` of up to 64 data units are encrypted in one
//!   batch under K2 (a lone data unit keeps its `T0` in registers);
//! - requests of at least [`PARALLEL_MIN_BYTES`] are split across the rayon
//!   thread pool;
//! - [`XtsKey::crypt_from`] works out of place: its first XOR reads the
//!   source into the destination, so the device encrypts guest memory
//!   without copying it first and reads each guest byte once.
//!
//! After each piece of a split request, the pool thread scrubs the stack
//! the cipher used ([`scrub_stack`]: the backends leave round keys there);
//! the serial path is scrubbed by its caller, `ProgrammedKey`.
//!
//! No allocation, no locks, no `unsafe`. `xts-mode` is the test oracle for
//! this module (the tests below, `tests/xts_vectors.rs` with the IEEE 1619
//! vectors and `tests/xts_props.rs`); it is not used here because it
//! encrypts one block per call.

use aes::Aes256;
use aes::cipher::array::Array;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Block, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, ParBlocks,
    ParBlocksSizeUser, consts::U16,
};
use rayon::prelude::*;

use super::secure::scrub_stack;

/// Size of an AES block.
const BLOCK: usize = 16;
/// Data units whose tweaks are encrypted in one batch.
const TWEAK_BATCH: usize = 64;
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

/// An expanded AES-256-XTS key: K1 encrypts data, K2 encrypts tweaks.
///
/// The `aes` crate's `zeroize` feature wipes both key schedules on drop.
/// Not `Clone`: every copy of a key schedule is one more to wipe. The
/// engine keeps it in the key arena (`SecureBox`).
pub struct XtsKey {
    data_key: Aes256,
    tweak_key: Aes256,
}

impl XtsKey {
    /// Expands a 64-byte XTS key (K1 || K2).
    pub fn new(key: &[u8; 64]) -> Self {
        // The halves are borrowed as arrays, not copied: no key bytes on
        // the stack beyond what the key expansion itself uses.
        let (k1, k2) = key.split_at(32);
        let half = |bytes| <&Array<u8, _>>::try_from(bytes).expect("32-byte half");
        Self {
            data_key: Aes256::new(half(k1)),
            tweak_key: Aes256::new(half(k2)),
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
        debug_assert!(data_unit_size >= BLOCK && data_unit_size.is_multiple_of(BLOCK));
        debug_assert!(data.len().is_multiple_of(data_unit_size));
        if data.len() >= PARALLEL_MIN_BYTES && rayon::current_num_threads() > 1 {
            let units_per_piece = piece_units(data.len(), data_unit_size);
            data.par_chunks_mut(units_per_piece * data_unit_size)
                .enumerate()
                .for_each(|(index, piece)| {
                    let dun = first_dun.wrapping_add((index * units_per_piece) as u128);
                    self.crypt_serial(direction, piece, data_unit_size, dun);
                    scrub_stack();
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
        self.crypt_pieces(direction, None, data, data_unit_size, first_dun);
    }

    /// Like [`XtsKey::crypt`], but out of place: `dest` gets the result for
    /// `source`, which is read exactly once, byte by byte, in order (the
    /// first XOR with the tweak reads it straight into `dest`). The device
    /// encrypts guest memory this way: a guest that changes its buffer
    /// meanwhile changes only what it gets, never what the engine computed
    /// from a byte it saw twice.
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
                    self.crypt_pieces(direction, Some(source), dest, data_unit_size, dun);
                    scrub_stack();
                });
        } else {
            self.crypt_pieces(direction, Some(source), dest, data_unit_size, first_dun);
        }
    }

    /// The serial path: in place when `source` is `None`, else from
    /// `source` (same length as `data`) into `data`. Never inlined, so its
    /// frame and the backends' are below a caller that scrubs after it.
    #[inline(never)]
    fn crypt_pieces(
        &self,
        direction: Direction,
        source: Option<&[u8]>,
        data: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
    ) {
        debug_assert!(data_unit_size >= BLOCK && data_unit_size.is_multiple_of(BLOCK));
        debug_assert!(data.len().is_multiple_of(data_unit_size));
        debug_assert!(source.is_none_or(|source| source.len() == data.len()));
        let unit_blocks = data_unit_size / BLOCK;
        if data.len() == data_unit_size {
            // One data unit (the common small request): its tweak stays in
            // registers instead of going through a batch buffer.
            let mut initial = 0u128;
            self.tweak_key.encrypt_with_backend(InitialTweak {
                dun: first_dun,
                out: &mut initial,
            });
            let (blocks, _) = Array::slice_as_chunks_mut(data);
            let job = DataUnits {
                blocks,
                source: source.map(|source| Array::slice_as_chunks(source).0),
                tweaks: TweakStream::new(core::slice::from_ref(&initial), unit_blocks),
            };
            return self.run(direction, job);
        }
        let mut initial = [Block::<Aes256>::default(); TWEAK_BATCH];
        let mut tweaks = [0u128; TWEAK_BATCH];
        let mut dun = first_dun;
        let batch_bytes = data_unit_size * TWEAK_BATCH;
        for (index, batch) in data.chunks_mut(batch_bytes).enumerate() {
            let units = batch.len() / data_unit_size;
            for tweak in initial.iter_mut().take(units) {
                *tweak = Array::from(dun.to_le_bytes());
                dun = dun.wrapping_add(1);
            }
            self.tweak_key.encrypt_blocks(&mut initial[..units]);
            for (tweak, block) in tweaks.iter_mut().zip(&initial[..units]) {
                *tweak = u128::from_le_bytes(block.0);
            }
            let start = index * batch_bytes;
            let end = start + batch.len();
            let (blocks, _) = Array::slice_as_chunks_mut(batch);
            let job = DataUnits {
                blocks,
                source: source.map(|source| Array::slice_as_chunks(&source[start..end]).0),
                tweaks: TweakStream::new(&tweaks[..units], unit_blocks),
            };
            self.run(direction, job);
        }
    }

    /// Runs `job` through the data key's backend.
    fn run(&self, direction: Direction, job: DataUnits<'_>) {
        match direction {
            Direction::Encrypt => self.data_key.encrypt_with_backend(job),
            Direction::Decrypt => self.data_key.decrypt_with_backend(job),
        }
    }
}

/// `T0 = AES-ENC(K2, DUN)` for one data unit.
struct InitialTweak<'a> {
    dun: u128,
    out: &'a mut u128,
}

impl BlockSizeUser for InitialTweak<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for InitialTweak<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let mut block = Array::from(self.dun.to_le_bytes());
        backend.encrypt_block_inplace(&mut block);
        *self.out = u128::from_le_bytes(block.0);
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

/// The tweaks of consecutive blocks across consecutive data units: block
/// `j` of a unit whose initial tweak is `T0` gets `T0 * alpha^j`.
#[derive(Clone)]
struct TweakStream<'a> {
    /// `T0` of every data unit, in order.
    initial: &'a [u128],
    /// Blocks per data unit.
    unit_blocks: usize,
    /// Index in `initial` of the next data unit to start.
    next_unit: usize,
    /// Tweaks of the next [`LANES`] blocks (of the current data unit).
    lanes: TweakLanes,
    /// Blocks left in the current data unit.
    left: usize,
}

impl<'a> TweakStream<'a> {
    fn new(initial: &'a [u128], unit_blocks: usize) -> Self {
        Self {
            initial,
            unit_blocks,
            next_unit: 0,
            lanes: TweakLanes::default(),
            left: 0,
        }
    }

    /// Writes the tweaks of the next `out.len()` blocks.
    #[inline(always)]
    fn fill(&mut self, mut out: &mut [Block<Aes256>]) {
        while !out.is_empty() {
            if self.left == 0 {
                self.lanes = TweakLanes::starting_at(self.initial[self.next_unit]);
                self.next_unit += 1;
                self.left = self.unit_blocks;
            }
            let (head, tail) = out.split_at_mut(self.left.min(out.len()));
            let mut groups = head.chunks_exact_mut(LANES);
            for group in &mut groups {
                self.lanes.write(group);
                self.lanes.advance(LANES as u32);
            }
            let rest = groups.into_remainder();
            if !rest.is_empty() {
                self.lanes.write(rest);
                self.lanes.advance(rest.len() as u32);
            }
            self.left -= head.len();
            out = tail;
        }
    }
}

/// Blocks whose tweaks [`TweakLanes`] holds side by side.
const LANES: usize = 8;

/// The tweaks of [`LANES`] consecutive blocks, low and high halves in
/// separate arrays: every operation is the same on each lane, so the
/// compiler turns it into a few vector instructions.
#[derive(Clone, Copy, Default)]
struct TweakLanes {
    lo: [u64; LANES],
    hi: [u64; LANES],
}

impl TweakLanes {
    /// `start * alpha^i` in lane `i`.
    #[inline(always)]
    fn starting_at(start: u128) -> Self {
        let mut lanes = Self::default();
        let mut tweak = start;
        for (lo, hi) in lanes.lo.iter_mut().zip(lanes.hi.iter_mut()) {
            *lo = tweak as u64;
            *hi = (tweak >> 64) as u64;
            tweak = mul_alpha(tweak);
        }
        lanes
    }

    /// Writes the first `out.len()` lanes as little-endian blocks.
    #[inline(always)]
    fn write(&self, out: &mut [Block<Aes256>]) {
        for ((block, lo), hi) in out.iter_mut().zip(self.lo).zip(self.hi) {
            let (low, high) = block.0.split_at_mut(8);
            low.copy_from_slice(&lo.to_le_bytes());
            high.copy_from_slice(&hi.to_le_bytes());
        }
    }

    /// Multiplies every lane by alpha^k, `1 <= k <= LANES`: a shift by `k`
    /// and the `k` bits shifted out of the top, times `0x87` carry-less,
    /// added back at the bottom (IEEE 1619 §5.2 applied `k` times).
    #[inline(always)]
    fn advance(&mut self, k: u32) {
        debug_assert!((1..=LANES as u32).contains(&k));
        for (lo, hi) in self.lo.iter_mut().zip(self.hi.iter_mut()) {
            let top = *hi >> (64 - k);
            *hi = (*hi << k) | (*lo >> (64 - k));
            *lo = (*lo << k) ^ top ^ (top << 1) ^ (top << 2) ^ (top << 7);
        }
    }
}

/// Consecutive data units and their tweaks, run through the data key's
/// backend.
struct DataUnits<'a> {
    /// The output; also the input when `source` is `None`.
    blocks: &'a mut [Block<Aes256>],
    /// The input of an out-of-place job, as long as `blocks`.
    source: Option<&'a [Block<Aes256>]>,
    tweaks: TweakStream<'a>,
}

impl BlockSizeUser for DataUnits<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for DataUnits<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        self.run::<B>(
            |blocks| backend.encrypt_par_blocks_inplace(blocks),
            |block| backend.encrypt_block_inplace(block),
        );
    }
}

impl BlockCipherDecClosure for DataUnits<'_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        self.run::<B>(
            |blocks| backend.decrypt_par_blocks_inplace(blocks),
            |block| backend.decrypt_block_inplace(block),
        );
    }
}

impl DataUnits<'_> {
    /// `C_j = E(P_j ^ T_j) ^ T_j` over all blocks, in place, in batches of
    /// the backend's width regardless of data unit boundaries. Out of
    /// place, the first XOR reads `P_j` from `source` into `blocks`.
    ///
    /// The tweaks of the next batch are computed into the other of two
    /// buffers before the current batch is encrypted: in program order that
    /// work comes before the long run of AES instructions, so it overlaps
    /// with them instead of waiting behind them.
    #[inline(always)]
    fn run<B>(mut self, par: impl Fn(&mut ParBlocks<B>), single: impl Fn(&mut Block<Aes256>))
    where
        B: ParBlocksSizeUser<BlockSize = U16>,
    {
        let width = B::ParBlocksSize::USIZE;
        let full = self.blocks.len() / width;
        let (body, rest) = self.blocks.split_at_mut(full * width);
        let (body_source, rest_source) = match self.source {
            Some(source) => {
                let (body, rest) = source.split_at(full * width);
                (Some(body), Some(rest))
            }
            None => (None, None),
        };
        if let Some(rest_source) = rest_source {
            // Fewer than one batch: copied first, then done in place.
            rest.copy_from_slice(rest_source);
        }
        let mut first: ParBlocks<B> = Default::default();
        if full == 0 {
            self.tweaks.fill(&mut first[..rest.len()]);
            return tail::<B>(rest, &mut first, par, single);
        }
        let mut second: ParBlocks<B> = Default::default();
        let (mut current, mut next) = (&mut first, &mut second);
        self.tweaks.fill(current);
        for (index, chunk) in body.chunks_exact_mut(width).enumerate() {
            let after = if index + 1 < full { width } else { rest.len() };
            self.tweaks.fill(&mut next[..after]);
            let chunk = ParBlocks::<B>::slice_as_mut_array(chunk).expect("chunk of width blocks");
            match body_source {
                Some(source) => {
                    xor_from(chunk, &source[index * width..(index + 1) * width], current)
                }
                None => xor_in_place(chunk, current),
            }
            par(chunk);
            xor_in_place(chunk, current);
            core::mem::swap(&mut current, &mut next);
        }
        tail::<B>(rest, current, par, single);
    }
}

/// The last `rest.len() < width` blocks, whose tweaks are at the start of
/// `tweaks`. At least half a batch is padded to a whole one (one batched
/// call costs no more than that many single blocks); fewer go block by
/// block.
#[inline(always)]
fn tail<B>(
    rest: &mut [Block<Aes256>],
    tweaks: &mut ParBlocks<B>,
    par: impl Fn(&mut ParBlocks<B>),
    single: impl Fn(&mut Block<Aes256>),
) where
    B: ParBlocksSizeUser<BlockSize = U16>,
{
    if rest.is_empty() {
        return;
    }
    if rest.len() * 2 >= B::ParBlocksSize::USIZE {
        // Through the tweak buffer: it takes `P ^ T` (its unused end holds
        // stale values, encrypted and thrown away) while `rest` takes `T`;
        // then `rest` gets `E(P ^ T) ^ T`.
        swap_xor(&mut tweaks[..rest.len()], rest);
        par(tweaks);
        xor_in_place(rest, &tweaks[..rest.len()]);
    } else {
        for (block, tweak) in rest.iter_mut().zip(tweaks.iter()) {
            xor_in_place(core::slice::from_mut(block), core::slice::from_ref(tweak));
            single(block);
            xor_in_place(core::slice::from_mut(block), core::slice::from_ref(tweak));
        }
    }
}

/// `blocks ^= tweaks`, as one flat byte loop so that it vectorises to the
/// backend's register width.
#[inline(always)]
fn xor_in_place(blocks: &mut [Block<Aes256>], tweaks: &[Block<Aes256>]) {
    let data = Array::slice_as_flattened_mut(blocks);
    let tweaks = Array::slice_as_flattened(tweaks);
    for (byte, tweak) in data.iter_mut().zip(tweaks) {
        *byte ^= *tweak;
    }
}

/// `blocks = source ^ tweaks`, like [`xor_in_place`]; reads each source
/// byte once.
#[inline(always)]
fn xor_from(blocks: &mut [Block<Aes256>], source: &[Block<Aes256>], tweaks: &[Block<Aes256>]) {
    let data = Array::slice_as_flattened_mut(blocks);
    let source = Array::slice_as_flattened(source);
    let tweaks = Array::slice_as_flattened(tweaks);
    for ((byte, input), tweak) in data.iter_mut().zip(source).zip(tweaks) {
        *byte = *input ^ *tweak;
    }
}

/// `(tweaks, blocks) = (tweaks ^ blocks, tweaks)`, like [`xor_in_place`].
#[inline(always)]
fn swap_xor(tweaks: &mut [Block<Aes256>], blocks: &mut [Block<Aes256>]) {
    let tweaks = Array::slice_as_flattened_mut(tweaks);
    let blocks = Array::slice_as_flattened_mut(blocks);
    for (tweak, byte) in tweaks.iter_mut().zip(blocks.iter_mut()) {
        let t = *tweak;
        *tweak ^= *byte;
        *byte = t;
    }
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
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn lanes_advance_is_k_steps() {
        for seed in [
            1u128,
            u128::MAX,
            0x8000_0000_0000_0000_0000_0000_0000_00ff,
            0xdead_beef << 100,
        ] {
            for k in 1..=LANES as u32 {
                let mut lanes = TweakLanes::starting_at(seed);
                lanes.advance(k);
                let expected = TweakLanes::starting_at((0..k).fold(seed, |t, _| mul_alpha(t)));
                assert_eq!(
                    (lanes.lo, lanes.hi),
                    (expected.lo, expected.hi),
                    "{seed:#x} k {k}"
                );
            }
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

    /// Unit sizes that are not whole groups of lanes or backend batches:
    /// partial lane groups, block-by-block tails, padded tails.
    #[test]
    fn equals_oracle_for_odd_data_unit_sizes() {
        let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ 0x5a);
        let xts = XtsKey::new(&key);
        for blocks in [1usize, 2, 3, 7, 9, 15, 17, 31, 33, 63, 65, 100] {
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

    /// Out of place equals in place for every shape the in-place tests
    /// cover, serial and split, and leaves the source as it was.
    #[test]
    fn out_of_place_equals_in_place() {
        let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(13) ^ 0xa5);
        let xts = XtsKey::new(&key);
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

    #[test]
    fn parallel_split_equals_serial() {
        let key: [u8; 64] = core::array::from_fn(|i| 255 - i as u8);
        let xts = XtsKey::new(&key);
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
