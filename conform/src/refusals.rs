//! Requests the device must refuse, with the status of docs/PROTOCOL.md's
//! refusal table ("Device rules"), touching nothing.

use icelab_frontend::blk::Request;
use icelab_protocol::{CryptoMsg, Dun, KeyType, RequestType, Status};

use crate::check::{Check, CheckResult, Param, Requirement, Stop, section};
use crate::crypto::{key_in_slot0, setup, some_dun};
use crate::device::{MAX_DATA_UNIT_BITS, MIN_DATA_UNIT_BITS};
use crate::keyslots::assert_slot_refused;
use crate::session::{AREA_SECTOR, CryptoRange, Ctx, Op, Q, random_bytes};

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "refusals/crypto-misaligned-start",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "CRYPTO_OUT/IN starting inside a data unit get IOERR",
        param: Param::Once,
        run: misaligned_start,
    },
    Check {
        id: "refusals/crypto-partial-data-unit",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "CRYPTO_OUT/IN of a length that is not whole data units get IOERR",
        param: Param::Once,
        run: partial_data_unit,
    },
    Check {
        id: "refusals/crypto-zero-length",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "CRYPTO_OUT/IN with no data get IOERR",
        param: Param::Once,
        run: zero_length,
    },
    Check {
        id: "refusals/crypto-msg-short",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "CRYPTO_OUT with a 20-byte crypto_msg gets IOERR",
        param: Param::Once,
        run: crypto_msg_short,
    },
    Check {
        id: "refusals/key-desc-156-bytes",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "KEYSLOT_PROGRAM with a 156-byte key_desc (an old unpublished layout) gets \
                  IOERR and programs nothing",
        param: Param::Once,
        run: key_desc_156,
    },
    Check {
        id: "refusals/key-size-not-64",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "KEYSLOT_PROGRAM with key_size 0, 32 or 128 gets IOERR",
        param: Param::Once,
        run: key_size,
    },
    Check {
        id: "refusals/dun-bytes-zero",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "KEYSLOT_PROGRAM with dun_bytes 0 gets IOERR",
        param: Param::Once,
        run: dun_bytes_zero,
    },
    Check {
        id: "refusals/dun-bytes-over-max",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "KEYSLOT_PROGRAM with dun_bytes max_dun_bytes + 1 gets UNSUPP",
        param: Param::Once,
        run: dun_bytes_over_max,
    },
    Check {
        id: "refusals/unsupported-data-unit-size",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "KEYSLOT_PROGRAM with a data unit size not in modes[1] gets UNSUPP",
        param: Param::Once,
        run: unsupported_data_unit_size,
    },
    Check {
        id: "refusals/unknown-crypto-mode",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "KEYSLOT_PROGRAM with crypto_mode 0 (reserved) or 2 gets UNSUPP",
        param: Param::Once,
        run: unknown_crypto_mode,
    },
    Check {
        id: "refusals/key-type-not-offered",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "KEYSLOT_PROGRAM with a key type not in key_types gets UNSUPP",
        param: Param::Once,
        run: key_type_not_offered,
    },
    Check {
        id: "refusals/crypto-modes-answer-too-short",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "GET_CRYPTO_MODES with a 4-byte answer buffer gets IOERR",
        param: Param::Once,
        run: modes_answer_too_short,
    },
    Check {
        id: "refusals/key-command-on-request-queue",
        section: section::VIRTQUEUES,
        requirement: Requirement::Choice,
        summary: "GET_CRYPTO_MODES, KEYSLOT_PROGRAM and KEYSLOT_EVICT on a request queue get \
                  UNSUPP and program nothing",
        param: Param::Once,
        run: key_command_on_request_queue,
    },
    Check {
        id: "refusals/crypto-on-control-queue",
        section: section::VIRTQUEUES,
        requirement: Requirement::Choice,
        summary: "CRYPTO_OUT, CRYPTO_IN and plain OUT on the control queue get UNSUPP",
        param: Param::Once,
        run: crypto_on_control_queue,
    },
];

/// A data unit size above 512 (misalignment inside a unit needs one).
fn unit_above_512(ctx: &Ctx<'_>) -> Result<u32, Stop> {
    ctx.crypto()?.data_unit_size_above_512().ok_or_else(|| {
        Stop::Skip(
            "every advertised data unit is 512 bytes: every sector-addressed request is whole \
             data units"
                .into(),
        )
    })
}

fn misaligned_start(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let unit = unit_above_512(ctx)?;
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    session.program(&key, 0, unit, setup.dun_bytes)?;
    let sector = AREA_SECTOR + 1;
    let len = unit * 2;
    let dun = Dun::from_u64(0);
    let what = format!("starting at sector {sector}, inside a data unit of {unit} bytes");
    let range = CryptoRange {
        sector,
        slot: 0,
        dun,
        len,
        unit: Some(unit),
    };
    session.crypto_refused(Q::Request, &range, Status::IoErr, &what)?;
    Ok(())
}

fn partial_data_unit(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let unit = unit_above_512(ctx)?;
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    session.program(&key, 0, unit, setup.dun_bytes)?;
    let len = unit + 512;
    let dun = Dun::from_u64(0);
    let what = format!("of {len} bytes, not whole data units of {unit}");
    let range = CryptoRange {
        sector: AREA_SECTOR,
        slot: 0,
        dun,
        len,
        unit: Some(unit),
    };
    session.crypto_refused(Q::Request, &range, Status::IoErr, &what)?;
    Ok(())
}

fn zero_length(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (_key, mut session) = key_in_slot0(ctx, &setup)?;
    let dun = Dun::from_u64(0);
    let write = Op::crypto_write(AREA_SECTOR, 0, dun, Vec::new(), None);
    session.expect(Q::Request, &write, Status::IoErr, "CRYPTO_OUT with no data")?;
    let read = Op::crypto_read(AREA_SECTOR, 0, dun, 0, None);
    session.expect(Q::Request, &read, Status::IoErr, "CRYPTO_IN with no data")?;
    Ok(())
}

fn crypto_msg_short(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (_key, mut session) = key_in_slot0(ctx, &setup)?;
    let len = setup.data_unit_size * setup.units;
    let msg = CryptoMsg {
        slot: 0,
        reserved: 0,
        dun: Dun::from_u64(0),
    };
    let payload = msg.encode()[..20].to_vec();
    let op = Op::custom(
        Request::raw(RequestType::CryptoOut, AREA_SECTOR)
            .with_payload(payload)
            .with_data_out(random_bytes(len as usize)),
        format!(
            "sector {AREA_SECTOR}, the first 20 of the 40 bytes of crypto_msg {{slot 0, dun 0}}, \
             {len} bytes of data"
        ),
        &[("crypto_msg", 20, false), ("data", u64::from(len), false)],
    );
    session.refused_untouched(
        Q::Request,
        &op,
        Status::IoErr,
        AREA_SECTOR,
        len as usize,
        "CRYPTO_OUT with a 20-byte crypto_msg",
    )?;
    Ok(())
}

fn key_desc_156(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    session.evict(0)?;
    let desc = key.desc(0, setup.data_unit_size, setup.dun_bytes);
    session.expect(
        Q::Control,
        &Op::program_padded(&desc, key.name(), 4),
        Status::IoErr,
        "KEYSLOT_PROGRAM with a 156-byte key_desc",
    )?;
    assert_slot_refused(
        &mut session,
        0,
        &setup,
        "after a refused KEYSLOT_PROGRAM (the slot must stay empty)",
    )?;
    Ok(())
}

/// A key_desc edit, named.
type Edit<'a> = (&'a str, &'a dyn Fn(&mut icelab_protocol::KeyDesc));

/// Programs slot 0 with a valid descriptor changed by each edit in turn;
/// expects `want` for each and the slot still empty afterwards.
fn refused_program(ctx: &mut Ctx<'_>, cases: &[Edit<'_>], want: Status) -> CheckResult {
    let setup = setup(ctx)?;
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    session.evict(0)?;
    for (what, edit) in cases {
        let mut desc = key.desc(0, setup.data_unit_size, setup.dun_bytes);
        edit(&mut desc);
        session.expect(
            Q::Control,
            &Op::program(&desc, key.name()),
            want,
            &format!("KEYSLOT_PROGRAM with {what}"),
        )?;
    }
    assert_slot_refused(
        &mut session,
        0,
        &setup,
        "after refused KEYSLOT_PROGRAMs (the slot must stay empty)",
    )?;
    Ok(())
}

fn key_size(ctx: &mut Ctx<'_>) -> CheckResult {
    refused_program(
        ctx,
        &[
            ("key_size 32", &|d| d.key_size = 32),
            ("key_size 0", &|d| d.key_size = 0),
            ("key_size 128", &|d| d.key_size = 128),
        ],
        Status::IoErr,
    )
}

fn dun_bytes_zero(ctx: &mut Ctx<'_>) -> CheckResult {
    refused_program(ctx, &[("dun_bytes 0", &|d| d.dun_bytes = 0)], Status::IoErr)
}

fn dun_bytes_over_max(ctx: &mut Ctx<'_>) -> CheckResult {
    let over = u32::from(ctx.crypto()?.max_dun_bytes) + 1;
    let what = format!("dun_bytes {over} (max_dun_bytes + 1)");
    refused_program(
        ctx,
        &[(&what, &move |d| d.dun_bytes = over)],
        Status::Unsupp,
    )
}

fn unsupported_data_unit_size(ctx: &mut Ctx<'_>) -> CheckResult {
    let modes1 = ctx.crypto()?.modes1;
    // The first size the device does not list; 128 KiB when it lists all.
    let bits = (MIN_DATA_UNIT_BITS..=MAX_DATA_UNIT_BITS)
        .find(|bit| modes1 & (1 << bit) == 0)
        .unwrap_or(MAX_DATA_UNIT_BITS + 1);
    let what = format!(
        "data_unit_size_bits {bits} ({} bytes, not in modes[1] = {modes1:#x})",
        1u64 << bits
    );
    refused_program(
        ctx,
        &[(&what, &move |d| d.data_unit_size_bits = bits)],
        Status::Unsupp,
    )
}

fn unknown_crypto_mode(ctx: &mut Ctx<'_>) -> CheckResult {
    refused_program(
        ctx,
        &[
            ("crypto_mode 0 (reserved)", &|d| d.crypto_mode = 0),
            ("crypto_mode 2 (not defined)", &|d| d.crypto_mode = 2),
        ],
        Status::Unsupp,
    )
}

fn key_type_not_offered(ctx: &mut Ctx<'_>) -> CheckResult {
    let crypto = ctx.crypto()?;
    let wrapped = KeyType::HardwareWrapped.to_wire();
    if crypto.wrapped_keys() {
        refused_program(
            ctx,
            &[("key_type 3 (not defined)", &|d| d.key_type = 3)],
            Status::Unsupp,
        )
    } else {
        refused_program(
            ctx,
            &[
                (
                    "key_type 2 (hardware-wrapped, not in config key_types)",
                    &move |d| d.key_type = wrapped,
                ),
                ("key_type 3 (not defined)", &|d| d.key_type = 3),
            ],
            Status::Unsupp,
        )
    }
}

fn modes_answer_too_short(ctx: &mut Ctx<'_>) -> CheckResult {
    ctx.crypto()?;
    let mut session = ctx.connect()?;
    session.expect(
        Q::Control,
        &Op::get_crypto_modes(4),
        Status::IoErr,
        "GET_CRYPTO_MODES with a 4-byte answer buffer (the answer is 8)",
    )?;
    Ok(())
}

fn key_command_on_request_queue(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    session.evict(0)?;
    let on = "on request queue 0";
    session.expect(
        Q::Request,
        &Op::get_crypto_modes(8),
        Status::Unsupp,
        &format!("GET_CRYPTO_MODES {on}"),
    )?;
    let program = Op::program(
        &key.desc(0, setup.data_unit_size, setup.dun_bytes),
        key.name(),
    );
    session.expect(
        Q::Request,
        &program,
        Status::Unsupp,
        &format!("KEYSLOT_PROGRAM {on}"),
    )?;
    assert_slot_refused(
        &mut session,
        0,
        &setup,
        "after KEYSLOT_PROGRAM was sent on a request queue (the slot must stay empty)",
    )?;
    session.program(&key, 0, setup.data_unit_size, setup.dun_bytes)?;
    session.expect(
        Q::Request,
        &Op::evict(0),
        Status::Unsupp,
        &format!("KEYSLOT_EVICT {on}"),
    )?;
    Ok(())
}

fn crypto_on_control_queue(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (_key, mut session) = key_in_slot0(ctx, &setup)?;
    let len = setup.data_unit_size * setup.units;
    let dun = Dun::from_u128(some_dun(setup.dun_bytes, setup.units));
    let on = "on the control queue";
    let range = CryptoRange {
        sector: AREA_SECTOR,
        slot: 0,
        dun,
        len,
        unit: Some(setup.data_unit_size),
    };
    session.crypto_refused(Q::Control, &range, Status::Unsupp, on)?;
    let plain = Op::write(AREA_SECTOR, random_bytes(len as usize));
    session.refused_untouched(
        Q::Control,
        &plain,
        Status::Unsupp,
        AREA_SECTOR,
        len as usize,
        &format!("plain OUT {on}"),
    )?;
    Ok(())
}
