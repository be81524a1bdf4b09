//! KEYSLOT_PROGRAM and KEYSLOT_EVICT semantics (docs/PROTOCOL.md,
//! "Device rules"): program then crypto works, evict empties the slot (an
//! empty slot too), programming replaces, slots 0..max_slots exist and no
//! other.

use icelab_protocol::{Dun, Status};

use crate::check::{Check, CheckResult, Param, Requirement, Stop, section};
use crate::crypto::{Setup, Write, key_in_slot0, setup, some_dun};
use crate::oracle::TestKey;
use crate::session::{AREA_SECTOR, CryptoRange, Ctx, Op, Q, Session};

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "keyslots/program-then-crypto",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "a programmed slot encrypts CRYPTO_OUT with its key",
        param: Param::Once,
        run: program_then_crypto,
    },
    Check {
        id: "keyslots/evict-then-crypto-refused",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "after KEYSLOT_EVICT, CRYPTO_OUT/IN with the slot get IOERR and touch nothing",
        param: Param::Once,
        run: evict_then_crypto_refused,
    },
    Check {
        id: "keyslots/replace-key",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "programming an occupied slot replaces its key: the new key's ciphertext",
        param: Param::Once,
        run: replace_key,
    },
    Check {
        id: "keyslots/evict-empty-slot",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "evicting an empty slot is OK",
        param: Param::Once,
        run: evict_empty_slot,
    },
    Check {
        id: "keyslots/slot-out-of-range",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "slot max_slots: program, evict, CRYPTO_OUT and CRYPTO_IN get IOERR",
        param: Param::Once,
        run: slot_out_of_range,
    },
    Check {
        id: "keyslots/last-slot",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "slot max_slots - 1 programs, encrypts and evicts",
        param: Param::Once,
        run: last_slot,
    },
    Check {
        id: "keyslots/slots-independent",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "two slots with two keys: each request uses its own slot's key",
        param: Param::Once,
        run: slots_independent,
    },
    Check {
        id: "keyslots/evict-reads-only-slot",
        section: section::DRAFTS,
        requirement: Requirement::Choice,
        summary: "KEYSLOT_EVICT with a full key_desc of other values empties the slot: only \
                  `slot` is read",
        param: Param::Once,
        run: evict_reads_only_slot,
    },
];

fn write<'k>(key: &'k TestKey, slot: u32, setup: &Setup, sector: u64) -> Write<'k> {
    Write {
        key,
        slot,
        data_unit_size: setup.data_unit_size,
        dun: some_dun(setup.dun_bytes, setup.units),
        units: setup.units,
        sector,
        segment: None,
    }
}

/// CRYPTO_OUT and CRYPTO_IN with `slot` must both get IOERR, the first
/// leaving the image untouched.
pub(crate) fn assert_slot_refused(
    session: &mut Session,
    slot: u32,
    setup: &Setup,
    why: &str,
) -> Result<(), crate::check::Failure> {
    let len = setup.data_unit_size * setup.units;
    let dun = Dun::from_u128(some_dun(setup.dun_bytes, setup.units));
    let range = CryptoRange {
        sector: AREA_SECTOR,
        slot,
        dun,
        len,
        unit: Some(setup.data_unit_size),
    };
    session.crypto_refused(
        Q::Request,
        &range,
        Status::IoErr,
        &format!("with slot {slot} {why}"),
    )?;
    Ok(())
}

fn program_then_crypto(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (key, mut session) = key_in_slot0(ctx, &setup)?;
    let write = write(&key, 0, &setup, AREA_SECTOR);
    let plain = write.write_and_verify(&mut session)?;
    write.decrypts_to(&mut session, &plain)?;
    Ok(())
}

fn evict_then_crypto_refused(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (key, mut session) = key_in_slot0(ctx, &setup)?;
    write(&key, 0, &setup, AREA_SECTOR).write_ok(&mut session)?;
    session.evict(0)?;
    assert_slot_refused(&mut session, 0, &setup, "after KEYSLOT_EVICT of the slot")?;
    Ok(())
}

fn replace_key(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (first, second) = (ctx.new_key(), ctx.new_key());
    let mut session = ctx.connect()?;
    session.program(&first, 0, setup.data_unit_size, setup.dun_bytes)?;
    write(&first, 0, &setup, AREA_SECTOR).write_ok(&mut session)?;
    session
        .program(&second, 0, setup.data_unit_size, setup.dun_bytes)
        .map_err(|failure| failure.context("programming an occupied slot again"))?;
    let context = format!(
        "after {} replaced {} in slot 0 (no evict between)",
        second.name(),
        first.name()
    );
    let write = write(&second, 0, &setup, AREA_SECTOR);
    let plain = write
        .write_and_verify(&mut session)
        .map_err(|failure| failure.context(&context))?;
    write
        .decrypts_to(&mut session, &plain)
        .map_err(|failure| failure.context(&context))?;
    Ok(())
}

fn evict_empty_slot(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let mut session = ctx.connect()?;
    session.evict(0)?;
    session
        .evict(0)
        .map_err(|failure| failure.context("evicting the slot a second time (already empty)"))?;
    assert_slot_refused(&mut session, 0, &setup, "evicted twice")?;
    Ok(())
}

fn slot_out_of_range(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let crypto = ctx.crypto()?;
    let slot = u32::from(crypto.max_slots);
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    let program = Op::program(
        &key.desc(slot, setup.data_unit_size, setup.dun_bytes),
        key.name(),
    );
    let why = format!("(max_slots is {slot})");
    session.expect(
        Q::Control,
        &program,
        Status::IoErr,
        &format!("KEYSLOT_PROGRAM of slot {slot} {why}"),
    )?;
    session.expect(
        Q::Control,
        &Op::evict(slot),
        Status::IoErr,
        &format!("KEYSLOT_EVICT of slot {slot} {why}"),
    )?;
    assert_slot_refused(&mut session, slot, &setup, &why)?;
    Ok(())
}

fn last_slot(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let crypto = ctx.crypto()?;
    let slot = u32::from(crypto.max_slots).saturating_sub(1);
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    session.program(&key, slot, setup.data_unit_size, setup.dun_bytes)?;
    let context = format!("slot {slot}, the last of {}", crypto.max_slots);
    let write = write(&key, slot, &setup, AREA_SECTOR);
    let plain = write
        .write_and_verify(&mut session)
        .map_err(|failure| failure.context(&context))?;
    write
        .decrypts_to(&mut session, &plain)
        .map_err(|failure| failure.context(&context))?;
    session.evict(slot)?;
    assert_slot_refused(
        &mut session,
        slot,
        &setup,
        "after KEYSLOT_EVICT of the slot",
    )?;
    Ok(())
}

fn slots_independent(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let crypto = ctx.crypto()?;
    if crypto.max_slots < 2 {
        return Err(Stop::Skip("the device has a single keyslot".into()));
    }
    let last = u32::from(crypto.max_slots) - 1;
    let (first, second) = (ctx.new_key(), ctx.new_key());
    let mut session = ctx.connect()?;
    session.program(&first, 0, setup.data_unit_size, setup.dun_bytes)?;
    session.program(&second, last, setup.data_unit_size, setup.dun_bytes)?;
    let area = u64::from(setup.data_unit_size * setup.units) / 512;
    let a = write(&first, 0, &setup, AREA_SECTOR);
    let b = write(
        &second,
        last,
        &setup,
        AREA_SECTOR + area.next_multiple_of(128),
    );
    let plain_a = a.write_and_verify(&mut session)?;
    let plain_b = b.write_and_verify(&mut session)?;
    a.decrypts_to(&mut session, &plain_a)?;
    b.decrypts_to(&mut session, &plain_b)?;
    Ok(())
}

fn evict_reads_only_slot(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (key, other) = (ctx.new_key(), ctx.new_key());
    let mut session = ctx.connect()?;
    session.program(&key, 0, setup.data_unit_size, setup.dun_bytes)?;
    // Every field but `slot` differs from what was programmed, and some
    // are invalid for a program.
    let mut desc = other.desc(0, setup.data_unit_size, setup.dun_bytes);
    desc.key_size = 0;
    desc.crypto_mode = 0;
    desc.data_unit_size_bits = 31;
    desc.dun_bytes = 0;
    session.expect(
        Q::Control,
        &Op::evict_desc(&desc, other.name()),
        Status::Ok,
        "KEYSLOT_EVICT with a key_desc whose other fields are not the programmed ones",
    )?;
    assert_slot_refused(&mut session, 0, &setup, "after KEYSLOT_EVICT of the slot")?;
    Ok(())
}
