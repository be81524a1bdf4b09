//! The config space's inline-encryption fields and the GET_CRYPTO_MODES
//! answer (docs/PROTOCOL.md, "Configuration space" and "Requests").

use icelab_frontend::blk::ConfigSpace;
use icelab_protocol::{CONFIG_SIZE, KeyType, config_offset};

use crate::check::{Check, CheckResult, Failure, Param, Requirement, section};
use crate::device::{MAX_DATA_UNIT_BITS, MIN_DATA_UNIT_BITS, read_modes};
use crate::session::{Ctx, Op, Q, hex_prefix};

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "config/crypto-fields",
        section: section::CONFIG,
        requirement: Requirement::Must,
        summary: "bytes 96..104: max_slots >= 1, max_dun_bytes 1..=32, key_types has raw, \
                  the reserved le32 is 0, the same on every connection",
        param: Param::Once,
        run: crypto_fields,
    },
    Check {
        id: "config/crypto-modes",
        section: section::REQUESTS,
        requirement: Requirement::Must,
        summary: "GET_CRYPTO_MODES answers 8 bytes: modes[0] = 0, modes[1] a non-zero mask of \
                  data unit sizes 512..65536",
        param: Param::Once,
        run: crypto_modes,
    },
];

fn crypto_fields(ctx: &mut Ctx<'_>) -> CheckResult {
    // Skips on a plain device; the fields themselves are checked here, so
    // their being unusable is not a reason to stop.
    if let Err(crate::check::Stop::Skip(reason)) = ctx.crypto() {
        return Err(crate::check::Stop::Skip(reason));
    }
    let mut session = ctx.connect()?;
    let bytes = session
        .frontend()
        .get_config(0, CONFIG_SIZE as u32)
        .map_err(|error| {
            Failure::new(format!(
                "GET_CONFIG of the {CONFIG_SIZE}-byte config space (with the inline-encryption \
                 fields at 96..104) failed: {error}"
            ))
        })?;
    let request = format!("vhost-user GET_CONFIG offset 0, {CONFIG_SIZE} bytes");
    let response = format!(
        "bytes 96..104: {}",
        hex_prefix(bytes.get(config_offset::MAX_SLOTS..).unwrap_or_default())
    );
    let config = ConfigSpace::parse(&bytes);
    let Some(caps) = config.crypto else {
        return Err(Failure::new(format!(
            "GET_CONFIG returned {} bytes, short of the {CONFIG_SIZE} that hold the \
             inline-encryption fields",
            bytes.len()
        ))
        .request(request)
        .into());
    };
    let mut problems = Vec::new();
    if caps.max_slots == 0 {
        problems.push("max_slots is 0 (at least 1 keyslot)".to_owned());
    }
    if !(1..=32).contains(&caps.max_dun_bytes) {
        problems.push(format!("max_dun_bytes is {} (1 to 32)", caps.max_dun_bytes));
    }
    if caps.key_types & KeyType::Raw.config_bit() == 0 {
        problems.push(format!(
            "key_types {:#04x} lacks bit 0 (raw keys)",
            caps.key_types
        ));
    }
    let reserved = bytes
        .get(config_offset::CRYPTO_RESERVED..CONFIG_SIZE)
        .unwrap_or_default();
    if reserved.iter().any(|byte| *byte != 0) {
        problems.push(format!(
            "the unused le32 at byte 100 is {} (0)",
            hex_prefix(reserved)
        ));
    }
    if let Ok(probed) = &ctx.device.config
        && probed.crypto.is_some()
        && probed.crypto != config.crypto
    {
        problems.push(format!(
            "the fields differ from an earlier connection's ({:?} then {:?})",
            probed.crypto, config.crypto
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(problems.join("; "))
            .request(request)
            .response(response)
            .into())
    }
}

fn crypto_modes(ctx: &mut Ctx<'_>) -> CheckResult {
    if let Err(crate::check::Stop::Skip(reason)) = ctx.crypto() {
        return Err(crate::check::Stop::Skip(reason));
    }
    let mut session = ctx.connect()?;
    let op = Op::get_crypto_modes(8);
    let (modes, used_len) = read_modes(&mut session, 8)?;
    let fail = |message: String| {
        Failure::new(message)
            .request(op.describe(&session.queue_name(Q::Control)))
            .response(format!(
                "modes[0] = {:#x}, modes[1] = {:#x}",
                modes[0], modes[1]
            ))
    };
    if used_len != 9 {
        return Err(fail(format!(
            "used length {used_len}: the device wrote the 8-byte answer and the status byte, 9"
        ))
        .into());
    }
    if modes[0] != 0 {
        return Err(fail(format!(
            "modes[0] is reserved and must be 0, got {:#x}",
            modes[0]
        ))
        .into());
    }
    if modes[1] == 0 {
        return Err(fail(
            "modes[1] (AES-256-XTS) is 0: the device advertises inline encryption but no \
             data unit size"
                .into(),
        )
        .into());
    }
    let allowed: u32 =
        (MIN_DATA_UNIT_BITS..=MAX_DATA_UNIT_BITS).fold(0, |mask, bit| mask | 1 << bit);
    if modes[1] & !allowed != 0 {
        return Err(fail(format!(
            "modes[1] = {:#x} has bits outside 9..=16 (data units of 512 to 65536 bytes): {:#x}",
            modes[1],
            modes[1] & !allowed
        ))
        .into());
    }
    Ok(())
}
