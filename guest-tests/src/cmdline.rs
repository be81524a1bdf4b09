//! Parameters: the `icelab.*` words of the kernel command line, checked
//! into a [`Config`].
//!
//! Parsing is pure (a string in, a [`Params`] map out) and validation is
//! `impl TryFrom<Params> for Config`, so both are unit-tested without a
//! guest. Unknown `icelab.*` keys are kept as warnings, not errors, so a
//! host that passes keys for a later suite does not break an older runner.

use icelab_contract::cmdline as keys;
pub use icelab_contract::suite::{Expect, GuestSuite as SuiteName, Profile};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The prefix of every parameter the runner reads.
pub const PREFIX: &str = keys::PREFIX;

/// Default results device: the guest's second serial port.
pub const DEFAULT_RESULTS: &str = "/dev/ttyS1";
/// Results "device" meaning the runner's standard output.
pub const STDOUT_RESULTS: &str = "-";
/// Default driver module.
pub const DEFAULT_MODULE: &str = "/lib/modules/icelab_vblk.ko";
/// Default disk the suite formats.
pub const DEFAULT_DISK: &str = "/dev/vda";
/// Default mount point.
pub const DEFAULT_MOUNTPOINT: &str = "/mnt";
/// Default ext4 mount data.
pub const DEFAULT_MOUNT_DATA: &str = "inlinecrypt";
/// Default seconds per fio measurement of the bench suite.
pub const DEFAULT_FIO_SECONDS: u32 = 5;
/// Default size of the bench suite's fio file (64 MiB).
pub const DEFAULT_FIO_SIZE: u64 = 64 << 20;
/// Default modules loaded (best effort, with modprobe) before the driver:
/// the virtio PCI transport, which the driver needs but does not link
/// against, and ext4.
pub const DEFAULT_PRELOAD: &[&str] = &["virtio_pci", "ext4"];

/// Errors in the parameters: each names the key and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A value that does not parse as the key's type.
    #[error("icelab.{key}={value:?}: {why}")]
    BadValue {
        /// The key, without the prefix.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What was expected.
        why: &'static str,
    },
    /// An unterminated double quote on the command line.
    #[error("unterminated double quote in the kernel command line")]
    UnterminatedQuote,
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The raw `icelab.*` parameters: key (without the prefix) to value. A key
/// given twice keeps its last value, like the kernel's own parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Parses a kernel command line (the contents of /proc/cmdline):
    /// whitespace-separated words, double quotes group a value with spaces
    /// (`icelab.x="a b"`) as the kernel's own parser does. Words without the
    /// `icelab.` prefix are ignored; an `icelab.key` without `=` has the
    /// empty value.
    pub fn parse(cmdline: &str) -> Result<Params> {
        let mut params = Params::default();
        for word in split_words(cmdline)? {
            params.add_word(&word);
        }
        Ok(params)
    }

    /// Adds one `icelab.key=value` word (others are ignored).
    pub fn add_word(&mut self, word: &str) {
        if let Some(rest) = word.strip_prefix(PREFIX) {
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            if !key.is_empty() {
                self.values.insert(key.to_owned(), value.to_owned());
            }
        }
    }

    /// Sets every parameter of `other`, overriding ours.
    pub fn merge(&mut self, other: Params) {
        self.values.extend(other.values);
    }

    /// The value of `key` (without the prefix), if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The keys given that the runner does not know.
    pub fn unknown_keys(&self) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|k| format!("{PREFIX}{k}"))
            .collect()
    }
}

/// Splits a command line into words, honouring double quotes (which are
/// removed) like the kernel's `next_arg()`.
fn split_words(cmdline: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(Error::UnterminatedQuote);
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Every key the runner reads (without the prefix).
const KNOWN_KEYS: &[&str] = &[
    keys::SUITE,
    keys::EXPECT,
    keys::SLOTS,
    keys::MAX_DUN_BITS,
    keys::MODES,
    "results",
    keys::SEED,
    "module",
    "disk",
    "mountpoint",
    "mount_data",
    "preload",
    keys::TIMEOUT_FACTOR,
    "fault",
    keys::PROFILE,
    keys::FIO_SECONDS,
    keys::FIO_SIZE,
    keys::FIO_LOADS,
    keys::DEVICES,
    keys::SHARE,
    keys::IO,
    keys::TTY,
    keys::COMMAND,
];

/// What a bad `icelab.suite` is told (a unit test checks it names every
/// suite of the contract).
const SUITES_HINT: &str = "known suites: smoke, lab, lab-reboot, lab-pressure, lab-restart, \
                           lab-default-key, lab-key-limit, lab-wrapped, lab-wrapped-reboot, \
                           lab-wrapped-foreign, matrix, bench, userland";

/// A fault the runner injects into itself (`icelab.fault=KIND:TEST`), to
/// prove its own safety nets: a panic must be reported and power the
/// guest off, a hang must time out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// In which test (its name), before the test's body runs.
    pub test: String,
}

/// The kinds of [`Fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `panic`: the test's thread panics.
    Panic,
    /// `hang`: the test's thread sleeps forever.
    Hang,
}

/// The checked configuration of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `icelab.suite` (default `smoke`).
    pub suite: SuiteName,
    /// `icelab.expect` (default `native`).
    pub expect: Expect,
    /// `icelab.profile` (default `ufs`): the device's engine profile, which
    /// decides which policies the lab suite expects to run natively.
    pub profile: Profile,
    /// `icelab.slots`: expected `num_keyslots`; unchecked when absent.
    pub slots: Option<u32>,
    /// `icelab.max_dun_bits`: expected `max_dun_bits`; unchecked when absent.
    pub max_dun_bits: Option<u32>,
    /// `icelab.modes`: expected `modes/AES-256-XTS` data unit size mask;
    /// unchecked when absent.
    pub modes: Option<u32>,
    /// `icelab.results`: where the JSON lines go (`-` is standard output).
    pub results: PathBuf,
    /// `icelab.seed`: seed of the file contents; random when absent.
    pub seed: Option<u64>,
    /// `icelab.module`: the driver module file.
    pub module: PathBuf,
    /// Whether `icelab.module` was given explicitly (in `--no-init` mode the
    /// driver is only loaded then).
    pub module_given: bool,
    /// `icelab.disk`: the block device the suite formats.
    pub disk: PathBuf,
    /// `icelab.mountpoint`: where the filesystem is mounted.
    pub mountpoint: PathBuf,
    /// `icelab.mount_data`: the ext4 mount data string (default
    /// `inlinecrypt`; a debugging knob for hosts without inline encryption).
    pub mount_data: String,
    /// `icelab.preload`: comma-separated modules loaded with modprobe, best
    /// effort, before the driver.
    pub preload: Vec<String>,
    /// `icelab.timeout_factor`: every test timeout is multiplied by it.
    pub timeout_factor: u32,
    /// `icelab.fault`: a fault injected into the runner itself.
    pub fault: Option<Fault>,
    /// `icelab.fio_seconds`: seconds per fio measurement (bench suite).
    pub fio_seconds: u32,
    /// `icelab.fio_size`: size of the bench suite's fio file in bytes
    /// (written `64M`, `1G`, `65536`).
    pub fio_size: u64,
    /// `icelab.fio_loads`: comma-separated fio loads the bench suite runs
    /// (names as in its table); empty means all. The suite refuses names
    /// it does not know.
    pub fio_loads: Vec<String>,
    /// The userland suite's command, disks and terminal (`icelab.devices`,
    /// `share`, `io`, `tty`, `cmd`); `None` when `icelab.devices` is absent.
    pub userland: Option<keys::Userland>,
}

impl Config {
    /// The defaults for a run as PID 1 (`init`) or as an ordinary process:
    /// the only difference is the results device (the serial port as
    /// init, standard output otherwise).
    pub fn defaults(init: bool) -> Config {
        Config {
            suite: SuiteName::Smoke,
            expect: Expect::Native,
            profile: Profile::Ufs,
            slots: None,
            max_dun_bits: None,
            modes: None,
            results: PathBuf::from(if init {
                DEFAULT_RESULTS
            } else {
                STDOUT_RESULTS
            }),
            seed: None,
            module: PathBuf::from(DEFAULT_MODULE),
            module_given: false,
            disk: PathBuf::from(DEFAULT_DISK),
            mountpoint: PathBuf::from(DEFAULT_MOUNTPOINT),
            mount_data: DEFAULT_MOUNT_DATA.to_owned(),
            preload: DEFAULT_PRELOAD.iter().map(|s| (*s).to_owned()).collect(),
            timeout_factor: 1,
            fault: None,
            fio_seconds: DEFAULT_FIO_SECONDS,
            fio_size: DEFAULT_FIO_SIZE,
            fio_loads: Vec::new(),
            userland: None,
        }
    }

    /// Checks `params` over the defaults for the given mode.
    pub fn from_params(params: &Params, init: bool) -> Result<Config> {
        let mut config = Config::defaults(init);
        if let Some(v) = params.get(keys::SUITE) {
            config.suite =
                SuiteName::from_name(v).ok_or_else(|| bad(keys::SUITE, v, SUITES_HINT))?;
        }
        if let Some(v) = params.get(keys::EXPECT) {
            config.expect = Expect::from_name(v)
                .ok_or_else(|| bad(keys::EXPECT, v, "expected native or fallback"))?;
        }
        if let Some(v) = params.get(keys::PROFILE) {
            config.profile = Profile::from_name(v)
                .ok_or_else(|| bad(keys::PROFILE, v, "expected ufs or emmc"))?;
        }
        config.slots = params
            .get(keys::SLOTS)
            .map(|v| parse_u32(keys::SLOTS, v))
            .transpose()?;
        config.max_dun_bits = params
            .get(keys::MAX_DUN_BITS)
            .map(|v| parse_u32(keys::MAX_DUN_BITS, v))
            .transpose()?;
        config.modes = params
            .get(keys::MODES)
            .map(|v| parse_u32(keys::MODES, v))
            .transpose()?;
        if let Some(v) = params.get("results") {
            config.results = PathBuf::from(nonempty("results", v)?);
        }
        config.seed = params.get(keys::SEED).map(parse_seed).transpose()?;
        if let Some(v) = params.get("module") {
            config.module = PathBuf::from(nonempty("module", v)?);
            config.module_given = true;
        }
        if let Some(v) = params.get("disk") {
            config.disk = PathBuf::from(absolute("disk", v)?);
        }
        if let Some(v) = params.get("mountpoint") {
            config.mountpoint = PathBuf::from(absolute("mountpoint", v)?);
        }
        if let Some(v) = params.get("mount_data") {
            config.mount_data = v.to_owned();
        }
        if let Some(v) = params.get("preload") {
            config.preload = v
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = params.get(keys::TIMEOUT_FACTOR) {
            config.timeout_factor = match parse_u32(keys::TIMEOUT_FACTOR, v)? {
                0 => return Err(bad(keys::TIMEOUT_FACTOR, v, "must be at least 1")),
                n => n,
            };
        }
        config.fault = params.get("fault").map(parse_fault).transpose()?;
        if let Some(v) = params.get(keys::FIO_SECONDS) {
            config.fio_seconds = match parse_u32(keys::FIO_SECONDS, v)? {
                n @ 1..=3600 => n,
                _ => return Err(bad(keys::FIO_SECONDS, v, "expected 1 to 3600")),
            };
        }
        if let Some(v) = params.get(keys::FIO_SIZE) {
            config.fio_size = parse_size(v)
                .filter(|n| n.is_multiple_of(4096) && (1 << 20..=1 << 40).contains(n))
                .ok_or_else(|| {
                    bad(
                        keys::FIO_SIZE,
                        v,
                        "expected a multiple of 4 KiB from 1M to 1T, like 64M",
                    )
                })?;
        }
        if let Some(v) = params.get(keys::FIO_LOADS) {
            config.fio_loads = v
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
        }
        config.userland = keys::Userland::parse_with(|key| params.get(key).map(str::to_owned))
            .map_err(|e| Error::BadValue {
                key: e.key,
                value: e.value,
                why: e.why,
            })?;
        if config.suite == SuiteName::Userland && config.userland.is_none() {
            return Err(bad(
                keys::DEVICES,
                "",
                "the userland suite needs icelab.devices, icelab.share and icelab.io",
            ));
        }
        Ok(config)
    }

    /// The disk's name in /sys/block (`vda` for `/dev/vda`).
    pub fn disk_name(&self) -> String {
        self.disk
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn bad(key: &'static str, value: &str, why: &'static str) -> Error {
    Error::BadValue {
        key,
        value: value.to_owned(),
        why,
    }
}

fn nonempty<'a>(key: &'static str, v: &'a str) -> Result<&'a str> {
    if v.is_empty() {
        Err(bad(key, v, "must not be empty"))
    } else {
        Ok(v)
    }
}

fn absolute<'a>(key: &'static str, v: &'a str) -> Result<&'a str> {
    if v.starts_with('/') && v.len() > 1 {
        Ok(v)
    } else {
        Err(bad(key, v, "expected an absolute path"))
    }
}

/// Parses a decimal or `0x` hexadecimal u32 (the sysfs modes mask is
/// written in hex, the counts in decimal).
fn parse_u32(key: &'static str, v: &str) -> Result<u32> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| bad(key, v, "expected a decimal or 0x-hex 32-bit number"))
}

/// Parses `panic:TEST` or `hang:TEST`.
fn parse_fault(v: &str) -> Result<Fault> {
    let (kind, test) = v
        .split_once(':')
        .ok_or_else(|| bad("fault", v, "expected panic:TEST or hang:TEST"))?;
    let kind = match kind {
        "panic" => FaultKind::Panic,
        "hang" => FaultKind::Hang,
        _ => return Err(bad("fault", v, "expected panic:TEST or hang:TEST")),
    };
    if test.is_empty() {
        return Err(bad("fault", v, "expected panic:TEST or hang:TEST"));
    }
    Ok(Fault {
        kind,
        test: test.to_owned(),
    })
}

/// Parses a byte count with an optional binary suffix (K, M, G, T).
fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.chars().last()? {
        'K' | 'k' => (&v[..v.len() - 1], 10),
        'M' | 'm' => (&v[..v.len() - 1], 20),
        'G' | 'g' => (&v[..v.len() - 1], 30),
        'T' | 't' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Parses a 64-bit seed written in hex, with or without `0x`.
fn parse_seed(v: &str) -> Result<u64> {
    let hex = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    if hex.is_empty() || hex.len() > 16 {
        return Err(bad(keys::SEED, v, "expected 1 to 16 hex digits"));
    }
    u64::from_str_radix(hex, 16).map_err(|_| bad(keys::SEED, v, "expected 1 to 16 hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cmdline: &str) -> Result<Config> {
        Config::from_params(&Params::parse(cmdline)?, true)
    }

    #[test]
    fn parses_a_typical_command_line() {
        let c = config(
            "console=ttyS0 panic=-1 icelab.suite=smoke icelab.expect=native icelab.slots=32 \
             icelab.max_dun_bits=64 icelab.modes=0x1e00 icelab.results=/dev/ttyS1 \
             icelab.seed=00c0ffee12345678 rdinit=/init",
        )
        .expect("valid");
        assert_eq!(c.suite, SuiteName::Smoke);
        assert_eq!(c.expect, Expect::Native);
        assert_eq!(c.slots, Some(32));
        assert_eq!(c.max_dun_bits, Some(64));
        assert_eq!(c.modes, Some(0x1e00));
        assert_eq!(c.results, PathBuf::from("/dev/ttyS1"));
        assert_eq!(c.seed, Some(0x00c0_ffee_1234_5678));
        assert_eq!(c.disk, PathBuf::from("/dev/vda"));
        assert_eq!(c.disk_name(), "vda");
    }

    #[test]
    fn defaults_depend_on_mode() {
        let init = Config::from_params(&Params::default(), true).expect("defaults");
        assert_eq!(init.results, PathBuf::from(DEFAULT_RESULTS));
        assert_eq!(init.expect, Expect::Native);
        assert_eq!(init.module, PathBuf::from(DEFAULT_MODULE));
        assert!(!init.module_given);
        assert_eq!(init.mount_data, "inlinecrypt");
        assert_eq!(init.preload, vec!["virtio_pci", "ext4"]);
        assert_eq!(init.timeout_factor, 1);
        let plain = Config::from_params(&Params::default(), false).expect("defaults");
        assert_eq!(plain.results, PathBuf::from("-"));
    }

    #[test]
    fn fallback_and_overrides() {
        let c = config(
            "icelab.expect=fallback icelab.disk=/dev/loop3 icelab.module=/x.ko \
             icelab.mountpoint=/tmp/m icelab.mount_data= icelab.preload= icelab.timeout_factor=4",
        )
        .expect("valid");
        assert_eq!(c.expect, Expect::Fallback);
        assert_eq!(c.disk_name(), "loop3");
        assert!(c.module_given);
        assert_eq!(c.mount_data, "");
        assert!(c.preload.is_empty());
        assert_eq!(c.timeout_factor, 4);
    }

    #[test]
    fn last_value_wins_and_quotes_group() {
        let p = Params::parse(r#"icelab.expect=fallback icelab.mount_data="inlinecrypt,noatime" icelab.expect=native"#)
            .expect("parses");
        assert_eq!(p.get("expect"), Some("native"));
        assert_eq!(p.get("mount_data"), Some("inlinecrypt,noatime"));
        let p = Params::parse(r#"icelab.x="a b" y"#).expect("parses");
        assert_eq!(p.get("x"), Some("a b"));
        assert_eq!(
            Params::parse(r#"icelab.x="a b"#),
            Err(Error::UnterminatedQuote)
        );
    }

    #[test]
    fn numbers_accept_decimal_and_hex() {
        assert_eq!(
            config("icelab.modes=7680").expect("valid").modes,
            Some(0x1e00)
        );
        assert_eq!(
            config("icelab.modes=0X1E00").expect("valid").modes,
            Some(0x1e00)
        );
        assert_eq!(config("icelab.seed=0xff").expect("valid").seed, Some(255));
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let err = config("icelab.slots=many").expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "icelab.slots=\"many\": expected a decimal or 0x-hex 32-bit number"
        );
        assert!(config("icelab.expect=maybe").is_err());
        assert!(config("icelab.suite=labs").is_err());
        assert!(config("icelab.seed=").is_err());
        assert!(config("icelab.seed=12345678123456781").is_err());
        assert!(config("icelab.seed=xyz").is_err());
        assert!(config("icelab.disk=vda").is_err());
        assert!(config("icelab.results=").is_err());
        assert!(config("icelab.timeout_factor=0").is_err());
        assert!(config("icelab.slots=4294967296").is_err());
    }

    #[test]
    fn faults_parse() {
        let c = config("icelab.fault=hang:mkfs-mount").expect("valid");
        assert_eq!(
            c.fault,
            Some(Fault {
                kind: FaultKind::Hang,
                test: "mkfs-mount".into()
            })
        );
        assert_eq!(
            config("icelab.fault=panic:x")
                .expect("valid")
                .fault
                .map(|f| f.kind),
            Some(FaultKind::Panic)
        );
        assert!(config("icelab.fault=panic").is_err());
        assert!(config("icelab.fault=panic:").is_err());
        assert!(config("icelab.fault=crash:x").is_err());
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let p = Params::parse("icelab.suite=smoke icelab.slotz=3 quiet").expect("parses");
        assert_eq!(p.unknown_keys(), vec!["icelab.slotz"]);
        assert!(Config::from_params(&p, true).is_ok());
    }

    #[test]
    fn command_line_words_override() {
        let mut p = Params::parse("icelab.expect=native").expect("parses");
        let mut extra = Params::default();
        extra.add_word("icelab.expect=fallback");
        extra.add_word("--no-init");
        p.merge(extra);
        assert_eq!(p.get("expect"), Some("fallback"));
    }

    #[test]
    fn fio_keys_parse_and_are_checked() {
        let d = config("").expect("defaults");
        assert_eq!((d.fio_seconds, d.fio_size), (5, 64 << 20));
        let c = config("icelab.fio_seconds=2 icelab.fio_size=16M").expect("valid");
        assert_eq!((c.fio_seconds, c.fio_size), (2, 16 << 20));
        assert_eq!(
            config("icelab.fio_size=1g").expect("valid").fio_size,
            1 << 30
        );
        assert_eq!(
            config("icelab.fio_size=8388608").expect("valid").fio_size,
            8 << 20
        );
        for bad in [
            "icelab.fio_seconds=0",
            "icelab.fio_seconds=x",
            "icelab.fio_size=64X",
            "icelab.fio_size=512K",
            "icelab.fio_size=1048577",
            "icelab.fio_size=",
            "icelab.fio_size=99999999999T",
        ] {
            assert!(config(bad).is_err(), "{bad}");
        }
        assert!(d.fio_loads.is_empty());
        assert_eq!(
            config("icelab.fio_loads=seqread-128k,randread-4k")
                .expect("valid")
                .fio_loads,
            ["seqread-128k", "randread-4k"]
        );
        assert!(
            Params::parse("icelab.fio_size=4M")
                .expect("parses")
                .unknown_keys()
                .is_empty()
        );
    }

    #[test]
    fn lab_suites_and_profile_parse() {
        for (word, suite) in [
            ("lab", SuiteName::Lab),
            ("lab-reboot", SuiteName::LabReboot),
            ("lab-pressure", SuiteName::LabPressure),
            ("lab-restart", SuiteName::LabRestart),
            ("lab-default-key", SuiteName::LabDefaultKey),
            ("lab-key-limit", SuiteName::LabKeyLimit),
            ("lab-wrapped", SuiteName::LabWrapped),
            ("lab-wrapped-reboot", SuiteName::LabWrappedReboot),
            ("lab-wrapped-foreign", SuiteName::LabWrappedForeign),
            ("matrix", SuiteName::Matrix),
            ("bench", SuiteName::Bench),
        ] {
            let parsed = config(&format!("icelab.suite={word}")).expect(word);
            assert_eq!(parsed.suite, suite);
            assert_eq!(parsed.suite.name(), word);
        }
        assert_eq!(config("").expect("defaults").profile, Profile::Ufs);
        assert_eq!(
            config("icelab.profile=emmc").expect("emmc").profile,
            Profile::Emmc
        );
        assert!(config("icelab.profile=nvme").is_err());
    }

    /// The host writes the guest's parameters with the contract's
    /// [`icelab_contract::cmdline::GuestPlan`]; whatever it writes, this
    /// runner must read as the same values. A renamed key, suite or
    /// profile on either side fails here, not in a boot.
    #[test]
    fn the_runner_reads_what_the_host_writes() {
        use icelab_contract::cmdline::{Engine, Fio, GuestPlan};
        use icelab_contract::cmdline::{Userland, UserlandIo};
        let userland = Userland {
            command: Some("cd /share && ./check -g encrypt".into()),
            devices: 2,
            share: true,
            io: UserlandIo::Capture,
            terminal: Some((40, 120)),
        };
        let mut plans: Vec<GuestPlan> = SuiteName::ALL
            .iter()
            .map(|&suite| GuestPlan {
                userland: (suite == SuiteName::Userland).then(|| userland.clone()),
                ..GuestPlan::new(suite, Expect::Fallback)
            })
            .collect();
        plans.push(GuestPlan {
            engine: Some(Engine {
                profile: Profile::Emmc,
                slots: 2,
                max_dun_bits: 32,
                modes: 0x1e00,
            }),
            seed: Some(0xfeed_f00d_0123_4567),
            timeout_factor: Some(4),
            fio: Some(Fio {
                seconds: 7,
                size: 32 << 20,
                loads: vec!["seqread-128k".into()],
            }),
            ..GuestPlan::new(SuiteName::Bench, Expect::Native)
        });
        for plan in plans {
            let line = plan.to_cmdline();
            let params = Params::parse(&line).expect("words");
            assert!(params.unknown_keys().is_empty(), "{line}");
            let config = Config::from_params(&params, true).expect(&line);
            assert_eq!(config.suite, plan.suite, "{line}");
            assert_eq!(config.expect, plan.expect, "{line}");
            assert_eq!(config.seed, plan.seed, "{line}");
            assert_eq!(config.timeout_factor, plan.timeout_factor.unwrap_or(1));
            if let Some(engine) = &plan.engine {
                assert_eq!(config.profile, engine.profile);
                assert_eq!(config.slots, Some(engine.slots));
                assert_eq!(config.max_dun_bits, Some(engine.max_dun_bits));
                assert_eq!(config.modes, Some(engine.modes));
            }
            if let Some(fio) = &plan.fio {
                assert_eq!(config.fio_seconds, fio.seconds);
                assert_eq!(config.fio_size, fio.size);
                assert_eq!(config.fio_loads, fio.loads);
            }
            assert_eq!(config.userland, plan.userland, "{line}");
        }
        let error = Config::from_params(
            &Params::parse("icelab.suite=userland").expect("words"),
            true,
        )
        .unwrap_err();
        assert!(error.to_string().contains("icelab.devices"), "{error}");
    }

    #[test]
    fn a_bad_suite_lists_every_suite_of_the_contract() {
        for suite in SuiteName::ALL {
            assert!(
                SUITES_HINT.contains(suite.name()),
                "{} missing from the hint",
                suite.name()
            );
        }
    }
}
