//! Hardware-wrapped keys (docs/PROTOCOL.md, "Hardware-wrapped keys"),
//! through the native frontend against a real `icelab serve`: a known raw
//! key imported, prepared and programmed puts AES-256-XTS under the hardware
//! KDF's inline encryption key on the image (checked with the `xts-mode`
//! oracle against the KDF's known answer, not the emulator's KDF), the
//! software secret is the KDF's known answer, generated keys differ, every
//! bad blob is refused with IOERR, its own kind, a log line and the image
//! untouched, long-term keys survive a restart with the same
//! `--key-manager-state` (created 0600) and no key byte reaches the logs,
//! trace or stats.
//!
//! The known answers are those of `emulator/tests/hw_kdf_vectors.py`
//! (Python `cryptography`, from xfstests' fscrypt-crypt-util.c), for the
//! raw key 00 01 .. 1f.

mod ice;
mod support;

use ice::{Session, msg, oracle_encrypt, random_bytes};
use icelab_contract::device::{StatsFile, TraceEvent, TraceLine, reject_kind};
use icelab_emulator::protocol::{
    KEY_BLOB_SIZE, KeyDesc, KeyType, SW_SECRET_SIZE, Status, VHOST_USER_F_PROTOCOL_FEATURES,
    feature,
};
use icelab_frontend::blk::{Request, key_blob};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::read_at;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;

const MIB: u64 = 1 << 20;

/// The raw (hardware) key 00 01 .. 1f.
const RAW_KEY: [u8; 32] = {
    let mut key = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        key[i] = i as u8;
        i += 1;
    }
    key
};
/// Its inline encryption key (hw_kdf_vectors.py).
const INLINE_KEY: &str = "16317c8fe3133e7aef46bdede2b39f09a81e9fbe0c095f906c5c1341da6eaf17\
                          f151e2982f4f14a5495f78761066cafa5ebb995997d3fb5c8678bb394b6b57dc";
/// Its software secret (hw_kdf_vectors.py).
const SW_SECRET: &str = "48b69fb100fda3d600b75d7f25e2b8f1cf95e5de1bd624b9273d537519270c65";

/// Size of icelab's wrapped keys (docs/PROTOCOL.md).
const WRAPPED_KEY_SIZE: u32 = 76;

type Blob = [u8; KEY_BLOB_SIZE];

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn inline_key() -> [u8; 64] {
    unhex(INLINE_KEY).try_into().expect("64 bytes")
}

fn blob_of(key: &[u8]) -> Blob {
    *key_blob(key).expect("fits a key_blob")
}

/// Runs a request whose answer is a key_blob and returns it (OK expected).
fn blob_answer(session: &mut Session, request: &Request, what: &str) -> Blob {
    let control = session.control();
    let completion = session.expect(control, request, Status::Ok);
    assert_eq!(
        completion.used_len,
        KEY_BLOB_SIZE as u32 + 1,
        "{what}: used length"
    );
    let blob: Blob = completion.data[..KEY_BLOB_SIZE]
        .try_into()
        .expect("a key_blob");
    assert_eq!(
        u32::from_le_bytes(blob[..4].try_into().unwrap()),
        WRAPPED_KEY_SIZE,
        "{what}: key_size of the wrapped key"
    );
    assert!(
        blob[4 + WRAPPED_KEY_SIZE as usize..]
            .iter()
            .all(|&b| b == 0),
        "{what}: the key_blob is zero past key_size"
    );
    blob
}

fn import(session: &mut Session, raw: &[u8]) -> Blob {
    blob_answer(session, &Request::import_key(&blob_of(raw)), "IMPORT_KEY")
}

fn generate(session: &mut Session) -> Blob {
    blob_answer(session, &Request::generate_key(), "GENERATE_KEY")
}

fn prepare(session: &mut Session, long_term: &Blob) -> Blob {
    blob_answer(session, &Request::prepare_key(long_term), "PREPARE_KEY")
}

fn derive(session: &mut Session, ephemeral: &Blob) -> [u8; SW_SECRET_SIZE] {
    let control = session.control();
    let completion = session.expect(control, &Request::derive_sw_secret(ephemeral), Status::Ok);
    assert_eq!(completion.used_len, SW_SECRET_SIZE as u32 + 1);
    completion.data[..SW_SECRET_SIZE]
        .try_into()
        .expect("32 bytes")
}

/// KEYSLOT_PROGRAM of the hardware-wrapped key in `blob` (4096-byte data
/// units, 8 DUN bytes).
fn wrapped_desc(slot: u32, blob: &Blob) -> KeyDesc {
    let mut desc = KeyDesc::raw_aes_256_xts(slot, &[0; 64], 4096, 8);
    desc.key_type = KeyType::HardwareWrapped.to_wire();
    desc.key_size = u32::from_le_bytes(blob[..4].try_into().unwrap());
    desc.bytes.copy_from_slice(&blob[4..]);
    desc
}

/// A device reset as QEMU starts the device again: SET_FEATURES on the
/// same connection (then the rings enabled again).
fn reset(session: &mut Session) {
    let frontend = &mut session.frontend;
    let acked = frontend.acked_features();
    frontend
        .vhost_request("SET_FEATURES", |vhost| vhost.set_features(acked))
        .expect("SET_FEATURES again");
    if acked & feature(VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
        let queues = usize::from(frontend.num_queues()) + 1;
        for index in 0..queues {
            frontend
                .vhost_request("SET_VRING_ENABLE", |vhost| {
                    vhost.set_vring_enable(index, true)
                })
                .expect("SET_VRING_ENABLE");
        }
    }
}

/// The device's stdout and stderr so far.
fn device_log(session: &mut Session) -> String {
    let files = session.device.process().logs().clone();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    read(&files.stdout) + &read(&files.stderr)
}

fn trace_of(session: &Session) -> Vec<TraceEvent> {
    std::fs::read_to_string(&session.trace)
        .expect("trace file")
        .lines()
        .map(|line| TraceLine::from_json(line).expect("a trace line").event)
        .collect()
}

fn stats_of(value: serde_json::Value) -> StatsFile {
    serde_json::from_value(value).expect("the stats file parses as the contract's StatsFile")
}

/// A directory for a state file, and the file's path in it.
fn state_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("key-manager.state")
}

fn state_args(path: &Path) -> [String; 2] {
    ["--key-manager-state".to_owned(), path.display().to_string()]
}

fn start(size: u64, args: &[String]) -> Session {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Session::start(size, &args)
}

#[test]
fn an_imported_key_encrypts_under_the_kdfs_inline_key_and_derives_its_software_secret() {
    let state_dir = support::temp_dir("key-manager-state");
    let state = state_path(&state_dir);
    let mut session = start(16 * MIB, &state_args(&state));

    let metadata = std::fs::metadata(&state).expect("the state file was created");
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o600);
    assert_eq!(metadata.len(), 48);
    let device_secret = std::fs::read(&state).expect("state")[16..].to_vec();

    let long_term = import(&mut session, &RAW_KEY);
    assert!(
        !long_term.windows(16).any(|w| w == &RAW_KEY[..16]),
        "the long-term blob does not carry the key in the clear"
    );
    let ephemeral = prepare(&mut session, &long_term);
    assert_ne!(ephemeral, long_term);
    let secret = derive(&mut session, &ephemeral);
    assert_eq!(hex(&secret), SW_SECRET, "DERIVE_SW_SECRET is the KDF's");
    assert_eq!(derive(&mut session, &ephemeral), secret);

    // Programmed: CRYPTO_OUT puts AES-256-XTS under the inline key on
    // the image, CRYPTO_IN gives the plaintext back.
    let control = session.control();
    session.expect(
        control,
        &Request::keyslot_program(&wrapped_desc(3, &ephemeral)),
        Status::Ok,
    );
    let plain = random_bytes(8192);
    session.expect(
        0,
        &Request::crypto_write(64, &msg(3, 1000), plain.clone()),
        Status::Ok,
    );
    assert_eq!(
        read_at(&session.image, 64 * 512, plain.len()),
        oracle_encrypt(&inline_key(), &plain, 4096, 1000),
        "the image holds AES-256-XTS under the KDF's inline encryption key"
    );
    let back = session.expect(
        0,
        &Request::crypto_read(64, &msg(3, 1000), 8192),
        Status::Ok,
    );
    assert_eq!(back.data, plain);

    // The same raw key imported again: another blob, the same key.
    let again = import(&mut session, &RAW_KEY);
    assert_ne!(again, long_term, "every wrap has its own nonce");
    let again = prepare(&mut session, &again);
    assert_eq!(derive(&mut session, &again), secret);

    // Generated keys differ from each other and from the imported one.
    let first = generate(&mut session);
    let second = generate(&mut session);
    assert_ne!(first, second);
    let first_secret = {
        let ephemeral = prepare(&mut session, &first);
        derive(&mut session, &ephemeral)
    };
    let second_secret = {
        let ephemeral = prepare(&mut session, &second);
        derive(&mut session, &ephemeral)
    };
    assert_ne!(first_secret, second_secret);
    assert_ne!(first_secret, secret);

    // No key byte in the device's output: the raw key, the inline key,
    // the software secret, the device secret.
    let log = device_log(&mut session);
    let trace = std::fs::read_to_string(&session.trace).expect("trace");
    let programs: Vec<TraceEvent> = trace_of(&session)
        .into_iter()
        .filter(|e| matches!(e, TraceEvent::Program(p) if p.slot == 3))
        .collect();
    assert_eq!(programs.len(), 1, "the program is traced by fingerprint");
    let stats_value = session.finish();
    let inline = inline_key();
    let needles = [
        hex(&RAW_KEY[..16]),
        hex(&RAW_KEY[16..]),
        hex(&inline[..16]),
        hex(&inline[32..48]),
        hex(&secret[..16]),
        hex(&device_secret[..16]),
        hex(&device_secret[16..]),
    ];
    for output in [&log, &trace, &stats_value.to_string()] {
        for needle in &needles {
            assert!(
                !output.contains(needle.as_str()),
                "key bytes in the device's output"
            );
        }
    }
    assert!(
        log.contains("new device secret written to"),
        "the log says where the secret is kept:\n{log}"
    );
    let stats = stats_of(stats_value);
    let counters = stats.stats.key_manager;
    assert_eq!(
        (counters.imported, counters.generated, counters.prepared),
        (2, 2, 4)
    );
    assert_eq!(
        (counters.derived, counters.programmed, counters.refused),
        (5, 1, 0)
    );
    assert_eq!(stats.stats.rejected.total, 0);
    assert_eq!(
        stats.device.key_types,
        Some(vec!["raw".to_owned(), "hw-wrapped".to_owned()])
    );
    assert_eq!(stats.stats.key_usage.len(), 1);
    assert_eq!(stats.stats.key_usage[0].encrypted.bytes, 8192);
}

/// One refused request: IOERR, counted under `kind`.
#[track_caller]
fn refused(session: &mut Session, request: &Request) {
    let control = session.control();
    let completion = session.expect(control, request, Status::IoErr);
    assert_eq!(completion.used_len, 1, "only the status byte is written");
    assert!(
        completion.data.iter().all(|&b| b == 0),
        "no answer reaches the guest"
    );
}

#[test]
fn bad_blobs_are_refused_with_their_own_kind_a_log_line_and_the_image_untouched() {
    let state_dir = support::temp_dir("key-manager-state");
    let mut session = start(16 * MIB, &state_args(&state_path(&state_dir)));
    let long_term = import(&mut session, &RAW_KEY);
    let ephemeral = prepare(&mut session, &long_term);
    let control = session.control();
    session.expect(
        control,
        &Request::keyslot_program(&wrapped_desc(0, &ephemeral)),
        Status::Ok,
    );
    session.expect(
        0,
        &Request::crypto_write(8, &msg(0, 1), random_bytes(4096)),
        Status::Ok,
    );
    let image = session.image_bytes();

    // Slot 6 must stay empty through every refused program: a CRYPTO_OUT
    // with it is refused and the image stays as it is.
    let slot_6_still_empty = |session: &mut Session| {
        session.expect(
            0,
            &Request::crypto_write(32, &msg(6, 0), random_bytes(4096)),
            Status::IoErr,
        );
        assert!(session.image_bytes() == image, "the image changed");
    };

    // Tampered: one bit of the ciphertext.
    let mut tampered = ephemeral;
    tampered[4 + 40] ^= 0x01;
    refused(&mut session, &Request::derive_sw_secret(&tampered));
    refused(
        &mut session,
        &Request::keyslot_program(&wrapped_desc(6, &tampered)),
    );
    slot_6_still_empty(&mut session);
    // The wrong kind each way.
    refused(
        &mut session,
        &Request::keyslot_program(&wrapped_desc(6, &long_term)),
    );
    refused(&mut session, &Request::derive_sw_secret(&long_term));
    refused(&mut session, &Request::prepare_key(&ephemeral));
    slot_6_still_empty(&mut session);
    // Not a hardware key, not a blob of this format.
    refused(
        &mut session,
        &Request::import_key(&blob_of(&random_bytes(64))),
    );
    refused(
        &mut session,
        &Request::prepare_key(&blob_of(&random_bytes(WRAPPED_KEY_SIZE as usize))),
    );

    // A reset: the keyslots are empty and the ephemeral key is stale;
    // the long-term key prepares again.
    reset(&mut session);
    session.expect(
        0,
        &Request::crypto_write(8, &msg(0, 1), random_bytes(4096)),
        Status::IoErr,
    );
    refused(&mut session, &Request::derive_sw_secret(&ephemeral));
    refused(
        &mut session,
        &Request::keyslot_program(&wrapped_desc(6, &ephemeral)),
    );
    slot_6_still_empty(&mut session);
    let fresh = prepare(&mut session, &long_term);
    assert_eq!(hex(&derive(&mut session, &fresh)), SW_SECRET);

    // Another device (another state file) refuses this one's keys.
    let other_dir = support::temp_dir("key-manager-state");
    let mut other = start(4 * MIB, &state_args(&state_path(&other_dir)));
    refused(&mut other, &Request::prepare_key(&long_term));
    refused(&mut other, &Request::derive_sw_secret(&fresh));
    let other_log = device_log(&mut other);
    let other_stats = stats_of(other.finish());
    assert_eq!(
        other_stats
            .stats
            .rejected
            .of_kind(reject_kind::WRAPPED_KEY_FOREIGN),
        1
    );
    assert_eq!(
        other_stats
            .stats
            .rejected
            .of_kind(reject_kind::WRAPPED_KEY_STALE),
        1
    );
    assert!(
        other_log.contains(reject_kind::WRAPPED_KEY_FOREIGN),
        "{other_log}"
    );

    assert!(session.image_bytes() == image, "the image changed");
    let log = device_log(&mut session);
    let trace = trace_of(&session);
    let stats = stats_of(session.finish());
    let expected = [
        (reject_kind::WRAPPED_KEY_UNAUTHENTIC, 2),
        (reject_kind::WRAPPED_KEY_WRONG_KIND, 3),
        (reject_kind::WRONG_RAW_KEY_SIZE, 1),
        (reject_kind::WRAPPED_KEY_MALFORMED, 1),
        (reject_kind::WRAPPED_KEY_STALE, 2),
        (reject_kind::SLOT_EMPTY, 4),
    ];
    for (kind, count) in expected {
        assert_eq!(stats.stats.rejected.of_kind(kind), count, "{kind}");
        assert!(log.contains(kind), "a log line for {kind}:\n{log}");
        let traced = trace
            .iter()
            .filter(|e| matches!(e, TraceEvent::Reject(r) if r.kind == kind))
            .count();
        assert_eq!(traced as u64, count, "{kind} in the trace");
    }
    assert_eq!(stats.stats.key_manager.refused, 9);
    assert_eq!(stats.stats.key_manager.programmed, 1);
    assert_eq!(stats.stats.keyslots.evicted_by_reset, 1);
}

#[test]
fn a_restart_with_the_same_state_file_accepts_the_old_long_term_key() {
    let state_dir = support::temp_dir("key-manager-state");
    let state = state_path(&state_dir);
    let mut first = start(16 * MIB, &state_args(&state));
    let long_term = import(&mut first, &RAW_KEY);
    first.finish();
    let saved = std::fs::read(&state).expect("state");

    let mut second = start(16 * MIB, &state_args(&state));
    let ephemeral = prepare(&mut second, &long_term);
    assert_eq!(hex(&derive(&mut second, &ephemeral)), SW_SECRET);
    let control = second.control();
    second.expect(
        control,
        &Request::keyslot_program(&wrapped_desc(1, &ephemeral)),
        Status::Ok,
    );
    let plain = random_bytes(4096);
    second.expect(
        0,
        &Request::crypto_write(0, &msg(1, 7), plain.clone()),
        Status::Ok,
    );
    assert_eq!(
        read_at(&second.image, 0, 4096),
        oracle_encrypt(&inline_key(), &plain, 4096, 7)
    );
    let log = device_log(&mut second);
    assert!(log.contains("device secret read from"), "{log}");
    second.finish();
    assert_eq!(
        std::fs::read(&state).expect("state"),
        saved,
        "read, not rewritten"
    );

    // Without the state file: a random secret, the key is foreign.
    let mut third = Session::start(4 * MIB, &[]);
    refused(&mut third, &Request::prepare_key(&long_term));
    let stats = stats_of(third.finish());
    assert_eq!(
        stats
            .stats
            .rejected
            .of_kind(reject_kind::WRAPPED_KEY_FOREIGN),
        1
    );
}

#[test]
fn an_engine_without_wrapped_keys_refuses_them_as_unsupported() {
    for args in [&["--profile", "emmc"][..], &["--key-types", "raw"]] {
        let mut session = Session::start(4 * MIB, args);
        let config = session.frontend.get_config(99, 1).expect("config");
        assert_eq!(config, [1], "key_types: raw only");
        let control = session.control();
        session.expect(control, &Request::generate_key(), Status::Unsupp);
        session.expect(
            control,
            &Request::import_key(&blob_of(&RAW_KEY)),
            Status::Unsupp,
        );
        let mut desc = KeyDesc::raw_aes_256_xts(0, &[7; 64], 4096, 4);
        desc.key_type = KeyType::HardwareWrapped.to_wire();
        session.expect(control, &Request::keyslot_program(&desc), Status::Unsupp);
        let stats = stats_of(session.finish());
        assert_eq!(
            stats
                .stats
                .rejected
                .of_kind(reject_kind::WRAPPED_KEYS_NOT_OFFERED),
            2
        );
        assert_eq!(stats.stats.rejected.of_kind("unsupported-key-type"), 1);
        assert_eq!(stats.device.key_types, Some(vec!["raw".to_owned()]));
    }
    // Wrapped keys only: raw keys are the ones refused.
    let mut session = Session::start(4 * MIB, &["--key-types", "wrapped"]);
    assert_eq!(session.frontend.get_config(99, 1).expect("config"), [2]);
    let control = session.control();
    session.expect(
        control,
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &[7; 64], 4096, 8)),
        Status::Unsupp,
    );
    let long_term = import(&mut session, &RAW_KEY);
    let ephemeral = prepare(&mut session, &long_term);
    session.expect(
        control,
        &Request::keyslot_program(&wrapped_desc(0, &ephemeral)),
        Status::Ok,
    );
    session.finish();
}

#[test]
fn a_bad_state_file_stops_the_device_with_a_clear_error() {
    let dir = support::temp_dir("key-manager-state-bad");
    let serve = |state: &Path| {
        std::process::Command::new(support::icelab_bin())
            .arg("serve")
            .arg("--image")
            .arg(dir.path().join("disk.img"))
            .arg("--size")
            .arg("1M")
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--key-manager-state")
            .arg(state)
            .output()
            .expect("run icelab serve")
    };
    let readable = dir.path().join("readable.state");
    let mut contents = b"icelab-keymgr-1\n".to_vec();
    contents.extend_from_slice(&[9; 32]);
    std::fs::write(&readable, &contents).expect("write");
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let short = dir.path().join("short.state");
    std::fs::write(&short, [1u8; 20]).expect("write");
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for (state, expected) in [(&readable, "chmod 600"), (&short, "holds 20 bytes, not 48")] {
        let output = serve(state);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            !stderr.contains(&hex(&[9; 16])),
            "no secret bytes: {stderr}"
        );
    }
    let output = std::process::Command::new(support::icelab_bin())
        .args([
            "serve",
            "--image",
            "x.img",
            "--socket",
            "x.sock",
            "--profile",
            "emmc",
        ])
        .arg("--key-manager-state")
        .arg(dir.path().join("km.state"))
        .output()
        .expect("run icelab serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--key-manager-state needs an engine with hardware-wrapped keys"),
        "{stderr}"
    );
}
