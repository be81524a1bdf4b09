//! The `aes` crate backend of [`super::XtsKey`]: the engine's own XTS
//! loop around the `aes` crate's block cipher backends. The fallback when
//! OpenSSL refuses a key (it will not encrypt under a key whose halves are
//! equal), and the reference the OpenSSL backend is measured against.
//!
//! The per-block work runs inside a [`BlockCipherEncClosure`] so that it
//! is compiled together with (and inlined into) whichever backend the CPU
//! supports at run time (VAES-512, VAES-256 or AES-NI), so the XOR and
//! tweak code below is vectorised for that backend's registers too. Then:
//!
//! - blocks go through the backend's batch width (`ParBlocksSize`, 64 blocks
//!   for VAES-512) in place, across data unit boundaries, so 512-byte units
//!   fill whole batches as well;
//! - tweaks come from `TweakLanes`, eight consecutive tweaks stepped by
//!   alpha^8 as vector operations, written into one of two buffers while
//!   the other one's batch is encrypted;
//! - the initial tweaks `T0` of up to 64 data units are encrypted in one
//!   batch under K2 (a lone data unit keeps its `T0` in registers).
//!
//! The backends copy the round keys to the stack on every call and never
//! wipe them: callers scrub ([`super::XtsKey::leaves_key_on_stack`]).
//! No allocation, no locks, no `unsafe`.

use aes::Aes256;
use aes::cipher::array::Array;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Block, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, ParBlocks,
    ParBlocksSizeUser, consts::U16,
};

use super::{BLOCK, Direction, mul_alpha};

/// Data units whose tweaks are encrypted in one batch.
const TWEAK_BATCH: usize = 64;

/// An expanded AES-256-XTS key: K1 encrypts data, K2 encrypts tweaks.
///
/// The `aes` crate's `zeroize` feature wipes both key schedules on drop.
/// Not `Clone`: every copy of a key schedule is one more to wipe.
pub(super) struct AesXts {
    data_key: Aes256,
    tweak_key: Aes256,
}

impl AesXts {
    /// Expands a 64-byte XTS key (K1 || K2).
    pub(super) fn new(key: &[u8; 64]) -> Self {
        // The halves are borrowed as arrays, not copied: no key bytes on
        // the stack beyond what the key expansion itself uses.
        let (k1, k2) = key.split_at(32);
        let half = |bytes| <&Array<u8, _>>::try_from(bytes).expect("32-byte half");
        Self {
            data_key: Aes256::new(half(k1)),
            tweak_key: Aes256::new(half(k2)),
        }
    }

    /// The serial path: in place when `source` is `None`, else from
    /// `source` (same length as `data`) into `data`, whose first XOR with
    /// the tweak reads each source byte once, in order. Never inlined, so
    /// its frame and the backends' are below a caller that scrubs after it.
    #[inline(never)]
    pub(super) fn crypt_pieces(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
