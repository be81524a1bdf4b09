//! Property tests of the engine's AES-256-XTS fast path against the
//! `xts-mode` oracle (one block per call, IEEE 1619 as written).
//!
//! Random keys, data and DUNs (including DUNs whose run of data units
//! carries across the 64-bit word or ends at, or wraps past, 2^128), every
//! data unit size the engine offers (512 to 4096 bytes), 1 to 64 units per
//! request (so requests of 128 KiB and more take the split-across-threads
//! path of [`XtsKey::crypt`]), both directions, both backends (OpenSSL
//! and the `aes` crate), in place and out of place.

use aes::Aes256;
use aes::cipher::KeyInit;
use aes::cipher::array::Array;
use icelab_emulator::engine::xts::{Backend, Direction, PARALLEL_MIN_BYTES, XtsKey};
use proptest::prelude::*;
use xts_mode::Xts128;

fn oracle(key: &[u8; 64]) -> Xts128<Aes256> {
    Xts128::new(
        Aes256::new(&Array::try_from(&key[..32]).expect("32 bytes")),
        Aes256::new(&Array::try_from(&key[32..]).expect("32 bytes")),
    )
}

/// The oracle over a whole request: `encrypt_area`/`decrypt_area` when the
/// DUNs do not wrap (they add the unit index to the first DUN), one sector
/// per unit with the wrapped DUN otherwise.
fn oracle_crypt(key: &[u8; 64], direction: Direction, data: &mut [u8], dus: usize, dun: u128) {
    let xts = oracle(key);
    let units = (data.len() / dus) as u128;
    let tweak = |i: u128| i.to_le_bytes().into();
    if units == 0 || dun.checked_add(units - 1).is_some() {
        match direction {
            Direction::Encrypt => xts.encrypt_area(data, dus, dun, tweak),
            Direction::Decrypt => xts.decrypt_area(data, dus, dun, tweak),
        }
        return;
    }
    for (index, unit) in data.chunks_exact_mut(dus).enumerate() {
        let tweak = tweak(dun.wrapping_add(index as u128));
        match direction {
            Direction::Encrypt => xts.encrypt_sector(unit, tweak),
            Direction::Decrypt => xts.decrypt_sector(unit, tweak),
        }
    }
}

/// DUNs where carries matter: small, either side of 2^64 (the first unit
/// just below, the last ones above), just below 2^128 (the last unit at
/// 2^128 - 1, or past it, wrapping), and anywhere.
fn dun() -> impl Strategy<Value = u128> {
    prop_oneof![
        0u128..1024,
        (0u128..128).prop_map(|below| (1u128 << 64) - below),
        (0u128..128).prop_map(|below| u128::MAX - below),
        any::<u128>(),
    ]
}

/// The sizes devices use, and any multiple of 16 up to 4800 bytes (whole
/// and partial main-loop strides, every tail length of the backends).
fn data_unit_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => prop::sample::select(vec![512usize, 1024, 2048, 4096]),
        1 => (1usize..=300).prop_map(|blocks| blocks * 16),
    ]
}

/// A key, a data unit size, a first DUN and 1 to 64 units of data.
fn request() -> impl Strategy<Value = ([u8; 64], usize, u128, Vec<u8>)> {
    (
        prop::array::uniform32(any::<u8>()),
        prop::array::uniform32(any::<u8>()),
        data_unit_size(),
        dun(),
        1usize..=64,
        // One request in eight is large enough for the thread split.
        prop::bool::weighted(0.125),
        any::<u64>(),
    )
        .prop_map(|(k1, k2, dus, dun, units, large, seed)| {
            let mut key = [0u8; 64];
            key[..32].copy_from_slice(&k1);
            key[32..].copy_from_slice(&k2);
            let units = if large {
                PARALLEL_MIN_BYTES / dus + units
            } else {
                units
            };
            (key, dus, dun, filler(units * dus, seed))
        })
}

/// `len` bytes from a xorshift generator: random data without a
/// proptest strategy per byte (1 MiB requests would make shrinking slow).
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect()
}

fn backend() -> impl Strategy<Value = Backend> {
    prop::sample::select(Backend::ALL.to_vec())
}

/// `crypt_serial`, `crypt` (split when large) and `crypt_from` of `input`
/// all give `expected`.
fn check(
    xts: &XtsKey,
    direction: Direction,
    input: &[u8],
    expected: &[u8],
    dus: usize,
    dun: u128,
) -> Result<(), TestCaseError> {
    let mut serial = input.to_vec();
    xts.crypt_serial(direction, &mut serial, dus, dun);
    prop_assert_eq!(
        &serial,
        expected,
        "crypt_serial, dus {} dun {:#x}",
        dus,
        dun
    );
    let mut split = input.to_vec();
    xts.crypt(direction, &mut split, dus, dun);
    prop_assert_eq!(&split, expected, "crypt, dus {} dun {:#x}", dus, dun);
    let mut dest = vec![0u8; input.len()];
    xts.crypt_from(direction, input, &mut dest, dus, dun);
    prop_assert_eq!(&dest, expected, "crypt_from, dus {} dun {:#x}", dus, dun);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn encrypt_equals_oracle((key, dus, dun, plain) in request(), backend in backend()) {
        let xts = XtsKey::with_backend(&key, backend);
        let mut expected = plain.clone();
        oracle_crypt(&key, Direction::Encrypt, &mut expected, dus, dun);
        check(&xts, Direction::Encrypt, &plain, &expected, dus, dun)?;
    }

    #[test]
    fn decrypt_equals_oracle((key, dus, dun, cipher) in request(), backend in backend()) {
        let xts = XtsKey::with_backend(&key, backend);
        let mut expected = cipher.clone();
        oracle_crypt(&key, Direction::Decrypt, &mut expected, dus, dun);
        check(&xts, Direction::Decrypt, &cipher, &expected, dus, dun)?;
    }

    #[test]
    fn round_trip((key, dus, dun, plain) in request(), backend in backend()) {
        let xts = XtsKey::with_backend(&key, backend);
        let mut data = plain.clone();
        xts.crypt(Direction::Encrypt, &mut data, dus, dun);
        prop_assert_ne!(&data, &plain);
        xts.crypt(Direction::Decrypt, &mut data, dus, dun);
        prop_assert_eq!(&data, &plain, "dus {} dun {:#x}", dus, dun);
    }
}

/// The strategies above do reach the split path and the DUN carries; a
/// change to them that stopped doing so would make the properties weaker
/// without failing them.
#[test]
fn requests_reach_the_split_path_and_the_carries() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut split, mut carry64, mut wrap) = (false, false, false);
    for _ in 0..2000 {
        let (_, dus, dun, data) = request().new_tree(&mut runner).expect("tree").current();
        let last = dun.wrapping_add((data.len() / dus) as u128 - 1);
        split |= data.len() >= PARALLEL_MIN_BYTES;
        carry64 |= dun < 1 << 64 && last >= 1 << 64;
        wrap |= last < dun;
    }
    assert!(
        split && carry64 && wrap,
        "split {split} carry64 {carry64} wrap {wrap}"
    );
}
