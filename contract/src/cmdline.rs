//! The guest's kernel parameters that the host sets: a typed
//! [`GuestPlan`], written as `icelab.KEY=VALUE` words by the host
//! ([`GuestPlan::to_cmdline`]) and read back by the guest runner, whose own
//! parser takes these keys by the names below (and more keys of its own,
//! for debugging, with defaults). [`GuestPlan::parse`] is the reference
//! reading, so the round trip is tested here.

use crate::suite::{Expect, GuestSuite, Profile};
use std::fmt;

/// Every parameter starts with this.
pub const PREFIX: &str = "icelab.";

/// `icelab.suite`: a [`GuestSuite`] name.
pub const SUITE: &str = "suite";
/// `icelab.expect`: an [`Expect`] name.
pub const EXPECT: &str = "expect";
/// `icelab.profile`: a [`Profile`] name.
pub const PROFILE: &str = "profile";
/// `icelab.slots`: the device's keyslots.
pub const SLOTS: &str = "slots";
/// `icelab.max_dun_bits`: 8 × the device's max DUN bytes.
pub const MAX_DUN_BITS: &str = "max_dun_bits";
/// `icelab.modes`: the AES-256-XTS data unit size mask (hex with `0x`).
pub const MODES: &str = "modes";
/// `icelab.seed`: 16 hex digits, the seed of keys and contents.
pub const SEED: &str = "seed";
/// `icelab.timeout_factor`: every guest test timeout is multiplied by it.
pub const TIMEOUT_FACTOR: &str = "timeout_factor";
/// `icelab.fio_seconds`: seconds per fio measurement.
pub const FIO_SECONDS: &str = "fio_seconds";
/// `icelab.fio_size`: bytes of each fio file.
pub const FIO_SIZE: &str = "fio_size";
/// `icelab.fio_loads`: comma-separated fio loads.
pub const FIO_LOADS: &str = "fio_loads";

/// What the device's engine offers, as the guest must find it in
/// `/sys/block/*/queue/crypto/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engine {
    /// The profile.
    pub profile: Profile,
    /// `num_keyslots`.
    pub slots: u32,
    /// `max_dun_bits`.
    pub max_dun_bits: u32,
    /// `modes/AES-256-XTS`: the data unit sizes as a mask.
    pub modes: u32,
}

/// The bench suite's fio parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fio {
    /// Seconds per measurement.
    pub seconds: u32,
    /// Bytes per file.
    pub size: u64,
    /// The loads, by name (empty: all).
    pub loads: Vec<String>,
}

/// Everything the host tells the guest runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPlan {
    /// The suite.
    pub suite: GuestSuite,
    /// Native inline encryption or blk-crypto-fallback.
    pub expect: Expect,
    /// The engine, when the device has one.
    pub engine: Option<Engine>,
    /// The seed of the guest's keys and contents.
    pub seed: Option<u64>,
    /// Multiplies every guest test timeout (1: none).
    pub timeout_factor: Option<u32>,
    /// fio parameters (bench suite).
    pub fio: Option<Fio>,
}

/// A word [`GuestPlan::parse`] cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdlineError {
    /// The key, without the prefix.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub why: &'static str,
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}={:?}: {}", self.key, self.value, self.why)
    }
}

impl std::error::Error for CmdlineError {}

impl GuestPlan {
    /// A plan with only the suite and the expectation.
    pub fn new(suite: GuestSuite, expect: Expect) -> Self {
        Self {
            suite,
            expect,
            engine: None,
            seed: None,
            timeout_factor: None,
            fio: None,
        }
    }

    /// The `icelab.*` words, space-separated, in a fixed order.
    pub fn to_cmdline(&self) -> String {
        let mut words = vec![
            word(SUITE, self.suite.name()),
            word(EXPECT, self.expect.name()),
        ];
        if let Some(engine) = &self.engine {
            words.push(word(PROFILE, engine.profile.name()));
            words.push(word(SLOTS, engine.slots));
            words.push(word(MAX_DUN_BITS, engine.max_dun_bits));
            words.push(word(MODES, format_args!("{:#x}", engine.modes)));
        }
        if let Some(seed) = self.seed {
            words.push(word(SEED, format_args!("{seed:016x}")));
        }
        if let Some(factor) = self.timeout_factor {
            words.push(word(TIMEOUT_FACTOR, factor));
        }
        if let Some(fio) = &self.fio {
            words.push(word(FIO_SECONDS, fio.seconds));
            words.push(word(FIO_SIZE, fio.size));
            words.push(word(FIO_LOADS, fio.loads.join(",")));
        }
        words.join(" ")
    }

    /// Reads the plan back from a command line (other words are ignored;
    /// a missing suite or expectation is an error, as are partial engine
    /// or fio parameters).
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let get = |key: &str| {
            cmdline.split_whitespace().rev().find_map(|w| {
                w.strip_prefix(PREFIX)?
                    .strip_prefix(key)?
                    .strip_prefix('=')
                    .map(str::to_owned)
            })
        };
        let need = |key: &'static str| {
            get(key).ok_or(CmdlineError {
                key,
                value: String::new(),
                why: "missing",
            })
        };
        let bad =
            |key: &'static str, value: String, why: &'static str| CmdlineError { key, value, why };
        let number = |key: &'static str, value: String| {
            let parsed = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => value.parse(),
            };
            parsed.map_err(|_| bad(key, value, "not a number"))
        };
        let small = |key: &'static str, value: String| {
            let n = number(key, value.clone())?;
            u32::try_from(n).map_err(|_| bad(key, value, "too large"))
        };
        let suite = need(SUITE)?;
        let suite = GuestSuite::from_name(&suite).ok_or(bad(SUITE, suite, "unknown suite"))?;
        let expect = need(EXPECT)?;
        let expect = Expect::from_name(&expect).ok_or(bad(EXPECT, expect, "unknown"))?;
        let engine = match get(PROFILE) {
            None => None,
            Some(name) => Some(Engine {
                profile: Profile::from_name(&name).ok_or(bad(PROFILE, name, "unknown"))?,
                slots: small(SLOTS, need(SLOTS)?)?,
                max_dun_bits: small(MAX_DUN_BITS, need(MAX_DUN_BITS)?)?,
                modes: small(MODES, need(MODES)?)?,
            }),
        };
        let seed = get(SEED)
            .map(|v| u64::from_str_radix(&v, 16).map_err(|_| bad(SEED, v, "not hex")))
            .transpose()?;
        let timeout_factor = get(TIMEOUT_FACTOR)
            .map(|v| small(TIMEOUT_FACTOR, v))
            .transpose()?;
        let fio = match get(FIO_SECONDS) {
            None => None,
            Some(seconds) => Some(Fio {
                seconds: small(FIO_SECONDS, seconds)?,
                size: number(FIO_SIZE, need(FIO_SIZE)?)?,
                loads: need(FIO_LOADS)?
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }),
        };
        Ok(Self {
            suite,
            expect,
            engine,
            seed,
            timeout_factor,
            fio,
        })
    }
}

fn word(key: &str, value: impl fmt::Display) -> String {
    format!("{PREFIX}{key}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<GuestPlan> {
        let lab = GuestPlan {
            engine: Some(Engine {
                profile: Profile::Emmc,
                slots: 32,
                max_dun_bits: 32,
                modes: 0x1e00,
            }),
            seed: Some(0x00c0_ffee_1234_5678),
            ..GuestPlan::new(GuestSuite::Lab, Expect::Native)
        };
        let bench = GuestPlan {
            timeout_factor: Some(3),
            fio: Some(Fio {
                seconds: 5,
                size: 64 << 20,
                loads: vec!["seqread-128k".into(), "randread-4k".into()],
            }),
            ..GuestPlan::new(GuestSuite::Bench, Expect::Fallback)
        };
        let mut plans = vec![lab, bench];
        plans.extend(GuestSuite::ALL.map(|s| GuestPlan::new(s, Expect::Native)));
        plans
    }

    #[test]
    fn plans_round_trip_through_the_command_line() {
        for plan in examples() {
            let line = plan.to_cmdline();
            assert_eq!(GuestPlan::parse(&line), Ok(plan), "{line}");
        }
    }

    #[test]
    fn the_command_line_is_stable() {
        assert_eq!(
            examples()[0].to_cmdline(),
            "icelab.suite=lab icelab.expect=native icelab.profile=emmc icelab.slots=32 \
             icelab.max_dun_bits=32 icelab.modes=0x1e00 icelab.seed=00c0ffee12345678"
        );
    }

    #[test]
    fn broken_command_lines_are_refused_with_the_key() {
        let error = GuestPlan::parse("icelab.suite=labs icelab.expect=native").unwrap_err();
        assert_eq!(error.key, SUITE);
        let error = GuestPlan::parse("icelab.suite=lab icelab.expect=native icelab.profile=ufs")
            .unwrap_err();
        assert_eq!((error.key, error.why), (SLOTS, "missing"));
        assert!(GuestPlan::parse("icelab.expect=native").is_err());
    }
}
