//! CRYPTO_OUT and CRYPTO_IN against the AES-256-XTS reference, for every
//! advertised data unit size, up to the highest DUN the slot's
//! `dun_bytes` hold (docs/PROTOCOL.md, "Device rules").

use icelab_protocol::{Dun, Status};

use crate::check::{Check, CheckResult, Failure, Param, Requirement, section};
use crate::device::{dun_limit, units_per_request};
use crate::oracle::TestKey;
use crate::session::{
    AREA_SECTOR, CryptoRange, Ctx, Op, Q, Session, dun_text, first_difference, hex_prefix,
    random_bytes,
};

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "crypto/out-matches-reference",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "CRYPTO_OUT puts the AES-256-XTS reference ciphertext on the device (read \
                  back with a plain IN)",
        param: Param::PerDataUnitSize,
        run: out_matches_reference,
    },
    Check {
        id: "crypto/in-decrypts-reference",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "CRYPTO_IN of reference ciphertext (written with a plain OUT) returns the \
                  plaintext",
        param: Param::PerDataUnitSize,
        run: in_decrypts_reference,
    },
    Check {
        id: "crypto/highest-dun",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "with dun_bytes = max_dun_bytes, a request ending on the highest DUN that fits \
                  (2^(8*dun_bytes) - 1) works and matches the reference",
        param: Param::PerDataUnitSize,
        run: highest_dun,
    },
    Check {
        id: "crypto/dun-overflow-refused",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "a request one DUN further, past what dun_bytes hold, gets IOERR and touches \
                  nothing",
        param: Param::PerDataUnitSize,
        run: dun_overflow_refused,
    },
    Check {
        id: "crypto/data-across-descriptors",
        section: section::FRAMING,
        requirement: Requirement::Must,
        summary: "data split over descriptors that do not follow data unit boundaries is \
                  encrypted and decrypted the same",
        param: Param::Once,
        run: data_across_descriptors,
    },
];

/// One CRYPTO_OUT and how to check it.
pub(crate) struct Write<'k> {
    pub key: &'k TestKey,
    pub slot: u32,
    pub data_unit_size: u32,
    pub dun: u128,
    pub units: u32,
    pub sector: u64,
    /// Descriptor size for the data; `None`: one descriptor.
    pub segment: Option<u32>,
}

impl<'k> Write<'k> {
    /// The usual write of the checks: `key` in slot 0, `setup`'s data
    /// units, a DUN that fits, at [`AREA_SECTOR`] in one descriptor.
    pub(crate) fn in_area(key: &'k TestKey, setup: &Setup) -> Self {
        Self {
            key,
            slot: 0,
            data_unit_size: setup.data_unit_size,
            dun: some_dun(setup.dun_bytes, setup.units),
            units: setup.units,
            sector: AREA_SECTOR,
            segment: None,
        }
    }

    fn len(&self) -> usize {
        self.data_unit_size as usize * self.units as usize
    }

    fn op(&self, plain: Vec<u8>) -> Op {
        let op = Op::crypto_write(
            self.sector,
            self.slot,
            Dun::from_u128(self.dun),
            plain,
            Some(self.data_unit_size),
        );
        match self.segment {
            Some(size) => op.segmented(size),
            None => op,
        }
    }

    fn read_op(&self) -> Op {
        let op = Op::crypto_read(
            self.sector,
            self.slot,
            Dun::from_u128(self.dun),
            self.len() as u32,
            Some(self.data_unit_size),
        );
        match self.segment {
            // A different cut than the write's.
            Some(size) => op.segmented(size.saturating_sub(536).max(512)),
            None => op,
        }
    }

    /// CRYPTO_OUT of random plaintext, status OK expected, contents not
    /// checked (for checks about slot state, not about the cipher).
    pub fn write_ok(&self, session: &mut Session) -> Result<(), Failure> {
        let op = self.op(random_bytes(self.len()));
        session.expect(Q::Request, &op, Status::Ok, "CRYPTO_OUT")?;
        Ok(())
    }

    /// CRYPTO_OUT of random plaintext (OK expected), then a plain IN of
    /// the same sectors, which must hold the reference ciphertext.
    /// Returns the plaintext.
    pub fn write_and_verify(&self, session: &mut Session) -> Result<Vec<u8>, Failure> {
        let plain = random_bytes(self.len());
        let op = self.op(plain.clone());
        session.expect(Q::Request, &op, Status::Ok, "CRYPTO_OUT")?;
        let back = session.read_plain(
            self.sector,
            self.len(),
            "plain IN reading back what CRYPTO_OUT wrote",
        )?;
        let unit = self.data_unit_size as usize;
        let reference = self.key.encrypt(&plain, unit, self.dun);
        if let Some(at) = first_difference(&reference, &back.data) {
            let index = at / unit.max(1);
            return Err(Failure::new(format!(
                "the ciphertext CRYPTO_OUT wrote differs from the AES-256-XTS reference \
                 ({}, data units of {unit} B, first DUN {}) from byte {at}, in data unit {index} \
                 (DUN {}): the device has {}, the reference {}{}",
                self.key.name(),
                dun_text(&Dun::from_u128(self.dun)),
                dun_text(&Dun::from_u128(self.dun.wrapping_add(index as u128))),
                hex_prefix(back.data.get(at..).unwrap_or_default()),
                hex_prefix(reference.get(at..).unwrap_or_default()),
                diagnose(self.key, &plain, &back.data, unit, self.dun)
            ))
            .request(format!(
                "{}; read back with a plain IN of sector {}, {} bytes",
                session.describe(Q::Request, &op),
                self.sector,
                self.len()
            ))
            .response(back.describe()));
        }
        Ok(plain)
    }

    /// Plain OUT of the reference ciphertext of random plaintext, then
    /// CRYPTO_IN, which must return the plaintext.
    pub fn read_and_verify(&self, session: &mut Session) -> Result<(), Failure> {
        let unit = self.data_unit_size as usize;
        let plain = random_bytes(self.len());
        let cipher = self.key.encrypt(&plain, unit, self.dun);
        session.expect(
            Q::Request,
            &Op::write(self.sector, cipher),
            Status::Ok,
            "plain OUT of the reference ciphertext",
        )?;
        self.decrypts_to(session, &plain)
    }

    /// CRYPTO_IN of the area, which must return `plain`.
    pub fn decrypts_to(&self, session: &mut Session, plain: &[u8]) -> Result<(), Failure> {
        let unit = self.data_unit_size as usize;
        let op = self.read_op();
        let reply = session.expect(Q::Request, &op, Status::Ok, "CRYPTO_IN")?;
        let fail = |message: String| {
            Failure::new(message)
                .request(session.describe(Q::Request, &op))
                .response(reply.describe())
        };
        if (reply.used_len as usize) < self.len() + 1 {
            return Err(fail(format!(
                "CRYPTO_IN: used length {} is less than the {} bytes decrypted plus the status \
                 byte",
                reply.used_len,
                self.len()
            )));
        }
        if let Some(at) = first_difference(plain, &reply.data) {
            let index = at / unit.max(1);
            return Err(fail(format!(
                "CRYPTO_IN returned other bytes than the plaintext of the reference ciphertext \
                 ({}, data units of {unit} B, first DUN {}) from byte {at}, in data unit \
                 {index}: the device returned {}, the plaintext is {}",
                self.key.name(),
                dun_text(&Dun::from_u128(self.dun)),
                hex_prefix(reply.data.get(at..).unwrap_or_default()),
                hex_prefix(plain.get(at..).unwrap_or_default()),
            )));
        }
        Ok(())
    }
}

/// A hint at what the device did instead, when it is a common mistake.
fn diagnose(key: &TestKey, plain: &[u8], found: &[u8], unit: usize, dun: u128) -> String {
    if found == plain {
        return "; the device wrote the plaintext".into();
    }
    let hypotheses = [
        (dun.wrapping_add(1), key, "the DUN + 1 (off by one)"),
        (dun.wrapping_sub(1), key, "the DUN - 1 (off by one)"),
    ];
    for (candidate, key, what) in hypotheses {
        if key.encrypt(plain, unit, candidate) == found {
            return format!("; it matches the reference for {what}");
        }
    }
    let swapped = key.with_halves_swapped();
    if swapped.encrypt(plain, unit, dun) == found {
        return "; it matches the reference with the key's two halves swapped (the first 32 \
                bytes are the data key, the last 32 the tweak key)"
            .into();
    }
    let big_endian = {
        let mut out = plain.to_vec();
        for (index, chunk) in out.chunks_exact_mut(unit.max(16)).enumerate() {
            let tweak = dun.wrapping_add(index as u128).swap_bytes();
            chunk.copy_from_slice(&key.encrypt(chunk, chunk.len(), tweak));
        }
        out
    };
    if big_endian == found {
        return "; it matches the reference with the DUN as a big-endian tweak (the tweak is \
                little-endian)"
            .into();
    }
    String::new()
}

/// The slot and parameters most checks use.
pub(crate) struct Setup {
    pub data_unit_size: u32,
    pub dun_bytes: u32,
    pub units: u32,
}

/// A fresh key programmed into slot 0 with `setup`'s data unit size and
/// DUN bytes, on a new connection.
pub(crate) fn key_in_slot0(
    ctx: &mut Ctx<'_>,
    setup: &Setup,
) -> Result<(TestKey, Session), crate::check::Stop> {
    let key = ctx.new_key();
    let mut session = ctx.connect()?;
    session.program(&key, 0, setup.data_unit_size, setup.dun_bytes)?;
    Ok((key, session))
}

pub(crate) fn setup(ctx: &Ctx<'_>) -> Result<Setup, crate::check::Stop> {
    let crypto = ctx.crypto()?;
    let data_unit_size = ctx.data_unit_size(&crypto);
    Ok(Setup {
        data_unit_size,
        dun_bytes: crypto.dun_bytes(),
        units: units_per_request(data_unit_size),
    })
}

/// A DUN well inside the range: 1000 (or 0 when dun_bytes is too small).
pub(crate) fn some_dun(dun_bytes: u32, units: u32) -> u128 {
    if dun_limit(dun_bytes) > 1000 + u128::from(units) {
        1000
    } else {
        0
    }
}

fn out_matches_reference(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (key, mut session) = key_in_slot0(ctx, &setup)?;
    Write::in_area(&key, &setup).write_and_verify(&mut session)?;
    Ok(())
}

fn in_decrypts_reference(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (key, mut session) = key_in_slot0(ctx, &setup)?;
    Write::in_area(&key, &setup).read_and_verify(&mut session)?;
    Ok(())
}

/// The first DUN of a request of `units` units whose last DUN is the
/// highest `dun_bytes` hold.
fn highest_first_dun(dun_bytes: u32, units: u32) -> u128 {
    dun_limit(dun_bytes).saturating_sub(u128::from(units.max(1)) - 1)
}

fn highest_dun(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (key, mut session) = key_in_slot0(ctx, &setup)?;
    let write = Write {
        key: &key,
        slot: 0,
        data_unit_size: setup.data_unit_size,
        dun: highest_first_dun(setup.dun_bytes, setup.units),
        units: setup.units,
        sector: AREA_SECTOR,
        segment: None,
    };
    let context = format!(
        "dun_bytes {}, last DUN {}",
        setup.dun_bytes,
        dun_text(&Dun::from_u128(dun_limit(setup.dun_bytes)))
    );
    let plain = write
        .write_and_verify(&mut session)
        .map_err(|failure| failure.context(&context))?;
    write
        .decrypts_to(&mut session, &plain)
        .map_err(|failure| failure.context(&context))?;
    Ok(())
}

fn dun_overflow_refused(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (_key, mut session) = key_in_slot0(ctx, &setup)?;
    // One past the highest first DUN: the last data unit's DUN needs one
    // byte more than dun_bytes.
    let dun = Dun::from_u128(highest_first_dun(setup.dun_bytes, setup.units))
        .checked_add(1)
        .unwrap_or(Dun([u64::MAX; 4]));
    let len = setup.data_unit_size * setup.units;
    let what = format!(
        "a request whose last DUN is one past what dun_bytes {} hold",
        setup.dun_bytes
    );
    let range = CryptoRange {
        sector: AREA_SECTOR,
        slot: 0,
        dun,
        len,
        unit: Some(setup.data_unit_size),
    };
    session.crypto_refused(Q::Request, &range, Status::IoErr, &what)?;
    Ok(())
}

fn data_across_descriptors(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let key = ctx.new_key();
    let seg_max = ctx
        .device
        .config
        .as_ref()
        .map_or(0, |config| config.seg_max);
    let units = setup.units.max(2);
    let len = setup.data_unit_size * units;
    // 1536-byte pieces cut data units in the middle; fewer, larger ones
    // when seg_max is small.
    let mut segment = 1536u32;
    if seg_max > 0 {
        segment = segment.max(len.div_ceil(seg_max).next_multiple_of(512));
    }
    let mut session = ctx.connect()?;
    session.program(&key, 0, setup.data_unit_size, setup.dun_bytes)?;
    let write = Write {
        key: &key,
        slot: 0,
        data_unit_size: setup.data_unit_size,
        dun: some_dun(setup.dun_bytes, units),
        units,
        sector: AREA_SECTOR,
        segment: Some(segment),
    };
    let plain = write.write_and_verify(&mut session)?;
    write.decrypts_to(&mut session, &plain)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_request_ends_on_the_last_dun() {
        assert_eq!(highest_first_dun(4, 2), u32::MAX as u128 - 1);
        assert_eq!(highest_first_dun(8, 8), u64::MAX as u128 - 7);
        assert_eq!(highest_first_dun(16, 2), u128::MAX - 1);
        assert!(Dun::from_u128(highest_first_dun(8, 8)).range_fits(8, 8));
        assert!(
            !Dun::from_u128(highest_first_dun(8, 8) + 1).range_fits(8, 8),
            "one past does not fit"
        );
    }

    #[test]
    fn diagnosis_names_common_mistakes() {
        let key = TestKey::random(1);
        let plain = random_bytes(8192);
        let shifted = key.encrypt(&plain, 4096, 8);
        assert!(diagnose(&key, &plain, &shifted, 4096, 7).contains("DUN + 1"));
        let swapped = key.with_halves_swapped().encrypt(&plain, 4096, 7);
        assert!(diagnose(&key, &plain, &swapped, 4096, 7).contains("halves swapped"));
        assert!(diagnose(&key, &plain, &plain, 4096, 7).contains("plaintext"));
        assert_eq!(diagnose(&key, &plain, &random_bytes(8192), 4096, 7), "");
    }
}
