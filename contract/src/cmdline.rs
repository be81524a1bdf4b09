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
/// `icelab.cmd`: the userland suite's command, base64url without padding
/// (absent: an interactive shell).
pub const COMMAND: &str = "cmd";
/// `icelab.devices`: how many icelab devices the userland boot has (the
/// first virtio disks, before the root and share disks).
pub const DEVICES: &str = "devices";
/// `icelab.share`: `1` when the share disk is attached.
pub const SHARE: &str = "share";
/// `icelab.io`: `console` or `capture` ([`UserlandIo`]).
pub const IO: &str = "io";
/// `icelab.tty`: `ROWSxCOLS` of the host's terminal, for the shell.
pub const TTY: &str = "tty";

/// The longest `--guest-cmd` the kernel command line carries (x86 allows
/// 2048 bytes in all; base64 makes 4 of every 3 bytes).
pub const MAX_COMMAND: usize = 1024;

/// The serial number (virtio-blk GET_ID) of the userland's root disk.
pub const ROOT_SERIAL: &str = "icelab-root";
/// The serial number of the share disk.
pub const SHARE_SERIAL: &str = "icelab-share";
/// Where the guest mounts the share disk.
pub const SHARE_MOUNT: &str = "/share";

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

/// Where the userland's command reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserlandIo {
    /// stdin, stdout and stderr are the console (ttyS0), its controlling
    /// terminal: `icelab shell`.
    Console,
    /// stdin is /dev/null; stdout and stderr go to the output port
    /// (ttyS2), which the host keeps: `icelab run --guest-cmd`.
    Capture,
}

impl UserlandIo {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            UserlandIo::Console => "console",
            UserlandIo::Capture => "capture",
        }
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<UserlandIo> {
        [UserlandIo::Console, UserlandIo::Capture]
            .into_iter()
            .find(|io| io.name() == name)
    }
}

/// The userland suite's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Userland {
    /// The command (`bash -c`); `None`: an interactive login shell.
    pub command: Option<String>,
    /// icelab devices, the first virtio disks (`/dev/vda`, ...).
    pub devices: u32,
    /// The share disk is attached (mounted at [`SHARE_MOUNT`]).
    pub share: bool,
    /// Where the command's stdio goes.
    pub io: UserlandIo,
    /// The host terminal's rows and columns.
    pub terminal: Option<(u16, u16)>,
}

impl Userland {
    /// Reads the userland parameters through `get` (a key without the
    /// prefix to its value): `None` without [`DEVICES`]. The guest runner
    /// reads its own parameter map with this too.
    pub fn parse_with(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Userland>, CmdlineError> {
        let bad =
            |key: &'static str, value: String, why: &'static str| CmdlineError { key, value, why };
        let need = |key: &'static str| get(key).ok_or(bad(key, String::new(), "missing"));
        let Some(devices) = get(DEVICES) else {
            return Ok(None);
        };
        let devices = devices
            .parse()
            .map_err(|_| bad(DEVICES, devices, "not a number"))?;
        let share = match need(SHARE)?.as_str() {
            "0" => false,
            "1" => true,
            other => return Err(bad(SHARE, other.to_owned(), "not 0 or 1")),
        };
        let io = need(IO)?;
        let io = UserlandIo::from_name(&io).ok_or(bad(IO, io, "not console or capture"))?;
        let terminal = get(TTY)
            .map(|v| {
                let parsed = v
                    .split_once('x')
                    .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)));
                parsed.ok_or(bad(TTY, v, "not ROWSxCOLS"))
            })
            .transpose()?;
        let command = get(COMMAND)
            .map(|v| decode_command(&v).ok_or(bad(COMMAND, v, "not base64url UTF-8")))
            .transpose()?;
        Ok(Some(Userland {
            command,
            devices,
            share,
            io,
            terminal,
        }))
    }
}

/// Encodes a command for [`COMMAND`].
pub fn encode_command(command: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(command)
}

/// Decodes [`COMMAND`]'s value.
pub fn decode_command(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
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
    /// The userland suite's command and disks.
    pub userland: Option<Userland>,
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
            userland: None,
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
        if let Some(userland) = &self.userland {
            words.push(word(DEVICES, userland.devices));
            words.push(word(SHARE, u8::from(userland.share)));
            words.push(word(IO, userland.io.name()));
            if let Some((rows, cols)) = userland.terminal {
                words.push(word(TTY, format_args!("{rows}x{cols}")));
            }
            if let Some(command) = &userland.command {
                words.push(word(COMMAND, encode_command(command)));
            }
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
        let userland = Userland::parse_with(get)?;
        Ok(Self {
            suite,
            expect,
            engine,
            seed,
            timeout_factor,
            fio,
            userland,
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
        let userland = GuestPlan {
            userland: Some(Userland {
                command: Some("cd /share && ./run \"a b\" 'c=d' && echo ok".into()),
                devices: 2,
                share: true,
                io: UserlandIo::Capture,
                terminal: None,
            }),
            ..GuestPlan::new(GuestSuite::Userland, Expect::Native)
        };
        let shell = GuestPlan {
            userland: Some(Userland {
                command: None,
                devices: 1,
                share: false,
                io: UserlandIo::Console,
                terminal: Some((50, 132)),
            }),
            ..GuestPlan::new(GuestSuite::Userland, Expect::Fallback)
        };
        let mut plans = vec![lab, bench, userland, shell];
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
        let userland = "icelab.suite=userland icelab.expect=native icelab.devices=2";
        let error = GuestPlan::parse(userland).unwrap_err();
        assert_eq!((error.key, error.why), (SHARE, "missing"));
        let error = GuestPlan::parse(&format!(
            "{userland} icelab.share=1 icelab.io=capture icelab.cmd=%%"
        ))
        .unwrap_err();
        assert_eq!(error.key, COMMAND);
    }

    #[test]
    fn a_command_survives_the_kernel_command_line() {
        let command = "for f in /share/*; do echo \"$f\" = 'x'; done; ./check -g encrypt";
        let encoded = encode_command(command);
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{encoded}"
        );
        assert_eq!(decode_command(&encoded).as_deref(), Some(command));
        assert!(encode_command(&"x".repeat(MAX_COMMAND)).len() < 1400);
    }
}
