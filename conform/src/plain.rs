//! Plain block requests every virtio-blk device must serve (VIRTIO 1.2
//! §5.2.6; docs/PROTOCOL.md, "Requests": they keep their meaning and are
//! never encrypted). These run on devices without inline encryption too.

use icelab_frontend::blk::Request;
use icelab_protocol::{DEVICE_ID_BYTES, RequestType, Status, VIRTIO_BLK_F_FLUSH};

use crate::check::{Check, CheckResult, Failure, Param, Requirement, Stop, section};
use crate::session::{AREA_SECTOR, Ctx, Op, Q, first_difference, hex_prefix, random_bytes};

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "plain/write-read-round-trip",
        section: section::REQUESTS,
        requirement: Requirement::Must,
        summary: "OUT then IN of the same sectors returns the data written",
        param: Param::Once,
        run: write_read_round_trip,
    },
    Check {
        id: "plain/flush",
        section: section::REQUESTS,
        requirement: Requirement::Must,
        summary: "FLUSH completes OK (when VIRTIO_BLK_F_FLUSH is offered)",
        param: Param::Once,
        run: flush,
    },
    Check {
        id: "plain/get-id",
        section: section::REQUESTS,
        requirement: Requirement::Must,
        summary: "GET_ID completes OK with at most 20 bytes",
        param: Param::Once,
        run: get_id,
    },
    Check {
        id: "plain/unknown-type-unsupp",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "a request of an unknown type gets UNSUPP",
        param: Param::Once,
        run: unknown_type,
    },
];

/// Bytes of a plain request: two logical blocks, at least 8 KiB.
fn plain_len(ctx: &Ctx<'_>) -> usize {
    let block = ctx
        .device
        .config
        .as_ref()
        .map_or(512, |config| config.blk_size.clamp(512, 32 * 1024));
    (2 * block as usize).max(8192)
}

fn write_read_round_trip(ctx: &mut Ctx<'_>) -> CheckResult {
    let len = plain_len(ctx);
    let mut session = ctx.connect()?;
    let data = random_bytes(len);
    let write = Op::write(AREA_SECTOR, data.clone());
    session.expect(Q::Request, &write, Status::Ok, "plain OUT")?;
    let back = session.read_plain(AREA_SECTOR, len, "plain IN of the sectors just written")?;
    if let Some(at) = first_difference(&data, &back.data) {
        return Err(Failure::new(format!(
            "plain IN returned other bytes than the plain OUT wrote, from byte {at} \
             (expected {})",
            hex_prefix(data.get(at..).unwrap_or_default())
        ))
        .request(session.describe(Q::Request, &write))
        .response(back.describe())
        .into());
    }
    Ok(())
}

fn flush(ctx: &mut Ctx<'_>) -> CheckResult {
    if !ctx.device.offers(VIRTIO_BLK_F_FLUSH) {
        return Err(Stop::Skip(
            "the device does not offer VIRTIO_BLK_F_FLUSH (bit 9)".into(),
        ));
    }
    let mut session = ctx.connect()?;
    session.expect(Q::Request, &Op::flush(), Status::Ok, "FLUSH")?;
    Ok(())
}

fn get_id(ctx: &mut Ctx<'_>) -> CheckResult {
    let mut session = ctx.connect()?;
    let op = Op::get_id();
    let reply = session.expect(Q::Request, &op, Status::Ok, "GET_ID")?;
    // The used length counts the id bytes and the status byte.
    if reply.used_len as usize > DEVICE_ID_BYTES + 1 {
        return Err(Failure::new(format!(
            "GET_ID: used length {} claims more than the {DEVICE_ID_BYTES}-byte id and the \
             status byte",
            reply.used_len
        ))
        .request(session.describe(Q::Request, &op))
        .response(reply.describe())
        .into());
    }
    Ok(())
}

fn unknown_type(ctx: &mut Ctx<'_>) -> CheckResult {
    let mut session = ctx.connect()?;
    // 99 is no type of VIRTIO 1.2 or the draft.
    let op = Op::custom(
        Request::raw(RequestType::Unsupported(99), 0).with_data_in(512),
        "sector 0, 512 bytes".into(),
        &[("data", 512, true)],
    );
    session.expect(Q::Request, &op, Status::Unsupp, "a request of type 99")?;
    Ok(())
}
