//! The VAES backend's main loop on 512-bit vectors, for CPUs with AVX-512
//! (AMD Zen 4, Intel Ice Lake server and later): four blocks per `vaesenc`,
//! eight vectors in flight (32 blocks, 512 bytes a stride), a unit's first
//! 32 tweaks from `T0` at once and each next 32 by `alpha^32` (a dword
//! shuffle and shifts, computed between the rounds), three-way
//! XORs in one `vpternlogq`. What is left of a unit after its last whole
//! stride (fewer than 32 blocks) goes to the 256-bit loop, from that
//! block's tweak. A unit of exactly one stride (512 bytes) keeps its
//! tweaks in registers ([`crypt_unit_from`]). A one-unit request's `T0`
//! is computed here too ([`crypt_unit_at`]), so that it reaches the first
//! tweaks in a register, not through memory.
//!
//! Same key handling as the 256-bit loop (see the parent module): round
//! keys are broadcast from the schedule where they are used, one round at
//! a time across all vectors ([`round_done`]), the schedule's address made
//! opaque per stride.
//!
//! Measured against the 256-bit loop on Zen 4 in `icelab bench crypto`
//! (benches/README.md, *The VAES backend*).

use core::arch::x86_64::{
    __m128i, __m512i, _mm_load_si128, _mm_loadu_si128, _mm_shuffle_epi32, _mm512_aesdec_epi128,
    _mm512_aesdeclast_epi128, _mm512_aesenc_epi128, _mm512_aesenclast_epi128, _mm512_and_si512,
    _mm512_broadcast_i32x4, _mm512_castsi512_si128, _mm512_clmulepi64_epi128, _mm512_loadu_si512,
    _mm512_maskz_srlv_epi64, _mm512_set_epi64, _mm512_set1_epi64, _mm512_shldv_epi64,
    _mm512_shuffle_epi32, _mm512_slli_epi64, _mm512_storeu_si512, _mm512_ternarylogic_epi64,
    _mm512_xor_si512,
};

use super::{BLOCK, ROUNDS, Schedule, Stream, now_and_next, opaque};

/// 512-bit vectors (four blocks each) the loop keeps in flight.
const LANES: usize = 8;
/// Blocks per stride.
pub(super) const STRIDE_BLOCKS: usize = 4 * LANES;
/// `vpternlogq` truth table of `a ^ b ^ c`.
const XOR3: i32 = 0x96;

/// Whether this CPU has what this loop needs on top of the 256-bit loop's
/// features (which a `VaesXts` existing shows): checked per call, so only
/// the three cached feature tests.
/// (Every CPU with VAES and AVX-512 has VBMI2 too: Intel since Ice Lake,
/// AMD since Zen 4.)
pub(super) fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vbmi2")
}

/// One data unit of `blocks` blocks from `input` to `output` with initial
/// tweak `t0`: whole strides here, the rest (fewer than
/// [`STRIDE_BLOCKS`]) by the 256-bit loop.
///
/// # Safety
/// `blocks * 16` bytes are readable at `input` and writable at `output`
/// (which may be the same pointer); the CPU has the features the parent's
/// `supported` and [`has_avx512`] check.
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vbmi2")]
#[inline]
unsafe fn crypt_unit<const DECRYPT: bool>(
    schedule: &Schedule,
    t0: __m128i,
    mut input: *const u8,
    mut output: *mut u8,
    blocks: usize,
    stream: Stream,
) {
    let mut tweaks = [StrideTweaks(first_tweaks(t0)); 2];
    let mut current = 0;
    let mut left = blocks;
    while left >= STRIDE_BLOCKS {
        let schedule = opaque(schedule);
        stream.ahead_of(input, STRIDE_BLOCKS * BLOCK);
        let (now, next) = now_and_next(&mut tweaks, current);
        let now = now.0.as_ptr();
        let next = next.0.as_mut_ptr();
        // SAFETY (the closure): `i < LANES`, inside the array.
        let tweak = |i: usize| unsafe { core::ptr::read_volatile(now.add(i)) };
        // SAFETY: `STRIDE_BLOCKS` blocks are left at both pointers; `next`
        // is an array of `LANES` vectors.
        unsafe {
            if left > STRIDE_BLOCKS {
                crypt_stride::<DECRYPT, true>(schedule, tweak, next, input, output)
            } else {
                crypt_stride::<DECRYPT, false>(schedule, tweak, next, input, output)
            }
        };
        current ^= 1;
        // SAFETY: still within (or one past) the unit.
        unsafe {
            input = input.add(STRIDE_BLOCKS * BLOCK);
            output = output.add(STRIDE_BLOCKS * BLOCK);
        }
        left -= STRIDE_BLOCKS;
    }
    if left > 0 {
        // The next block's tweak is the first lane of the first vector.
        let next = _mm512_castsi512_si128(tweaks[current].0[0]);
        // SAFETY: `left` blocks remain at both pointers (caller).
        unsafe { super::crypt_unit::<DECRYPT>(schedule, next, input, output, left, stream) };
    }
}

/// A request of one data unit (`blocks` blocks) with DUN `dun`: `T0` is
/// computed here, under `tweak_schedule` (K2), so that it reaches the
/// unit's first tweaks in a register ([`crypt_unit_from`]).
///
/// A one-unit call is a chain from the DUN through `T0` (15 dependent
/// rounds) and the first tweaks to the AES of the data; every trip
/// through memory on the way adds a store-to-load latency to it. Zen 4,
/// one unit per call, against `T0` computed by the caller and passed in
/// memory: 512 B 6.9 -> 9.1 GB/s (it was in the 256-bit loop, 7.0), 1 KiB
/// 9.9 -> 11.4, 4 KiB 14.1 -> 14.9 (benches/README.md).
///
/// # Safety
/// `blocks * 16` bytes are readable at `input` and writable at `output`
/// (which may be the same pointer); the CPU has the features the
/// parent's `supported` and [`has_avx512`] check.
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vbmi2")]
pub(super) unsafe fn crypt_unit_at<const DECRYPT: bool>(
    schedule: &Schedule,
    tweak_schedule: &Schedule,
    dun: u128,
    input: *const u8,
    output: *mut u8,
    blocks: usize,
    stream: Stream,
) {
    let t0 = super::initial_tweak(tweak_schedule, dun);
    // SAFETY: the caller's.
    unsafe { crypt_unit_from::<DECRYPT>(schedule, t0, input, output, blocks, stream) };
}

/// Consecutive data units of `blocks` blocks each, unit `i` with initial
/// tweak `initial[i]`, in one call (each `T0` loaded from the array
/// straight into the unit's first tweaks).
///
/// # Safety
/// `blocks * 16 * initial.len()` bytes are readable at `input` and
/// writable at `output` (which may be the same pointer); the CPU has the
/// features the parent's `supported` and [`has_avx512`] check.
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vbmi2")]
pub(super) unsafe fn crypt_units<const DECRYPT: bool>(
    schedule: &Schedule,
    initial: &[[u8; BLOCK]],
    input: *const u8,
    output: *mut u8,
    blocks: usize,
    stream: Stream,
) {
    for (unit, t0) in initial.iter().enumerate() {
        let offset = unit * blocks * BLOCK;
        // SAFETY: a 16-byte load from the array; unit `unit` is inside the
        // caller's bytes.
        unsafe {
            let t0 = _mm_loadu_si128(t0.as_ptr().cast());
            crypt_unit_from::<DECRYPT>(
                schedule,
                t0,
                input.add(offset),
                output.add(offset),
                blocks,
                stream,
            )
        };
    }
}

/// One data unit with initial tweak `t0`: a unit of exactly one stride
/// (512 bytes) keeps its 32 tweaks and eight cipher states in registers
/// from start to end; any other is [`crypt_unit`].
///
/// # Safety
/// As [`crypt_unit`].
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vbmi2")]
#[inline]
unsafe fn crypt_unit_from<const DECRYPT: bool>(
    schedule: &Schedule,
    t0: __m128i,
    input: *const u8,
    output: *mut u8,
    blocks: usize,
    stream: Stream,
) {
    if blocks != STRIDE_BLOCKS {
        // SAFETY: the caller's.
        unsafe { crypt_unit::<DECRYPT>(schedule, t0, input, output, blocks, stream) };
        return;
    }
    stream.ahead_of(input, STRIDE_BLOCKS * BLOCK);
    let tweaks = first_tweaks(t0);
    // SAFETY: the caller's 512 bytes; without `NEXT` nothing is written
    // through the null pointer.
    unsafe {
        crypt_stride::<DECRYPT, false>(
            opaque(schedule),
            |i| tweaks[i],
            core::ptr::null_mut(),
            input,
            output,
        )
    };
}

/// The tweaks of one stride, lane `j` of vector `i` for block `4i + j`.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct StrideTweaks([__m512i; LANES]);

/// One stride: `out = AES(in ^ T) ^ T` for each of the [`LANES`] vectors,
/// `T` of vector `i` from `tweak(i)`, the first round key folded into the
/// first XOR (one `vpternlogq`) and the last into `aesenclast`'s. With
/// `NEXT`, the next stride's tweaks (these times `alpha^32`) go to `next`,
/// one vector after each of rounds 1 to [`LANES`].
///
/// # Safety
/// `64 * LANES` bytes are readable at `input` and writable at `output`;
/// with `NEXT`, `LANES` vectors are writable at `next`.
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vbmi2")]
#[inline]
unsafe fn crypt_stride<const DECRYPT: bool, const NEXT: bool>(
    schedule: &Schedule,
    tweak: impl Fn(usize) -> __m512i,
    next: *mut __m512i,
    input: *const u8,
    output: *mut u8,
) {
    let first = round_key(schedule, 0);
    let mut state: [__m512i; LANES] = core::array::from_fn(|i| {
        // SAFETY: vector `i < LANES` is inside the caller's bytes.
        let block = unsafe { _mm512_loadu_si512(input.add(64 * i).cast()) };
        _mm512_ternarylogic_epi64::<XOR3>(block, tweak(i), first)
    });
    for x in &mut state {
        round_done(x);
    }
    for round in 1..ROUNDS {
        let key = round_key(schedule, round);
        for x in state.iter_mut() {
            *x = if DECRYPT {
                _mm512_aesdec_epi128(*x, key)
            } else {
                _mm512_aesenc_epi128(*x, key)
            };
        }
        for x in state.iter_mut() {
            round_done(x);
        }
        if NEXT && round <= LANES {
            let i = round - 1;
            // SAFETY: `i < LANES` vectors at `next` (caller).
            unsafe { core::ptr::write_volatile(next.add(i), mul_alpha32(tweak(i))) };
        }
    }
    let last = round_key(schedule, ROUNDS);
    for (i, x) in state.into_iter().enumerate() {
        let key = _mm512_xor_si512(tweak(i), last);
        let out = if DECRYPT {
            _mm512_aesdeclast_epi128(x, key)
        } else {
            _mm512_aesenclast_epi128(x, key)
        };
        // SAFETY: as for the load.
        unsafe { _mm512_storeu_si512(output.add(64 * i).cast(), out) };
    }
}

/// Round key `index` of `schedule` in all four lanes (`vbroadcasti32x4`
/// from the schedule).
#[target_feature(enable = "avx512f")]
#[inline]
fn round_key(schedule: &Schedule, index: usize) -> __m512i {
    // SAFETY: as in the parent's `round_key`.
    let key = unsafe { _mm_load_si128(schedule.0[index].as_ptr().cast()) };
    _mm512_broadcast_i32x4(key)
}

round_barrier!(
    /// The parent's `round_done` for a 512-bit vector.
    round_done,
    __m512i,
    zmm_reg,
    "avx512f"
);

/// The tweaks of the first [`STRIDE_BLOCKS`] blocks of a unit: lane `j` of
/// vector `i` holds `T0 * alpha^k`, `k = 4i + j`, each computed from `T0`:
/// per 128-bit lane, `vpshldvq` shifts the two halves left by `k` across
/// each other (`T << k`, the `k` bits shifted out wrapped into the
/// bottom), and those `k` bits times `x^7 + x^2 + x` (carry-less) complete
/// the reduction by `0x87` (IEEE 1619 §5.2, `k` steps at once).
///
/// Four instructions a vector, no byte shifts: from the DUN to the first
/// AES round this is on the critical path of a one-unit call (512-byte
/// units: 9.1 GB/s against 8.5 with byte shifts and `vpclmulqdq` by
/// `0x87`, Zen 4).
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vbmi2")]
#[inline]
fn first_tweaks(t0: __m128i) -> [__m512i; LANES] {
    let all = _mm512_broadcast_i32x4(t0);
    // Each lane's halves swapped: the high half beside the low one.
    let swapped = _mm512_broadcast_i32x4(_mm_shuffle_epi32::<0x4e>(t0));
    let rest_of_0x87 = _mm512_set1_epi64(0x86);
    core::array::from_fn(|i| {
        let k = 4 * i as i64;
        let counts = _mm512_set_epi64(k + 3, k + 3, k + 2, k + 2, k + 1, k + 1, k, k);
        let back = _mm512_set_epi64(
            61 - k,
            61 - k,
            62 - k,
            62 - k,
            63 - k,
            63 - k,
            64 - k,
            64 - k,
        );
        // Low half: `low << k | high >> (64 - k)`; high half:
        // `high << k | low >> (64 - k)`.
        let shifted = _mm512_shldv_epi64(all, swapped, counts);
        // The bits shifted out of the top (`high >> (64 - k)`, none for
        // `k` 0), in the low half only.
        let wrapped = _mm512_maskz_srlv_epi64(0x55, swapped, back);
        let reduced = _mm512_clmulepi64_epi128::<0x00>(wrapped, rest_of_0x87);
        _mm512_xor_si512(shifted, reduced)
    })
}

/// Multiplies every lane by `alpha^32`: the lane's dwords rotated up by
/// one (`T << 32`, with the 32 bits shifted out, `c`, wrapped into the
/// bottom dword), then `c * 0x87` carry-less added at the bottom, less the
/// `c` already there: `c << 1 ^ c << 2 ^ c << 7` (fits the low qword).
///
/// Only a dword shuffle, an AND, qword shifts and XORs: on Zen 4 byte
/// shifts (`vpslldq`) and `vpclmulqdq` compete with the AES instructions
/// and these do not (benches/README.md, *Zen 4, AVX-512 and the tweak
/// step*); the loop was 5% faster with this than with a byte shift and a
/// carry-less multiply.
#[target_feature(enable = "aes,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vbmi2")]
#[inline]
fn mul_alpha32(tweaks: __m512i) -> __m512i {
    const LOW_DWORD: i64 = 0xffff_ffff;
    let rotated = _mm512_shuffle_epi32::<0x93>(tweaks);
    let wrapped = _mm512_and_si512(
        rotated,
        _mm512_set_epi64(0, LOW_DWORD, 0, LOW_DWORD, 0, LOW_DWORD, 0, LOW_DWORD),
    );
    let twice = _mm512_slli_epi64::<1>(wrapped);
    let four_times = _mm512_slli_epi64::<2>(wrapped);
    let partial = _mm512_ternarylogic_epi64::<XOR3>(rotated, twice, four_times);
    _mm512_xor_si512(partial, _mm512_slli_epi64::<7>(wrapped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::xts::mul_alpha;

    #[test]
    fn tweak_steps_equal_repeated_alpha() {
        if !(super::super::supported() && has_avx512()) {
            return;
        }
        for t0 in [1u128, u128::MAX, 0x8000_0000_8000_0000_8000_0000_0000_00ff] {
            let expected: Vec<u128> = core::iter::successors(Some(t0), |t| Some(mul_alpha(*t)))
                .take(3 * STRIDE_BLOCKS)
                .collect();
            let mut got = Vec::new();
            // SAFETY: the CPU has the features (checked above).
            let mut tweaks = unsafe { first_tweaks(super::super::dun_block(t0)) };
            for _ in 0..3 {
                for vector in tweaks {
                    // SAFETY: 64 bytes of plain data either way.
                    let lanes = unsafe { core::mem::transmute::<__m512i, [u128; 4]>(vector) };
                    got.extend(lanes);
                }
                // SAFETY: as above.
                tweaks = tweaks.map(|t| unsafe { mul_alpha32(t) });
            }
            assert_eq!(got, expected, "{t0:#x}");
        }
    }
}
