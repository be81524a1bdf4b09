//! The device default key (`icelab serve --default-key`) and per-key usage
//! accounting (`--key-usage-limit`), driven by the native frontend against
//! the `xts-mode` oracle: requests without a crypto context are encrypted
//! with the default key (DUN = data unit index on the device), requests
//! with one use their keyslot only, WRITE_ZEROES reads back as zeros, and
//! the limit warns or refuses as configured.

mod ice;
mod support;

use ice::{Session, msg, oracle_encrypt, random_bytes, random_key};
use icelab_contract::device::{KeyUsage, StatsFile, TraceEvent, TraceLine, reject_kind};
use icelab_emulator::protocol::{DiscardSegment, KeyDesc, Status};
use icelab_frontend::blk::Request;
use support::read_at;

const MIB: u64 = 1 << 20;

/// A key file in its own directory (kept alive by the returned guard).
fn key_file(key: &[u8; 64]) -> (tempfile::TempDir, String) {
    let dir = support::temp_dir("default-key");
    let path = dir.path().join("default.key");
    std::fs::write(&path, key).expect("write the key file");
    let shown = path.display().to_string();
    (dir, shown)
}

fn stats_of(value: serde_json::Value) -> StatsFile {
    serde_json::from_value(value).expect("the stats file parses as the contract's StatsFile")
}

fn trace_of(session: &Session) -> Vec<TraceEvent> {
    std::fs::read_to_string(&session.trace)
        .expect("trace file")
        .lines()
        .map(|line| TraceLine::from_json(line).expect("a trace line").event)
        .collect()
}

fn usage_of(stats: &StatsFile, default_key: bool) -> Vec<&KeyUsage> {
    stats
        .stats
        .key_usage
        .iter()
        .filter(|u| u.default_key == default_key)
        .collect()
}

#[test]
fn plain_io_is_encrypted_with_the_default_key_and_crypto_io_with_its_slot_only() {
    let default_key = random_key();
    let (_keep, key_path) = key_file(&default_key);
    let mut session = Session::start(
        16 * MIB,
        &["--default-key", &key_path, "--block-size", "4096"],
    );

    // Plain OUT at byte 8192: data units 2 and 3 of the device.
    let plain = random_bytes(2 * 4096);
    session.expect(0, &Request::write(16, plain.clone()), Status::Ok);
    let on_disk = read_at(&session.image, 8192, plain.len());
    assert_eq!(on_disk, oracle_encrypt(&default_key, &plain, 4096, 2));
    let back = session.expect(0, &Request::read(16, plain.len() as u32), Status::Ok);
    assert_eq!(back.data, plain, "plain IN decrypts with the default key");

    // CRYPTO_OUT: the slot's key alone, not the default key on top.
    let file_key = random_key();
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(1, &file_key, 4096, 8)),
        Status::Ok,
    );
    let file_data = random_bytes(4096);
    session.expect(
        0,
        &Request::crypto_write(64, &msg(1, 77), file_data.clone()),
        Status::Ok,
    );
    assert_eq!(
        read_at(&session.image, 64 * 512, 4096),
        oracle_encrypt(&file_key, &file_data, 4096, 77)
    );

    // WRITE_ZEROES (with UNMAP too): encrypted zeros on the image, zeros
    // for the guest.
    for (sector, flags) in [(128u64, 0u32), (256, DiscardSegment::FLAG_UNMAP)] {
        let segment = DiscardSegment {
            sector,
            num_sectors: 16,
            flags,
        };
        session.expect(0, &Request::write_zeroes(&[segment]), Status::Ok);
        let raw = read_at(&session.image, sector * 512, 8192);
        assert_eq!(
            raw,
            oracle_encrypt(&default_key, &[0u8; 8192], 4096, u128::from(sector / 8)),
            "WRITE_ZEROES flags {flags:#x}"
        );
        let back = session.expect(0, &Request::read(sector, 8192), Status::Ok);
        assert!(back.data.iter().all(|&b| b == 0), "zeros read back");
    }

    // A plain write that is not whole 4096-byte data units is refused and
    // changes nothing.
    let before = session.image_bytes();
    session.expect(0, &Request::write(1, random_bytes(4096)), Status::IoErr);
    session.expect(0, &Request::write(8, random_bytes(512)), Status::IoErr);
    assert_eq!(
        session.image_bytes(),
        before,
        "refused writes left the image"
    );

    // The key is never printed, logged or traced: only its fingerprint.
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let logs = {
        let files = session.device.process().logs().clone();
        let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
        read(&files.stdout) + &read(&files.stderr)
    };
    let trace = std::fs::read_to_string(&session.trace).expect("trace file");
    let stats_value = session.finish();
    let outputs = [logs, trace, stats_value.to_string()];
    for half in [&default_key[..32], &default_key[32..], &default_key[..8]] {
        for output in &outputs {
            assert!(
                !output.contains(&hex(half)),
                "key bytes in the device's output"
            );
        }
    }
    assert!(outputs[0].contains("device default key"), "{}", outputs[0]);
    let stats = stats_of(stats_value);
    let counters = &stats.stats;
    assert_eq!(
        counters.plain_out.requests, 0,
        "no plain write went unencrypted"
    );
    assert_eq!(counters.plain_in.requests, 0);
    assert_eq!(counters.default_key_out.requests, 3);
    assert_eq!(counters.default_key_out.bytes, 8192 * 3);
    assert_eq!(counters.default_key_in.requests, 3);
    assert_eq!(counters.rejected.of_kind("misaligned"), 1);
    assert_eq!(counters.rejected.of_kind("partial-data-unit"), 1);
    let info = stats
        .device
        .default_key
        .clone()
        .expect("the stats name the default key");
    assert_eq!(info.data_unit_size, 4096);
    let default_usage = usage_of(&stats, true);
    assert_eq!(default_usage.len(), 1);
    assert_eq!(default_usage[0].fingerprint, info.fingerprint);
    assert_eq!(default_usage[0].encrypted.bytes, 3 * 8192);
    assert_eq!(default_usage[0].encrypted.data_units, 6);
    assert_eq!(default_usage[0].decrypted.bytes, 3 * 8192);
    let slot_usage = usage_of(&stats, false);
    assert_eq!(slot_usage.len(), 1);
    assert_eq!(slot_usage[0].encrypted.bytes, 4096);
    assert_eq!(slot_usage[0].decrypted.bytes, 0);
}

#[test]
fn a_default_key_file_of_the_wrong_size_stops_the_device_with_a_clear_error() {
    let dir = support::temp_dir("default-key-size");
    let path = dir.path().join("short.key");
    std::fs::write(&path, [1u8; 32]).expect("write");
    let image = dir.path().join("disk.img");
    let output = std::process::Command::new(support::icelab_bin())
        .arg("serve")
        .arg("--image")
        .arg(&image)
        .arg("--size")
        .arg("1M")
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--default-key")
        .arg(&path)
        .output()
        .expect("run icelab serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds 32 bytes"), "{stderr}");
    assert!(stderr.contains("64 raw bytes"), "{stderr}");
}

#[test]
fn the_usage_limit_refuses_past_it_across_reprogramming_and_counts_per_key() {
    let mut session = Session::start(
        16 * MIB,
        &[
            "--key-usage-limit",
            "8K",
            "--key-usage-limit-action",
            "refuse",
        ],
    );
    let key = random_key();
    let control = session.control();
    session.expect(
        control,
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &key, 4096, 8)),
        Status::Ok,
    );
    for n in 0..2u64 {
        let data = random_bytes(4096);
        session.expect(
            0,
            &Request::crypto_write(8 * n, &msg(0, u128::from(n)), data),
            Status::Ok,
        );
    }
    // The same key in another slot is the same key: still at its limit.
    session.expect(
        control,
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(5, &key, 4096, 8)),
        Status::Ok,
    );
    let before = session.image_bytes();
    for slot in [0u32, 5] {
        session.expect(
            0,
            &Request::crypto_write(64, &msg(slot, 8), random_bytes(4096)),
            Status::IoErr,
        );
    }
    assert_eq!(
        session.image_bytes(),
        before,
        "refused writes left the image"
    );
    // Reading is never limited; a new key starts from zero.
    session.expect(0, &Request::crypto_read(0, &msg(0, 0), 4096), Status::Ok);
    let other = random_key();
    session.expect(
        control,
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(1, &other, 4096, 8)),
        Status::Ok,
    );
    session.expect(
        0,
        &Request::crypto_write(64, &msg(1, 8), random_bytes(8192)),
        Status::Ok,
    );

    let limits: Vec<TraceEvent> = trace_of(&session)
        .into_iter()
        .filter(|e| matches!(e, TraceEvent::KeyUsageLimit(_)))
        .collect();
    assert_eq!(
        limits.len(),
        1,
        "one event for the key, at its first refusal"
    );
    let stats = stats_of(session.finish());
    let usage = usage_of(&stats, false);
    assert_eq!(usage.len(), 2);
    let (first, second) = (usage[0], usage[1]);
    assert_eq!(first.encrypted.bytes, 8192);
    assert_eq!(first.decrypted.bytes, 4096);
    assert_eq!(first.refused, 2);
    assert!(first.over_limit);
    assert_eq!(second.encrypted.bytes, 8192);
    assert!(!second.over_limit, "exactly at the limit is within it");
    assert_eq!(
        stats.stats.rejected.of_kind(reject_kind::KEY_USAGE_LIMIT),
        2
    );
    if let TraceEvent::KeyUsageLimit(event) = &limits[0] {
        assert_eq!(event.fingerprint, first.fingerprint);
        assert_eq!((event.bytes_encrypted, event.limit), (8192, 8192));
    }
}

#[test]
fn the_usage_limit_warns_once_and_serves() {
    let default_key = random_key();
    let (_keep, key_path) = key_file(&default_key);
    let mut session = Session::start(
        16 * MIB,
        &["--key-usage-limit", "4K", "--default-key", &key_path],
    );
    for n in 0..3u64 {
        session.expect(0, &Request::write(8 * n, random_bytes(4096)), Status::Ok);
    }
    let limits: Vec<TraceEvent> = trace_of(&session)
        .into_iter()
        .filter(|e| matches!(e, TraceEvent::KeyUsageLimit(_)))
        .collect();
    assert_eq!(limits.len(), 1, "warned once: {limits:?}");
    match &limits[0] {
        TraceEvent::KeyUsageLimit(event) => {
            assert!(event.default_key);
            assert_eq!(event.bytes_encrypted, 4096, "the second write crossed it");
        }
        other => panic!("not a key-usage-limit event: {other:?}"),
    }
    let stats = stats_of(session.finish());
    let usage = usage_of(&stats, true);
    assert_eq!(usage[0].encrypted.bytes, 3 * 4096);
    assert!(usage[0].over_limit);
    assert_eq!(usage[0].refused, 0);
    assert_eq!(stats.stats.rejected.total, 0);
}
