//! A seeded, model-checked fuzz harness against a real `icelab serve`.
//!
//! A random but seeded stream of batches: on every request queue at once,
//! reads, writes, flushes, GET_ID, discards, write-zeroes and CRYPTO_IN/OUT
//! with random slots and DUNs (at the top of the slot's DUN size, one past
//! it, across 2^64, with the high DUN words set), on evicted and
//! never-programmed slots; on the control queue, keyslot programs and
//! evictions (valid and not) racing with the crypto I/O. Each request is
//! laid out in guest memory in many ways: split at random points (data
//! units across descriptors), scattered, with zero-length descriptors,
//! through indirect tables (valid and malformed), with write-only headers,
//! descriptors outside guest memory, wrong directions, loops, dangling
//! links, no status byte. Between batches: avail rings corrupted (the
//! device must mark the queue broken and keep the others going; the
//! session is then restarted on the same image), device resets. Sessions
//! vary EVENT_IDX, one or two request queues, engine profile, keyslots,
//! DUN bytes, data unit sizes, read-only, no control queue, no engine.
//!
//! A model of the device (`fuzz/model.rs`: its own image copy and keyslot
//! table, ciphertext from the `xts-mode` oracle) predicts every request's
//! status, used length and guest memory afterwards, and the image change.
//! After every batch the whole image file is compared with the model's,
//! the device must be alive and answer on every queue; at the end of a
//! session it must exit 0 and its stats must count what the model counted.
//!
//! Environment: `ICELAB_FUZZ_SEED` (hex; default random, always printed),
//! `ICELAB_FUZZ_SECONDS` (default 20). A long run:
//!
//! ```sh
//! ICELAB_FUZZ_SECONDS=1800 cargo test --release --test fuzz -- --nocapture
//! ```

mod ice;
mod support;

#[path = "fuzz/mod.rs"]
mod harness;

use harness::run::Fuzzer;
use std::time::{Duration, Instant};

/// Default length of a run: keeps `scripts/test` well under a minute.
const DEFAULT_SECONDS: f64 = 20.0;

fn seed_from_env() -> u64 {
    match std::env::var("ICELAB_FUZZ_SEED") {
        Ok(text) => {
            let hex = text.trim().trim_start_matches("0x");
            u64::from_str_radix(hex, 16)
                .unwrap_or_else(|e| panic!("ICELAB_FUZZ_SEED={text:?} is not a hex u64: {e}"))
        }
        Err(_) => rand::random(),
    }
}

fn seconds_from_env() -> f64 {
    match std::env::var("ICELAB_FUZZ_SECONDS") {
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(seconds) if seconds >= 0.0 => seconds,
            _ => panic!("ICELAB_FUZZ_SECONDS={text:?} is not a number of seconds"),
        },
        Err(_) => DEFAULT_SECONDS,
    }
}

#[test]
fn fuzz_icelab_serve_against_the_model() {
    let seed = seed_from_env();
    let seconds = seconds_from_env();
    println!("fuzz: seed {seed:016x}, {seconds} s (replay with ICELAB_FUZZ_SEED={seed:016x})");
    let started = Instant::now();
    let mut fuzzer = Fuzzer::new(seed, Vec::new());
    fuzzer.run(started + Duration::from_secs_f64(seconds));
    let totals = &fuzzer.totals;
    let mut report = format!(
        "fuzz: seed {seed:016x}, {:.1} s, {} batches, {} requests, 0 failures",
        started.elapsed().as_secs_f64(),
        totals.batches,
        totals.requests
    );
    let list = |map: &std::collections::BTreeMap<&'static str, u64>| {
        map.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.push_str(&format!("\n  requests by kind: {}", list(&totals.sent)));
    report.push_str(&format!("\n  outcomes: {}", list(&totals.outcomes)));
    report.push_str(&format!("\n  chain shapes: {}", list(&totals.notes)));
    report.push_str(&format!(
        "\n  races: {} crypto requests raced a keyslot command on the control queue: {} used the slot's state before it, {} a later state",
        totals.racing, totals.race_older, totals.race_newer
    ));
    for (event, count) in &totals.events {
        report.push_str(&format!("\n  {event}: {count}"));
    }
    println!("{report}");
    assert!(totals.batches > 0 || seconds == 0.0, "no batch ran");
}

/// The whole harness fails on a device that is wrong in a way its own
/// reads cannot show: `--fault dun-off-by-one` encrypts and decrypts with
/// the next DUN, so only the oracle tells.
#[test]
fn the_harness_catches_an_engine_that_uses_the_wrong_dun() {
    let seed = seed_from_env();
    println!("fault run: seed {seed:016x}");
    let mut fuzzer = Fuzzer::new(seed, vec!["--fault".into(), "dun-off-by-one".into()]);
    let message = fuzzer
        .try_run(Instant::now() + Duration::from_secs(30))
        .expect_err("30 s of fuzzing a device with a wrong DUN found nothing");
    assert!(
        message.contains("FUZZ FAILURE")
            && (message.contains("differs from the model")
                || message.contains("no allowed outcome matches")
                || message.contains("the image shows none of them")),
        "the fault run failed for another reason:\n{message}"
    );
}

/// The checker must catch wrong answers: each case feeds it one.
mod the_model_catches_wrong_answers {
    use crate::harness::generate::{crypto_msg_plain, fixed_body, lay_plain};
    use crate::harness::model::{
        Candidate, Caps, Dun, Effect, IOERR, Key, OK, Observed, Prediction, Role, Shape,
        T_CRYPTO_IN, T_CRYPTO_OUT, check, compare_image, predict, xts,
    };
    use crate::harness::wire::{Addr, Wire};

    const CAPACITY: u64 = 64 * 1024;

    fn shape() -> Shape {
        Shape {
            caps: Some(Caps {
                slots: 4,
                max_dun_bytes: 8,
                dus_mask: 0x1e00,
            }),
            crypto_negotiated: true,
            read_only: false,
            capacity: CAPACITY,
            max_data_bytes: 1 << 20,
            serial: [0; 20],
            queue_size: 64,
            mem_size: 64 << 20,
        }
    }

    fn key(byte: u8, id: u64) -> Key {
        Key {
            key: [byte; 64],
            dus: 4096,
            dun_bytes: 8,
            id,
        }
    }

    fn predict_with(wire: &Wire, image: &[u8], states: Vec<Candidate>) -> Prediction {
        predict(&shape(), Role::Request, wire, image, &move |_| {
            states.clone()
        })
    }

    /// What a correct device leaves in guest memory for outcome `index`.
    fn correct(wire: &Wire, prediction: &Prediction, index: usize) -> Observed {
        let alt = &prediction.alts[index];
        Observed {
            used_len: alt.used_len,
            arena: alt.expected_arena(wire, &prediction.walk),
        }
    }

    fn status_at(prediction: &Prediction) -> usize {
        prediction.walk.status_at().expect("a status byte") as usize
    }

    const DUN: Dun = [7, 0, 0, 0];

    fn crypto_out(plain: &[u8]) -> Wire {
        lay_plain(&fixed_body(
            T_CRYPTO_OUT,
            8,
            &[&crypto_msg_plain(1, &DUN), plain],
            0,
        ))
    }

    #[test]
    fn a_wrong_status_or_used_length_is_flagged() {
        let image = vec![0u8; CAPACITY as usize];
        let plain = vec![0x42u8; 8192];
        let wire = crypto_out(&plain);
        let prediction = predict_with(&wire, &image, vec![(0, Some(key(1, 1)))]);
        assert_eq!(prediction.alts.len(), 1);
        let good = correct(&wire, &prediction, 0);
        assert_eq!(good.arena[status_at(&prediction)], OK);
        assert_eq!(check(&wire, &prediction, &good), Ok(vec![0]));

        let mut wrong_status = good.clone();
        wrong_status.arena[status_at(&prediction)] = IOERR;
        assert!(check(&wire, &prediction, &wrong_status).is_err());

        let mut wrong_len = good.clone();
        wrong_len.used_len = 8193;
        assert!(check(&wire, &prediction, &wrong_len).is_err());

        let mut scribbled = good;
        scribbled.arena[20] ^= 1;
        let message = check(&wire, &prediction, &scribbled).expect_err("a write into the header");
        assert!(message.contains("must not write"), "{message}");
    }

    #[test]
    fn a_wrong_ciphertext_on_the_image_is_flagged() {
        let image = vec![0u8; CAPACITY as usize];
        let plain: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let wire = crypto_out(&plain);
        let k = key(3, 1);
        let prediction = predict_with(&wire, &image, vec![(0, Some(k.clone()))]);
        let mut model = image.clone();
        for effect in &prediction.alts[0].effects {
            effect.apply(&mut model);
        }
        let mut disk = image.clone();
        disk[4096..4096 + 8192].copy_from_slice(&xts(&k, &plain, &DUN, true));
        assert_eq!(
            compare_image(&model, &disk),
            None,
            "the oracle's ciphertext passes"
        );
        // An engine off by one DUN, or one that writes plaintext.
        let mut off_by_one = image.clone();
        off_by_one[4096..4096 + 8192].copy_from_slice(&xts(&k, &plain, &[8, 0, 0, 0], true));
        assert!(compare_image(&model, &off_by_one).is_some());
        let mut plaintext = image;
        plaintext[4096..4096 + 8192].copy_from_slice(&plain);
        assert!(compare_image(&model, &plaintext).is_some());
    }

    #[test]
    fn a_wrong_plaintext_from_crypto_in_is_flagged() {
        let k = key(5, 1);
        let plain = vec![0x33u8; 4096];
        let mut image = vec![0u8; CAPACITY as usize];
        image[4096..8192].copy_from_slice(&xts(&k, &plain, &DUN, true));
        let wire = lay_plain(&fixed_body(
            T_CRYPTO_IN,
            8,
            &[&crypto_msg_plain(1, &DUN)],
            4096,
        ));
        let prediction = predict_with(&wire, &image, vec![(0, Some(k))]);
        let good = correct(&wire, &prediction, 0);
        assert_eq!(good.used_len, 4097);
        assert_eq!(check(&wire, &prediction, &good), Ok(vec![0]));
        let data = prediction.walk.writable[0].0 as usize;
        assert_eq!(good.arena[data..data + 4096], plain[..]);
        let mut garbage = good.clone();
        let other = xts(&key(6, 2), &image[4096..8192], &DUN, false);
        garbage.arena[data..data + 4096].copy_from_slice(&other);
        assert!(check(&wire, &prediction, &garbage).is_err());
    }

    #[test]
    fn a_race_accepts_the_old_key_the_new_key_or_an_empty_slot_but_nothing_else() {
        let image = vec![0u8; CAPACITY as usize];
        let plain = vec![0x77u8; 4096];
        let wire = crypto_out(&plain);
        let states = vec![(0, Some(key(1, 1))), (1, Some(key(2, 2))), (2, None)];
        let prediction = predict_with(&wire, &image, states);
        assert_eq!(prediction.alts.len(), 3);
        let new_key = correct(&wire, &prediction, 1);
        assert_eq!(
            check(&wire, &prediction, &new_key),
            Ok(vec![0, 1]),
            "OK: both keys fit"
        );
        let empty = correct(&wire, &prediction, 2);
        assert_eq!(check(&wire, &prediction, &empty), Ok(vec![2]));
        // Only the image tells old from new.
        let mut disk = image.clone();
        Effect::apply(&prediction.alts[1].effects[0], &mut disk);
        assert!(prediction.alts[1].effects[0].shown_by(&disk));
        assert!(!prediction.alts[0].effects[0].shown_by(&disk));
        // UNSUPP fits no state.
        let mut unsupp = empty;
        unsupp.arena[status_at(&prediction)] = 2;
        assert!(check(&wire, &prediction, &unsupp).is_err());
    }

    #[test]
    fn refusals_are_predicted_and_a_refused_request_that_writes_is_flagged() {
        let image = vec![0u8; CAPACITY as usize];
        // High DUN words: beyond any slot's 8 DUN bytes.
        let wire = lay_plain(&fixed_body(
            T_CRYPTO_IN,
            8,
            &[&crypto_msg_plain(1, &[0, 0, 1, 0])],
            4096,
        ));
        let prediction = predict_with(&wire, &image, vec![(0, Some(key(1, 1)))]);
        assert_eq!(
            prediction.alts[0].status,
            Some(IOERR),
            "{:?}",
            prediction.alts[0].why
        );
        let refused = correct(&wire, &prediction, 0);
        assert_eq!(refused.used_len, 1);
        let mut leaked = refused;
        let data = prediction.walk.writable[0].0 as usize;
        leaked.arena[data] ^= 0xff;
        assert!(
            check(&wire, &prediction, &leaked).is_err(),
            "a refused CRYPTO_IN returns no data"
        );

        // A descriptor outside guest memory: IOERR, nothing read.
        let mut wire = crypto_out(&[1u8; 4096]);
        wire.ring[2].addr = Addr::Abs(1 << 40);
        let prediction = predict_with(&wire, &image, vec![(0, Some(key(1, 1)))]);
        assert_eq!(prediction.alts.len(), 1);
        assert_eq!(prediction.alts[0].status, Some(IOERR));
        assert!(prediction.alts[0].effects.is_empty());

        // No writable descriptor: no status, used length 0.
        let mut wire = crypto_out(&[1u8; 4096]);
        wire.ring.pop();
        wire.ring.last_mut().expect("descriptors").next = crate::harness::wire::Next::End;
        let prediction = predict_with(&wire, &image, vec![(0, Some(key(1, 1)))]);
        assert_eq!(prediction.alts[0].status, None);
        assert_eq!(prediction.alts[0].used_len, 0);
        let mut wrote = correct(&wire, &prediction, 0);
        wrote.used_len = 1;
        assert!(check(&wire, &prediction, &wrote).is_err());
    }
}
