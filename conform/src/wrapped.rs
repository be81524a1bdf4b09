//! Hardware-wrapped keys (request types 32..35, key type 2;
//! docs/PROTOCOL.md, "Hardware-wrapped keys"). Checked only when config
//! `key_types` advertises them (bit 1).
//!
//! The blobs are opaque and the device's KDF is its own business (the
//! kernel only requires it to be fixed, so that a test can recompute it),
//! so these checks are structural and need no reference KDF: a raw key
//! imported, prepared and programmed encrypts and decrypts, and the same
//! raw key always gives the same ciphertext and the same software secret
//! whatever blob carried it; generated keys differ; a blob the device
//! never wrapped, or one altered by a bit, is refused; and, icelab's
//! choices, a long-term blob is refused where an ephemerally-wrapped one
//! is needed (and the other way round), and a reset makes the
//! ephemerally-wrapped keys of the previous boot stale.
//!
//! Raw keys are 32 bytes, what xfstests imports (`RAW_HW_KEY_SIZE`) and
//! what the KDF of all known hardware is keyed by. No key, blob or secret
//! is shown in a report: keys are "raw key #n", answers are withheld.

use icelab_frontend::blk::{Request, key_blob};
use icelab_protocol::{KEY_BLOB_SIZE, KeyDesc, KeyType, MAX_KEY_BYTES, SW_SECRET_SIZE, Status};
use zeroize::Zeroizing;

use crate::check::{Check, CheckResult, Failure, Param, Requirement, Stop, section};
use crate::crypto::{Setup, setup, some_dun};
use crate::keyslots::assert_slot_refused;
use crate::reset::set_features_again;
use crate::session::{AREA_SECTOR, Ctx, Op, Q, Session, first_difference, random_bytes};
use icelab_protocol::Dun;

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "wrapped/unknown-blob-refused",
        section: section::WRAPPED,
        requirement: Requirement::Must,
        summary: "DERIVE_SW_SECRET, PREPARE_KEY and KEYSLOT_PROGRAM (key_type 2) refuse a random \
                  blob the device never wrapped",
        param: Param::Once,
        run: unknown_blob_refused,
    },
    Check {
        id: "wrapped/import-prepare-program",
        section: section::WRAPPED,
        requirement: Requirement::Must,
        summary: "a 32-byte raw key imported, prepared and programmed (key_type 2) encrypts \
                  CRYPTO_OUT (not in the clear) and CRYPTO_IN decrypts it; the same raw key \
                  imported again gives the same ciphertext",
        param: Param::Once,
        run: import_prepare_program,
    },
    Check {
        id: "wrapped/sw-secret-follows-the-key",
        section: section::WRAPPED,
        requirement: Requirement::Must,
        summary: "DERIVE_SW_SECRET answers 32 bytes that depend on the key only: the same for \
                  every blob of one raw key, different for generated keys",
        param: Param::Once,
        run: sw_secret_follows_the_key,
    },
    Check {
        id: "wrapped/altered-blob-refused",
        section: section::WRAPPED,
        requirement: Requirement::Must,
        summary: "an ephemerally-wrapped key with one bit flipped is refused by DERIVE_SW_SECRET \
                  and KEYSLOT_PROGRAM, and the slot stays empty",
        param: Param::Once,
        run: altered_blob_refused,
    },
    Check {
        id: "wrapped/kinds-enforced",
        section: section::WRAPPED,
        requirement: Requirement::Choice,
        summary: "a long-term wrapped key is refused (IOERR) by DERIVE_SW_SECRET and \
                  KEYSLOT_PROGRAM, an ephemerally-wrapped one by PREPARE_KEY",
        param: Param::Once,
        run: kinds_enforced,
    },
    Check {
        id: "wrapped/reset-makes-ephemeral-keys-stale",
        section: section::WRAPPED,
        requirement: Requirement::Choice,
        summary: "after SET_FEATURES again an ephemerally-wrapped key is refused (IOERR); the \
                  long-term key prepares again to the same software secret",
        param: Param::Once,
        run: reset_makes_ephemeral_keys_stale,
    },
];

/// Size of the raw keys the checks import.
const RAW_KEY_SIZE: usize = 32;

/// A key_blob as a device answered it.
type Blob = Zeroizing<[u8; KEY_BLOB_SIZE]>;

/// The device advertises wrapped keys (else a skip), and the usual setup.
fn wrapped_setup(ctx: &Ctx<'_>) -> Result<Setup, Stop> {
    let setup = setup(ctx)?;
    if !ctx.crypto()?.wrapped_keys() {
        return Err(Stop::Skip(
            "config key_types does not advertise hardware-wrapped keys (bit 1)".into(),
        ));
    }
    Ok(setup)
}

/// A random 32-byte raw key and its name.
struct RawKey {
    name: String,
    bytes: Zeroizing<Vec<u8>>,
}

impl RawKey {
    fn new(number: u32) -> Self {
        Self {
            name: format!("raw key #{number}"),
            bytes: Zeroizing::new(random_bytes(RAW_KEY_SIZE)),
        }
    }
}

/// A request whose answer is a key_blob: OK, the whole key_blob written,
/// a key_size that fits. Returns the blob.
fn blob_answer(session: &mut Session, op: &Op, what: &str) -> Result<Blob, Failure> {
    let reply = session.expect(Q::Control, op, Status::Ok, what)?;
    let fail = |message: String| {
        Failure::new(format!("{what}: {message}"))
            .request(session.describe(Q::Control, op))
            .response(reply.describe())
    };
    if (reply.used_len as usize) < KEY_BLOB_SIZE + 1 || reply.data.len() < KEY_BLOB_SIZE {
        return Err(fail(format!(
            "used length {} is less than the {KEY_BLOB_SIZE}-byte key_blob plus the status byte",
            reply.used_len
        )));
    }
    let mut blob = Zeroizing::new([0u8; KEY_BLOB_SIZE]);
    blob.copy_from_slice(&reply.data[..KEY_BLOB_SIZE]);
    let key_size = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]);
    if key_size == 0 || key_size as usize > MAX_KEY_BYTES {
        return Err(fail(format!(
            "the answered key_blob has key_size {key_size}, not 1 to {MAX_KEY_BYTES}"
        )));
    }
    Ok(blob)
}

fn import(session: &mut Session, raw: &RawKey) -> Result<Blob, Failure> {
    let payload = key_blob(&raw.bytes)
        .ok_or_else(|| Failure::new("internal: a 32-byte key does not fit a key_blob"))?;
    let op = Op::custom(
        Request::import_key(&payload),
        format!("key_blob {{key_size {RAW_KEY_SIZE}, {}}}", raw.name),
        &[
            ("key_blob", KEY_BLOB_SIZE as u64, false),
            ("key_blob", KEY_BLOB_SIZE as u64, true),
        ],
    )
    .hiding_answer();
    blob_answer(session, &op, &format!("IMPORT_KEY of {}", raw.name))
}

fn generate(session: &mut Session) -> Result<Blob, Failure> {
    let op = Op::custom(
        Request::generate_key(),
        String::new(),
        &[("key_blob", KEY_BLOB_SIZE as u64, true)],
    )
    .hiding_answer();
    blob_answer(session, &op, "GENERATE_KEY")
}

fn prepare_op(long_term: &Blob, what: &str) -> Op {
    Op::custom(
        Request::prepare_key(long_term),
        format!("key_blob {{key_size {}, {what}}}", blob_size(long_term)),
        &[
            ("key_blob", KEY_BLOB_SIZE as u64, false),
            ("key_blob", KEY_BLOB_SIZE as u64, true),
        ],
    )
    .hiding_answer()
}

fn prepare(session: &mut Session, long_term: &Blob, what: &str) -> Result<Blob, Failure> {
    let op = prepare_op(long_term, what);
    blob_answer(session, &op, &format!("PREPARE_KEY of {what}"))
}

fn derive_op(ephemeral: &Blob, what: &str) -> Op {
    Op::custom(
        Request::derive_sw_secret(ephemeral),
        format!("key_blob {{key_size {}, {what}}}", blob_size(ephemeral)),
        &[
            ("key_blob", KEY_BLOB_SIZE as u64, false),
            ("secret", SW_SECRET_SIZE as u64, true),
        ],
    )
    .hiding_answer()
}

fn derive(
    session: &mut Session,
    ephemeral: &Blob,
    what: &str,
) -> Result<Zeroizing<[u8; SW_SECRET_SIZE]>, Failure> {
    let op = derive_op(ephemeral, what);
    let step = format!("DERIVE_SW_SECRET of {what}");
    let reply = session.expect(Q::Control, &op, Status::Ok, &step)?;
    if (reply.used_len as usize) < SW_SECRET_SIZE + 1 || reply.data.len() < SW_SECRET_SIZE {
        return Err(Failure::new(format!(
            "{step}: used length {} is less than the {SW_SECRET_SIZE}-byte secret plus the \
             status byte",
            reply.used_len
        ))
        .request(session.describe(Q::Control, &op))
        .response(reply.describe()));
    }
    let mut secret = Zeroizing::new([0u8; SW_SECRET_SIZE]);
    secret.copy_from_slice(&reply.data[..SW_SECRET_SIZE]);
    Ok(secret)
}

fn blob_size(blob: &Blob) -> u32 {
    u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]])
}

/// KEYSLOT_PROGRAM of the wrapped key in `blob` into `slot`.
fn program_op(slot: u32, blob: &Blob, setup: &Setup, what: &str) -> Op {
    let mut desc = KeyDesc::raw_aes_256_xts(slot, &[0; 64], setup.data_unit_size, setup.dun_bytes);
    desc.key_type = KeyType::HardwareWrapped.to_wire();
    desc.key_size = blob_size(blob);
    desc.bytes.copy_from_slice(&blob[4..]);
    Op::program(&desc, what)
}

/// A fresh connection with `raw` imported and prepared.
fn imported(ctx: &mut Ctx<'_>, raw: &RawKey) -> Result<(Session, Blob, Blob), Failure> {
    let mut session = ctx.connect()?;
    let long_term = import(&mut session, raw)?;
    let ephemeral = prepare(
        &mut session,
        &long_term,
        &format!("the long-term key of {}", raw.name),
    )?;
    Ok((session, long_term, ephemeral))
}

/// Expects a refusal (IOERR or UNSUPP; exactly IOERR when `ioerr_only`).
fn refused(session: &mut Session, op: &Op, what: &str, ioerr_only: bool) -> Result<(), Failure> {
    let reply = session.run(Q::Control, op)?;
    let ok = match reply.status() {
        Some(Status::IoErr) => true,
        Some(Status::Unsupp) => !ioerr_only,
        _ => false,
    };
    if !ok {
        return Err(Failure::new(format!(
            "{what}: expected a refusal ({}), got {}",
            if ioerr_only {
                "IOERR"
            } else {
                "IOERR or UNSUPP"
            },
            crate::session::status_name(reply.status)
        ))
        .request(session.describe(Q::Control, op))
        .response(reply.describe()));
    }
    Ok(())
}

fn unknown_blob_refused(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = wrapped_setup(ctx)?;
    let mut session = ctx.connect()?;
    let random = random_bytes(64);
    let Some(blob) = key_blob(&random) else {
        return Err(Failure::new("internal: a 64-byte blob does not fit a key_blob").into());
    };
    let what = "64 random bytes never wrapped by the device";
    for (op, step) in [
        (derive_op(&blob, what), "DERIVE_SW_SECRET of a random blob"),
        (prepare_op(&blob, what), "PREPARE_KEY of a random blob"),
        (
            program_op(0, &blob, &setup, what),
            "KEYSLOT_PROGRAM of a random blob as a hardware-wrapped key",
        ),
    ] {
        refused(&mut session, &op, step, false)?;
    }
    Ok(())
}

/// CRYPTO_OUT of `plain` with `slot` at `sector`, then a plain IN of it:
/// returns what the image holds.
fn write_and_read_back(
    session: &mut Session,
    slot: u32,
    sector: u64,
    setup: &Setup,
    plain: &[u8],
) -> Result<Vec<u8>, Failure> {
    let dun = Dun::from_u128(some_dun(setup.dun_bytes, setup.units));
    let op = Op::crypto_write(
        sector,
        slot,
        dun,
        plain.to_vec(),
        Some(setup.data_unit_size),
    );
    session.expect(
        Q::Request,
        &op,
        Status::Ok,
        &format!("CRYPTO_OUT with the hardware-wrapped key in slot {slot}"),
    )?;
    let back = session.read_plain(
        sector,
        plain.len(),
        "plain IN reading back what CRYPTO_OUT wrote",
    )?;
    Ok(back.data.to_vec())
}

fn import_prepare_program(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = wrapped_setup(ctx)?;
    let raw = RawKey::new(1);
    let (mut session, _, ephemeral) = imported(ctx, &raw)?;
    let what = format!("the ephemerally-wrapped key of {}", raw.name);
    session.expect(
        Q::Control,
        &program_op(0, &ephemeral, &setup, &what),
        Status::Ok,
        "KEYSLOT_PROGRAM of an ephemerally-wrapped key",
    )?;
    let len = (setup.data_unit_size * setup.units) as usize;
    let plain = random_bytes(len);
    let first = write_and_read_back(&mut session, 0, AREA_SECTOR, &setup, &plain)?;
    if first == plain {
        return Err(Failure::new(
            "CRYPTO_OUT with a hardware-wrapped key wrote the plaintext to the image",
        )
        .into());
    }
    if first
        .windows(RAW_KEY_SIZE)
        .any(|window| window == &raw.bytes[..])
    {
        return Err(Failure::new("the image holds the raw key").into());
    }
    let dun = Dun::from_u128(some_dun(setup.dun_bytes, setup.units));
    let read = Op::crypto_read(AREA_SECTOR, 0, dun, len as u32, Some(setup.data_unit_size));
    let reply = session.expect(Q::Request, &read, Status::Ok, "CRYPTO_IN")?;
    if let Some(at) = first_difference(&plain, &reply.data) {
        return Err(Failure::new(format!(
            "CRYPTO_IN with the hardware-wrapped key returned other bytes than CRYPTO_OUT wrote, \
             from byte {at}"
        ))
        .request(session.describe(Q::Request, &read))
        .response(reply.describe())
        .into());
    }
    // The same raw key imported again (another blob, most likely) and
    // programmed into slot 1: the same ciphertext.
    let again = import(&mut session, &raw)?;
    let again = prepare(
        &mut session,
        &again,
        &format!("the second long-term key of {}", raw.name),
    )?;
    session.expect(
        Q::Control,
        &program_op(1, &again, &setup, &format!("{what}, imported again")),
        Status::Ok,
        "KEYSLOT_PROGRAM of the key imported again",
    )?;
    let sector = AREA_SECTOR + (len as u64) / 512;
    let second = write_and_read_back(&mut session, 1, sector, &setup, &plain)?;
    if let Some(at) = first_difference(&first, &second) {
        return Err(Failure::new(format!(
            "the same raw key imported twice gave different ciphertext for the same plaintext \
             and DUN (from byte {at}): the inline encryption key must be derived from the raw \
             key only"
        ))
        .into());
    }
    Ok(())
}

fn sw_secret_follows_the_key(ctx: &mut Ctx<'_>) -> CheckResult {
    wrapped_setup(ctx)?;
    let raw = RawKey::new(1);
    let (mut session, long_term, ephemeral) = imported(ctx, &raw)?;
    let what = format!("the ephemerally-wrapped key of {}", raw.name);
    let secret = derive(&mut session, &ephemeral, &what)?;
    if *secret == [0u8; SW_SECRET_SIZE] || secret[..] == raw.bytes[..] {
        return Err(Failure::new(format!(
            "DERIVE_SW_SECRET of {what} answered {}",
            if *secret == [0u8; SW_SECRET_SIZE] {
                "zeros"
            } else {
                "the raw key itself"
            }
        ))
        .into());
    }
    let differs = |step: &str| {
        Failure::new(format!(
            "{step} gave another software secret than the first DERIVE_SW_SECRET of {}: the \
             secret must depend on the key only",
            raw.name
        ))
    };
    if derive(&mut session, &ephemeral, &what)? != secret {
        return Err(differs("a second DERIVE_SW_SECRET of the same blob").into());
    }
    let prepared_again = prepare(
        &mut session,
        &long_term,
        &format!("the long-term key of {}", raw.name),
    )?;
    if derive(&mut session, &prepared_again, "the key prepared again")? != secret {
        return Err(differs("the long-term key prepared again").into());
    }
    let imported_again = import(&mut session, &raw)?;
    let imported_again = prepare(&mut session, &imported_again, "the key imported again")?;
    if derive(&mut session, &imported_again, "the key imported again")? != secret {
        return Err(differs("the same raw key imported again").into());
    }
    let mut secrets = vec![secret];
    for n in 1..=2 {
        let generated = generate(&mut session)?;
        let what = format!("generated key #{n}");
        let generated = prepare(&mut session, &generated, &what)?;
        let secret = derive(&mut session, &generated, &what)?;
        if secrets.contains(&secret) {
            return Err(Failure::new(format!(
                "{what} has the software secret of an earlier key: GENERATE_KEY must make a \
                 new random key each time"
            ))
            .into());
        }
        secrets.push(secret);
    }
    Ok(())
}

fn altered_blob_refused(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = wrapped_setup(ctx)?;
    let raw = RawKey::new(1);
    let (mut session, _, ephemeral) = imported(ctx, &raw)?;
    let size = blob_size(&ephemeral) as usize;
    // The last byte (a tag, in most formats) and one in the middle.
    for at in [size - 1, size / 2] {
        let mut altered = ephemeral.clone();
        altered[4 + at] ^= 0x01;
        let what = format!(
            "the ephemerally-wrapped key of {} with bit 0 of byte {at} flipped",
            raw.name
        );
        refused(
            &mut session,
            &derive_op(&altered, &what),
            &format!("DERIVE_SW_SECRET of {what}"),
            false,
        )?;
        session.evict(0)?;
        refused(
            &mut session,
            &program_op(0, &altered, &setup, &what),
            &format!("KEYSLOT_PROGRAM of {what}"),
            false,
        )?;
        assert_slot_refused(
            &mut session,
            0,
            &setup,
            "after a refused KEYSLOT_PROGRAM of an altered wrapped key (the slot must stay \
             empty)",
        )?;
    }
    Ok(())
}

fn kinds_enforced(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = wrapped_setup(ctx)?;
    let raw = RawKey::new(1);
    let (mut session, long_term, ephemeral) = imported(ctx, &raw)?;
    let long_term_what = format!("the long-term key of {}", raw.name);
    let ephemeral_what = format!("the ephemerally-wrapped key of {}", raw.name);
    refused(
        &mut session,
        &derive_op(&long_term, &long_term_what),
        "DERIVE_SW_SECRET of a long-term wrapped key",
        true,
    )?;
    session.evict(0)?;
    refused(
        &mut session,
        &program_op(0, &long_term, &setup, &long_term_what),
        "KEYSLOT_PROGRAM of a long-term wrapped key",
        true,
    )?;
    assert_slot_refused(
        &mut session,
        0,
        &setup,
        "after a refused KEYSLOT_PROGRAM of a long-term wrapped key",
    )?;
    refused(
        &mut session,
        &prepare_op(&ephemeral, &ephemeral_what),
        "PREPARE_KEY of an ephemerally-wrapped key",
        true,
    )?;
    Ok(())
}

fn reset_makes_ephemeral_keys_stale(ctx: &mut Ctx<'_>) -> CheckResult {
    wrapped_setup(ctx)?;
    let raw = RawKey::new(1);
    let (mut session, long_term, ephemeral) = imported(ctx, &raw)?;
    let what = format!("the ephemerally-wrapped key of {}", raw.name);
    let secret = derive(&mut session, &ephemeral, &what)?;
    set_features_again(&mut session)?;
    refused(
        &mut session,
        &derive_op(&ephemeral, &format!("{what}, prepared before the reset")),
        "DERIVE_SW_SECRET of an ephemerally-wrapped key of the previous boot",
        true,
    )?;
    let fresh = prepare(
        &mut session,
        &long_term,
        &format!("the long-term key of {}, after the reset", raw.name),
    )?;
    if derive(&mut session, &fresh, "the key prepared after the reset")? != secret {
        return Err(Failure::new(
            "the long-term key prepared after the reset derives another software secret",
        )
        .into());
    }
    Ok(())
}
