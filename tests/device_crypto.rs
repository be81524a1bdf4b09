//! `icelab serve` driven by the native vhost-user frontend: the engine's
//! ciphertext on the image equals the `xts-mode` oracle's, plain I/O is
//! untouched, keyslots behave as docs/PROTOCOL.md says, across queues.

mod ice;
mod support;

use ice::{Session, msg, oracle_decrypt, oracle_encrypt, random_bytes, random_key};
use icelab_emulator::protocol::{
    CryptoMode, KeyDesc, Status, VIRTIO_BLK_F_CTRL_VQ, VIRTIO_BLK_F_INLINE_ENCRYPTION,
};
use icelab_frontend::blk::Request;
use support::{read_at, stat_u64};

const MIB: u64 = 1 << 20;

#[test]
fn crypto_out_puts_oracle_ciphertext_on_the_image_and_crypto_in_returns_plaintext() {
    let mut session = Session::start(16 * MIB, &[]);
    let key = random_key();
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(3, &key, 4096, 8)),
        Status::Ok,
    );
    let plain = random_bytes(3 * 4096);
    let dun = 1000;
    let sector = 64;
    session.expect(
        0,
        &Request::crypto_write(sector, &msg(3, dun), plain.clone()),
        Status::Ok,
    );

    let on_disk = read_at(&session.image, sector * 512, plain.len());
    assert_eq!(
        on_disk,
        oracle_encrypt(&key, &plain, 4096, dun),
        "image holds the oracle's ciphertext"
    );
    assert_ne!(on_disk, plain);

    let back = session.expect(
        0,
        &Request::crypto_read(sector, &msg(3, dun), plain.len() as u32),
        Status::Ok,
    );
    assert_eq!(back.data, plain, "CRYPTO_IN decrypts");
    assert_eq!(back.used_len as usize, plain.len() + 1);

    let raw = session.expect(0, &Request::read(sector, plain.len() as u32), Status::Ok);
    assert_eq!(
        raw.data, on_disk,
        "plain IN returns the ciphertext untouched"
    );

    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.keyslots.programmed"), 1);
    assert_eq!(stat_u64(&stats, "stats.crypto_out.requests"), 1);
    assert_eq!(
        stat_u64(&stats, "stats.crypto_out.bytes"),
        plain.len() as u64
    );
    assert_eq!(stat_u64(&stats, "stats.crypto_in.requests"), 1);
    assert_eq!(stat_u64(&stats, "stats.rejected.total"), 0);
}

#[test]
fn every_data_unit_size_and_a_dun_carry_across_64_bits_match_the_oracle() {
    let mut session = Session::start(16 * MIB, &["--max-dun-bytes", "16"]);
    for (slot, data_unit_size) in [512u32, 1024, 2048, 4096].into_iter().enumerate() {
        let slot = slot as u32;
        let key = random_key();
        session.expect(
            session.control(),
            &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(slot, &key, data_unit_size, 16)),
            Status::Ok,
        );
        let plain = random_bytes(4 * data_unit_size as usize);
        // The DUN crosses 2^64 inside the request.
        let dun = u64::MAX as u128 - 1;
        let sector = 2048 * u64::from(slot + 1);
        let write =
            Request::crypto_write(sector, &msg(slot, dun), plain.clone()).with_segment_size(1536);
        session.expect(0, &write, Status::Ok);
        let on_disk = read_at(&session.image, sector * 512, plain.len());
        assert_eq!(
            on_disk,
            oracle_encrypt(&key, &plain, data_unit_size as usize, dun),
            "data unit {data_unit_size}"
        );
        let read = Request::crypto_read(sector, &msg(slot, dun), plain.len() as u32)
            .with_segment_size(1000);
        assert_eq!(session.expect(0, &read, Status::Ok).data, plain);
    }
    session.finish();
}

#[test]
fn plain_io_flush_discard_and_write_zeroes_keep_their_standard_meaning() {
    let mut session = Session::start(8 * MIB, &["--serial", "icelab-test"]);
    let data = random_bytes(64 * 1024);
    session.expect(0, &Request::write(100, data.clone()), Status::Ok);
    assert_eq!(
        read_at(&session.image, 100 * 512, data.len()),
        data,
        "OUT is not encrypted"
    );
    assert_eq!(
        session
            .expect(0, &Request::read(100, data.len() as u32), Status::Ok)
            .data,
        data
    );
    session.expect(0, &Request::flush(), Status::Ok);
    assert_eq!(
        session
            .expect(0, &Request::get_id(), Status::Ok)
            .device_id(),
        "icelab-test"
    );

    use icelab_emulator::protocol::DiscardSegment;
    let zeroes = DiscardSegment {
        sector: 100,
        num_sectors: 8,
        flags: 0,
    };
    session.expect(0, &Request::write_zeroes(&[zeroes]), Status::Ok);
    let hole = DiscardSegment {
        sector: 108,
        num_sectors: 8,
        flags: 0,
    };
    session.expect(0, &Request::discard(&[hole]), Status::Ok);
    let after = read_at(&session.image, 100 * 512, data.len());
    assert!(
        after[..8192].iter().all(|b| *b == 0),
        "discarded and zeroed sectors read as zeroes"
    );
    assert_eq!(after[8192..], data[8192..], "the rest is untouched");
    session.finish();
}

#[test]
fn evict_empties_the_slot_and_reprogramming_replaces_the_key() {
    let mut session = Session::start(8 * MIB, &[]);
    let (first, second) = (random_key(), random_key());
    let plain = random_bytes(8192);
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &first, 4096, 8)),
        Status::Ok,
    );
    session.expect(
        0,
        &Request::crypto_write(0, &msg(0, 7), plain.clone()),
        Status::Ok,
    );

    session.expect(
        session.control(),
        &Request::keyslot_evict(&KeyDesc::raw_aes_256_xts(0, &first, 4096, 8)),
        Status::Ok,
    );
    let refused = session.expect(0, &Request::crypto_read(0, &msg(0, 7), 8192), Status::IoErr);
    assert!(
        refused.data.iter().all(|b| *b == 0),
        "a refused CRYPTO_IN returns no data"
    );

    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &second, 4096, 8)),
        Status::Ok,
    );
    let wrong = session.expect(0, &Request::crypto_read(0, &msg(0, 7), 8192), Status::Ok);
    let ciphertext = oracle_encrypt(&first, &plain, 4096, 7);
    assert_eq!(
        wrong.data,
        oracle_decrypt(&second, &ciphertext, 4096, 7),
        "the slot now holds the second key"
    );
    assert_ne!(wrong.data, plain);

    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &first, 4096, 8)),
        Status::Ok,
    );
    assert_eq!(
        session
            .expect(0, &Request::crypto_read(0, &msg(0, 7), 8192), Status::Ok)
            .data,
        plain
    );

    let trace = std::fs::read_to_string(&session.trace).expect("trace file");
    let events = session.trace_events();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["program", "evict", "reject", "program", "program"]);
    assert_eq!(
        events[0]["fingerprint"], events[1]["fingerprint"],
        "evict names the key it evicted"
    );
    assert_eq!(
        events[0]["fingerprint"], events[4]["fingerprint"],
        "the same key has the same fingerprint"
    );
    assert_ne!(events[0]["fingerprint"], events[3]["fingerprint"]);
    assert_eq!(events[4]["replaced"], events[3]["fingerprint"]);
    for key in [&first, &second] {
        let hex: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !trace.contains(&hex),
            "the trace must not contain key bytes"
        );
    }
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.keyslots.evicted"), 1);
    assert_eq!(
        stat_u64(&stats, "stats.keyslots.evicted_by_reset"),
        1,
        "disconnect drops the last key"
    );
    assert_eq!(stat_u64(&stats, "stats.rejected.by_kind.slot-empty"), 1);
}

#[test]
fn a_slot_programmed_on_the_control_queue_is_used_on_every_request_queue() {
    let mut session = Session::start(8 * MIB, &["--queues", "2"]);
    assert_eq!(
        session.queues.len(),
        3,
        "two request queues and the control queue"
    );
    assert_eq!(session.control(), 2);
    let key = random_key();
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(5, &key, 4096, 8)),
        Status::Ok,
    );
    let plain = random_bytes(4096);
    session.expect(
        1,
        &Request::crypto_write(8, &msg(5, 42), plain.clone()),
        Status::Ok,
    );
    assert_eq!(
        read_at(&session.image, 8 * 512, 4096),
        oracle_encrypt(&key, &plain, 4096, 42)
    );
    session.expect(
        session.control(),
        &Request::keyslot_evict_slot(5),
        Status::Ok,
    );
    session.expect(
        0,
        &Request::crypto_read(8, &msg(5, 42), 4096),
        Status::IoErr,
    );
    session.finish();
}

#[test]
fn concurrent_crypto_io_on_all_queues_lands_where_the_oracle_says() {
    const QUEUES: usize = 4;
    const REQUESTS: usize = 64;
    const DEPTH: usize = 16;
    let mut session = Session::start(64 * MIB, &["--queues", "4"]);
    let keys: Vec<[u8; 64]> = (0..QUEUES).map(|_| random_key()).collect();
    for (slot, key) in keys.iter().enumerate() {
        session.expect(
            session.control(),
            &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(slot as u32, key, 4096, 8)),
            Status::Ok,
        );
    }
    let mut queues = std::mem::take(&mut session.queues);
    // The request queues; the control queue (last) stays alive beside them.
    let control = queues.split_off(QUEUES);
    let written: Vec<Vec<(u64, u128, Vec<u8>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(index, mut queue)| {
                scope.spawn(move || {
                    let mut done = Vec::new();
                    let mut pending = std::collections::VecDeque::new();
                    for n in 0..REQUESTS {
                        let sector = ((index * REQUESTS + n) * 16) as u64;
                        let dun = (index * 1_000_000 + n * 2) as u128;
                        let data = random_bytes(8192);
                        let request =
                            Request::crypto_write(sector, &msg(index as u32, dun), data.clone());
                        pending.push_back(queue.submit(&request).expect("submit"));
                        done.push((sector, dun, data));
                        if pending.len() == DEPTH {
                            let tag = pending.pop_front().expect("pending");
                            let completion = queue
                                .wait_for(tag, ice::REQUEST_TIMEOUT)
                                .expect("completion");
                            assert_eq!(completion.status(), Some(Status::Ok));
                        }
                    }
                    for tag in pending {
                        let completion = queue
                            .wait_for(tag, ice::REQUEST_TIMEOUT)
                            .expect("completion");
                        assert_eq!(completion.status(), Some(Status::Ok));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let image = session.image_bytes();
    for (slot, requests) in written.iter().enumerate() {
        for (sector, dun, data) in requests {
            let at = (*sector * 512) as usize;
            assert_eq!(
                image[at..at + data.len()],
                oracle_encrypt(&keys[slot], data, 4096, *dun)[..],
                "queue {slot} sector {sector}"
            );
        }
    }
    drop(control);
    let stats = session.finish();
    assert_eq!(
        stat_u64(&stats, "stats.crypto_out.requests"),
        (QUEUES * REQUESTS) as u64
    );
    let uses = stats["stats"]["keyslots"]["uses_per_slot"]
        .as_array()
        .expect("uses")
        .clone();
    assert_eq!(uses.len(), 32);
    for (slot, count) in uses.iter().enumerate().take(QUEUES) {
        assert_eq!(count.as_u64(), Some(REQUESTS as u64), "slot {slot} uses");
    }
}

#[test]
fn config_and_crypto_modes_follow_the_profile() {
    // key_types: ufs offers raw (bit 0) and hardware-wrapped (bit 1) keys,
    // emmc raw keys only.
    for (profile, dun_bytes, key_types) in [("ufs", 8u8, 3u8), ("emmc", 4, 1)] {
        let mut session = Session::start(4 * MIB, &["--profile", profile, "--queues", "2"]);
        assert!(session.frontend.has_feature(VIRTIO_BLK_F_INLINE_ENCRYPTION));
        let config = session.frontend.get_config(0, 104).expect("config");
        assert_eq!(
            u64::from_le_bytes(config[0..8].try_into().unwrap()),
            4 * MIB / 512,
            "capacity"
        );
        assert_eq!(
            u16::from_le_bytes([config[34], config[35]]),
            2,
            "num_queues"
        );
        assert_eq!(
            u16::from_le_bytes([config[96], config[97]]),
            32,
            "max_slots"
        );
        assert_eq!(config[98], dun_bytes, "max_dun_bytes");
        assert_eq!(config[99], key_types, "key_types of {profile}");
        let modes = session
            .expect(session.control(), &Request::get_crypto_modes(), Status::Ok)
            .crypto_modes();
        let expected: [u32; CryptoMode::TABLE_LEN] = [0, 0x1e00];
        assert_eq!(modes, Some(expected));
        session.finish();
    }
    let mut session = Session::start(4 * MIB, &["--slots", "2", "--data-unit-sizes", "512,4096"]);
    let config = session.frontend.get_config(96, 4).expect("config");
    assert_eq!(u16::from_le_bytes([config[0], config[1]]), 2);
    let modes = session
        .expect(session.control(), &Request::get_crypto_modes(), Status::Ok)
        .crypto_modes();
    assert_eq!(modes, Some([0, 512 | 4096]));
    session.finish();
}

#[test]
fn without_inline_encryption_the_bit_is_absent_and_crypto_requests_are_unsupported() {
    let mut session = Session::start(4 * MIB, &["--no-inline-encryption"]);
    assert!(!session.frontend.has_feature(VIRTIO_BLK_F_INLINE_ENCRYPTION));
    assert!(!session.frontend.has_feature(VIRTIO_BLK_F_CTRL_VQ));
    assert_eq!(
        session.queues.len(),
        1,
        "no control queue without the engine"
    );
    let before = session.image_bytes();
    let key = random_key();
    session.expect(
        0,
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &key, 4096, 8)),
        Status::Unsupp,
    );
    session.expect(
        0,
        &Request::crypto_write(0, &msg(0, 0), random_bytes(4096)),
        Status::Unsupp,
    );
    session.expect(
        0,
        &Request::crypto_read(0, &msg(0, 0), 4096),
        Status::Unsupp,
    );
    session.expect(0, &Request::get_crypto_modes(), Status::Unsupp);
    assert_eq!(session.image_bytes(), before);
    session.expect(0, &Request::write(0, random_bytes(4096)), Status::Ok);
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.crypto_out.requests"), 0);
    assert_eq!(
        stat_u64(&stats, "stats.rejected.by_kind.unsupported-request"),
        4
    );
}

#[test]
fn injected_faults_round_trip_for_the_guest_but_not_on_the_image() {
    for fault in ["dun-off-by-one", "swap-key-halves", "plaintext"] {
        let mut session = Session::start(4 * MIB, &["--fault", fault]);
        let key = random_key();
        session.expect(
            session.control(),
            &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &key, 4096, 8)),
            Status::Ok,
        );
        let plain = random_bytes(8192);
        session.expect(
            0,
            &Request::crypto_write(8, &msg(0, 3), plain.clone()),
            Status::Ok,
        );
        let back = session.expect(0, &Request::crypto_read(8, &msg(0, 3), 8192), Status::Ok);
        assert_eq!(back.data, plain, "{fault}: the guest cannot notice");
        let on_disk = read_at(&session.image, 8 * 512, 8192);
        assert_ne!(
            on_disk,
            oracle_encrypt(&key, &plain, 4096, 3),
            "{fault}: the image must differ from the oracle"
        );
        assert_eq!(
            on_disk == plain,
            fault == "plaintext",
            "{fault}: plaintext on disk"
        );
        let stats = session.finish();
        assert_eq!(stats["device"]["fault"], fault);
    }
}
