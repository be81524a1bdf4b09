//! Hardware-wrapped keys (request types 32..35, key type 2;
//! docs/PROTOCOL.md, "Requests"). Only checked when config `key_types`
//! advertises them, and then only that a blob the device never produced is
//! refused: icelab does not offer wrapped keys yet, so there is no
//! reference for the rest.

use icelab_frontend::blk::{Request, key_blob};
use icelab_protocol::{KEY_BLOB_SIZE, KeyType, SW_SECRET_SIZE, Status};

use crate::check::{Check, CheckResult, Failure, Param, Requirement, Stop, section};
use crate::crypto::setup;
use crate::session::{Ctx, Op, Q, random_bytes};

pub(crate) const CHECKS: &[Check] = &[Check {
    id: "wrapped/unknown-blob-refused",
    section: section::REQUESTS,
    requirement: Requirement::Must,
    summary: "DERIVE_SW_SECRET, PREPARE_KEY and KEYSLOT_PROGRAM (key_type 2) refuse a random \
              blob the device never wrapped",
    param: Param::Once,
    run: unknown_blob_refused,
}];

fn unknown_blob_refused(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    if !ctx.crypto()?.wrapped_keys() {
        return Err(Stop::Skip(
            "config key_types does not advertise hardware-wrapped keys (bit 1)".into(),
        ));
    }
    let mut session = ctx.connect()?;
    let random = random_bytes(64);
    let Some(blob) = key_blob(&random) else {
        return Err(Failure::new("internal: a 64-byte blob does not fit a key_blob").into());
    };
    let blob_detail = "key_blob {key_size 64, 64 random bytes never wrapped by the device}";
    let derive = Op::custom(
        Request::derive_sw_secret(&blob),
        blob_detail.into(),
        &[
            ("key_blob", KEY_BLOB_SIZE as u64, false),
            ("secret", SW_SECRET_SIZE as u64, true),
        ],
    )
    .hiding_answer();
    let prepare = Op::custom(
        Request::prepare_key(&blob),
        blob_detail.into(),
        &[
            ("key_blob", KEY_BLOB_SIZE as u64, false),
            ("key_blob", KEY_BLOB_SIZE as u64, true),
        ],
    )
    .hiding_answer();
    let mut desc = icelab_protocol::KeyDesc::raw_aes_256_xts(
        0,
        &[0; 64],
        setup.data_unit_size,
        setup.dun_bytes,
    );
    desc.key_type = KeyType::HardwareWrapped.to_wire();
    desc.bytes[..64].copy_from_slice(&random);
    let program = Op::program(&desc, "64 random bytes as a wrapped key");
    for (q, op, what) in [
        (Q::Control, &derive, "DERIVE_SW_SECRET of a random blob"),
        (Q::Control, &prepare, "PREPARE_KEY of a random blob"),
        (
            Q::Control,
            &program,
            "KEYSLOT_PROGRAM of a random blob as a hardware-wrapped key",
        ),
    ] {
        let reply = session.run(q, op)?;
        if !matches!(reply.status(), Some(Status::IoErr | Status::Unsupp)) {
            return Err(Failure::new(format!(
                "{what}: expected a refusal (IOERR or UNSUPP), got {}",
                crate::session::status_name(reply.status)
            ))
            .request(session.describe(q, op))
            .response(reply.describe())
            .into());
        }
    }
    Ok(())
}
