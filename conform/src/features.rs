//! Feature negotiation (docs/PROTOCOL.md, "Feature negotiation" and
//! "Virtqueues"): bit 23 needs bit 22, inline encryption is on only when
//! the driver acks both, the control queue is the last virtqueue.

use icelab_protocol::{
    Dun, Status, VIRTIO_BLK_F_CTRL_VQ, VIRTIO_BLK_F_INLINE_ENCRYPTION, VIRTIO_BLK_F_MQ, feature,
};

use crate::check::{Check, CheckResult, Failure, Param, Requirement, Stop, section};
use crate::device::{NO_INLINE_ENCRYPTION, units_per_request};
use crate::session::{AREA_SECTOR, CryptoRange, Ctx, Op, Q, random_bytes};

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "features/ctrl-vq-with-inline-encryption",
        section: section::FEATURES,
        requirement: Requirement::Must,
        summary: "a device offering INLINE_ENCRYPTION (23) offers CTRL_VQ (22)",
        param: Param::Once,
        run: ctrl_vq_with_inline_encryption,
    },
    Check {
        id: "features/control-queue-is-last",
        section: section::VIRTQUEUES,
        requirement: Requirement::Choice,
        summary: "GET_QUEUE_NUM counts the request queues plus one; the last virtqueue \
                  answers GET_CRYPTO_MODES",
        param: Param::Once,
        run: control_queue_is_last,
    },
    Check {
        id: "features/crypto-refused-without-ctrl-vq",
        section: section::FEATURES,
        requirement: Requirement::Choice,
        summary: "with 23 acked but not 22, CRYPTO_OUT/IN and key commands get UNSUPP",
        param: Param::Once,
        run: crypto_refused_without_ctrl_vq,
    },
    Check {
        id: "features/crypto-refused-without-inline-encryption",
        section: section::FEATURES,
        requirement: Requirement::Must,
        summary: "with 22 acked but not 23, CRYPTO_OUT and KEYSLOT_PROGRAM get UNSUPP",
        param: Param::Once,
        run: crypto_refused_without_inline_encryption,
    },
];

fn ctrl_vq_with_inline_encryption(ctx: &mut Ctx<'_>) -> CheckResult {
    if !ctx.device.offers(VIRTIO_BLK_F_INLINE_ENCRYPTION) {
        return Err(Stop::Skip(NO_INLINE_ENCRYPTION.into()));
    }
    // Asked again on a connection of its own: the probe's answer is not
    // this check's evidence.
    let mut session = ctx.connect()?;
    let offered = session.frontend().offered_features();
    let both = feature(VIRTIO_BLK_F_INLINE_ENCRYPTION) | feature(VIRTIO_BLK_F_CTRL_VQ);
    if offered & both == feature(VIRTIO_BLK_F_INLINE_ENCRYPTION) {
        return Err(Failure::new(format!(
            "GET_FEATURES answered {offered:#x}: VIRTIO_BLK_F_INLINE_ENCRYPTION (bit 23) \
             without VIRTIO_BLK_F_CTRL_VQ (bit 22), so a driver has no control queue to \
             program keys on"
        ))
        .into());
    }
    Ok(())
}

fn control_queue_is_last(ctx: &mut Ctx<'_>) -> CheckResult {
    ctx.crypto()?;
    let mut session = ctx.connect()?;
    let config = session
        .frontend()
        .block_config()
        .map_err(|error| Failure::new(format!("GET_CONFIG failed: {error}")))?;
    let request_queues = if session.frontend().has_feature(VIRTIO_BLK_F_MQ) {
        u64::from(config.num_queues)
    } else {
        1
    };
    if let Some(queue_num) = session.frontend().backend_queue_num()
        && queue_num != request_queues + 1
    {
        return Err(Failure::new(format!(
            "GET_QUEUE_NUM answered {queue_num}; with {request_queues} request queue(s) \
             (config num_queues) it counts the control queue too: {}",
            request_queues + 1
        ))
        .into());
    }
    crate::device::read_modes(&mut session, 8)
        .map_err(|failure| failure.context("on the last virtqueue"))?;
    Ok(())
}

fn crypto_refused_without_ctrl_vq(ctx: &mut Ctx<'_>) -> CheckResult {
    let crypto = ctx.crypto()?;
    let unit = crypto.default_data_unit_size();
    let len = unit * units_per_request(unit);
    let key = ctx.new_key();
    // One request queue, as a driver that does not know CTRL_VQ reads
    // num_queues from the config space.
    let mut session = ctx.connect_with(|options| {
        options.without_features = feature(VIRTIO_BLK_F_CTRL_VQ);
        options.num_queues = Some(1);
    })?;
    let what = "with VIRTIO_BLK_F_INLINE_ENCRYPTION acked without VIRTIO_BLK_F_CTRL_VQ";
    let range = CryptoRange {
        sector: AREA_SECTOR,
        slot: 0,
        dun: Dun::from_u64(0),
        len,
        unit: Some(unit),
    };
    session.crypto_refused(Q::Request, &range, Status::Unsupp, what)?;
    let program = Op::program(&key.desc(0, unit, crypto.dun_bytes()), key.name());
    session.expect(
        Q::Request,
        &program,
        Status::Unsupp,
        &format!("KEYSLOT_PROGRAM {what}"),
    )?;
    Ok(())
}

fn crypto_refused_without_inline_encryption(ctx: &mut Ctx<'_>) -> CheckResult {
    let crypto = ctx.crypto()?;
    let unit = crypto.default_data_unit_size();
    let len = (unit * units_per_request(unit)) as usize;
    let key = ctx.new_key();
    let mut session = ctx.connect_with(|options| {
        options.without_features = feature(VIRTIO_BLK_F_INLINE_ENCRYPTION);
    })?;
    let what = "with VIRTIO_BLK_F_CTRL_VQ acked without VIRTIO_BLK_F_INLINE_ENCRYPTION";
    let program = Op::program(&key.desc(0, unit, crypto.dun_bytes()), key.name());
    session.expect(
        Q::Control,
        &program,
        Status::Unsupp,
        &format!("KEYSLOT_PROGRAM {what}"),
    )?;
    let write = Op::crypto_write(
        AREA_SECTOR,
        0,
        Dun::from_u64(0),
        random_bytes(len),
        Some(unit),
    );
    session.refused_untouched(
        Q::Request,
        &write,
        Status::Unsupp,
        AREA_SECTOR,
        len,
        &format!("CRYPTO_OUT {what}"),
    )?;
    Ok(())
}
