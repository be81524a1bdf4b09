//! The boot plan of a suite: which boots `icelab run` makes, in which
//! order, each with its device, image and guest command line.
//!
//! Pure (no processes, no files), so the plan is unit-tested. The lab
//! suite's plan is the contract of issue 4 between the host and the guest
//! runner (guest-tests/README.md): the `ufs` boot writes a fresh image,
//! `ufs-reboot` boots the SAME image again, `emmc` runs the same tests on
//! a device with 4 DUN bytes, `pressure` gives the device 2 keyslots,
//! `restart` writes while the host kills and restarts the device,
//! `default-key` runs on a device with a default key and a key usage
//! limit. The `lab-wrapped` suite's `wrapped` boot uses hardware-wrapped
//! keys with a key manager state file, `wrapped-reboot` boots its image
//! again on the same state, `wrapped-foreign` on another.

use crate::serve_process::{CommandTemplate, DeviceOptions};
use icelab_contract::cmdline::{Engine, GuestPlan};
use icelab_contract::device::{KeyUsageLimit, LimitAction};
use icelab_contract::suite::{Expect, GuestSuite, Profile};
use icelab_emulator::engine::{Capabilities, Fault, ProfileName};
use std::path::{Path, PathBuf};

/// A suite the host knows how to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// One native boot and the negative control (no inline encryption).
    Smoke,
    /// The lab plan: `ufs`, `ufs-reboot`, `emmc`, `pressure`.
    Lab,
    /// The `ufs` and `ufs-reboot` boots of the lab plan (the second boot
    /// needs the first one's image).
    LabReboot,
    /// The `pressure` boot of the lab plan alone.
    LabPressure,
    /// The `restart` boot of the lab plan alone.
    LabRestart,
    /// The `default-key` boot of the lab plan alone.
    LabDefaultKey,
    /// Hardware-wrapped keys: `wrapped`, `wrapped-reboot` (same image and
    /// device secret), `wrapped-foreign` (same image, another secret).
    LabWrapped,
    /// One `ufs` boot of the policy matrix (the fault runs use it).
    Matrix,
    /// One native boot of the guest's bench suite.
    Bench,
}

impl Suite {
    /// Every suite, in the order the help lists them.
    pub const ALL: [Suite; 9] = [
        Suite::Smoke,
        Suite::Lab,
        Suite::LabReboot,
        Suite::LabPressure,
        Suite::LabRestart,
        Suite::LabDefaultKey,
        Suite::LabWrapped,
        Suite::Matrix,
        Suite::Bench,
    ];

    /// The name on the command line (`--suite`).
    pub fn name(self) -> &'static str {
        match self {
            Suite::Smoke => "smoke",
            Suite::Lab => "lab",
            Suite::LabReboot => "lab-reboot",
            Suite::LabPressure => "lab-pressure",
            Suite::LabRestart => "lab-restart",
            Suite::LabDefaultKey => "lab-default-key",
            Suite::LabWrapped => "lab-wrapped",
            Suite::Matrix => "matrix",
            Suite::Bench => "bench",
        }
    }

    /// The suite named `name`, if any.
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// True for the suites whose boots leave a manifest for the verifier.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            Suite::Lab
                | Suite::LabReboot
                | Suite::LabPressure
                | Suite::LabRestart
                | Suite::LabDefaultKey
                | Suite::LabWrapped
                | Suite::Matrix
        )
    }
}

/// Where a boot's image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// A new sparse image of this many bytes.
    Fresh(u64),
    /// The image an earlier boot of the plan (by name) left behind, as it
    /// is: a second boot of the same file system.
    SameAs(&'static str),
}

/// What the host expects of the device's counters after a boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Keyslots programmed, CRYPTO_OUT and CRYPTO_IN requests: the boot
    /// writes and reads encrypted data.
    ReadWrite,
    /// Keyslots programmed and CRYPTO_IN requests; writes are allowed but
    /// not required (a second boot that reads what the first wrote).
    Read,
    /// No keyslot and no crypto request at all (a device without inline
    /// encryption).
    None,
}

/// One boot of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// Name in reports (`ufs`, `control`, ...) and directory under `--keep`.
    pub name: &'static str,
    /// The guest runner's suite (`icelab.suite=`).
    pub guest_suite: GuestSuite,
    /// Engine profile; `None` for a device without inline encryption.
    pub profile: Option<ProfileName>,
    /// Keyslots, overriding the profile's (`icelab serve --slots`).
    pub slots: Option<u16>,
    /// The image.
    pub image: Image,
    /// The seed of the guest's keys and contents (`icelab.seed=`).
    pub seed: u64,
    /// The device's counters this boot must show.
    pub traffic: Traffic,
    /// Run the verifier on the image after the boot.
    pub verify: bool,
    /// Kill the device (SIGKILL) and start it again when the guest
    /// signals `restart-device`; QEMU reconnects to it.
    pub restart_device: bool,
    /// Give the device a default key (made from the boot's seed, see
    /// [`default_key`]) and verify the image with it.
    pub default_key: bool,
    /// `--key-usage-limit` of the device.
    pub key_usage_limit: Option<KeyUsageLimit>,
    /// Hardware-wrapped keys with a persistent device secret: the boot
    /// (by name) in whose directory the key manager's state file
    /// ([`KEY_MANAGER_STATE_FILE`]) lives (`icelab serve
    /// --key-manager-state`). Boots naming the same one share the
    /// secret; the boot naming itself starts from a new one. Such boots
    /// expect the key manager's refusals the guest provokes.
    pub key_manager_state: Option<&'static str>,
}

/// Everything the plan depends on.
#[derive(Clone, Debug)]
pub struct PlanInput {
    /// The suite.
    pub suite: Suite,
    /// `--profile`: only the boots of this profile; `None` = the suite's
    /// default (both for lab, ufs for the rest).
    pub profile: Option<ProfileName>,
    /// `--no-control`: leave out smoke's negative control.
    pub no_control: bool,
    /// The run's seed (`--seed`); each boot's seed is derived from it.
    pub seed: u64,
}

/// Size of the smoke suite's images.
pub const SMOKE_IMAGE_SIZE: u64 = 512 << 20;
/// Size of the lab suite's images (the contract: 1 GiB).
pub const LAB_IMAGE_SIZE: u64 = 1 << 30;
/// Keyslots of the pressure boot.
pub const PRESSURE_SLOTS: u16 = 2;
/// The default-key boot's key usage limit: the path-selection test's
/// IV_INO_LBLK_64 key (7 blocks) and the default key pass it, a per-file
/// key of a one-block file does not.
pub const DEFAULT_KEY_BOOT_LIMIT: KeyUsageLimit = KeyUsageLimit {
    bytes: 16 << 10,
    action: LimitAction::Warn,
};
/// The key-limit boot's limit: the guest's 8 KiB file stays within it, its
/// 256 KiB file does not.
pub const KEY_LIMIT_BOOT_LIMIT: KeyUsageLimit = KeyUsageLimit {
    bytes: 64 << 10,
    action: LimitAction::Refuse,
};
/// Request queues of every boot's device (and QEMU's `num-queues`).
pub const QUEUES: u16 = 2;
/// The key manager's state file of a boot with
/// [`BootPlan::key_manager_state`], in the directory of the boot it names.
pub const KEY_MANAGER_STATE_FILE: &str = "km.state";

/// Whether `boot`'s guest asks the host to scan its memory
/// (`guest-memory-scan`, crate::memory_scan): the lab suite's first boot
/// of each profile (a raw key found: the scan works) and `lab-wrapped`'s
/// first boot (no hardware-wrapped key found, the raw-key control found).
pub fn scans_memory(boot: &BootPlan) -> bool {
    matches!(boot.guest_suite, GuestSuite::Lab | GuestSuite::LabWrapped)
}

/// The key manager state file of `boot` under the run's directory `base`.
pub fn key_manager_state_path(boot: &BootPlan, base: &Path) -> Option<PathBuf> {
    boot.key_manager_state
        .map(|owner| base.join(owner).join(KEY_MANAGER_STATE_FILE))
}

/// The boots of `input.suite`, in order. Empty when `--profile` leaves no
/// boot of the suite (lab-pressure with `--profile emmc`): the caller
/// reports that as a usage error.
pub fn plan(input: &PlanInput) -> Vec<BootPlan> {
    let wanted = |p: ProfileName| input.profile.is_none_or(|only| only == p);
    let single = |name, guest_suite, traffic, verify| BootPlan {
        name,
        guest_suite,
        profile: Some(input.profile.unwrap_or(ProfileName::Ufs)),
        slots: None,
        image: Image::Fresh(if verify {
            LAB_IMAGE_SIZE
        } else {
            SMOKE_IMAGE_SIZE
        }),
        seed: boot_seed(input.seed, 1),
        traffic,
        verify,
        restart_device: false,
        default_key: false,
        key_usage_limit: None,
        key_manager_state: None,
    };
    let ufs = BootPlan {
        name: "ufs",
        guest_suite: GuestSuite::Lab,
        profile: Some(ProfileName::Ufs),
        slots: None,
        image: Image::Fresh(LAB_IMAGE_SIZE),
        seed: boot_seed(input.seed, 1),
        traffic: Traffic::ReadWrite,
        verify: true,
        restart_device: false,
        default_key: false,
        key_usage_limit: None,
        key_manager_state: None,
    };
    let ufs_reboot = BootPlan {
        name: "ufs-reboot",
        guest_suite: GuestSuite::LabReboot,
        image: Image::SameAs("ufs"),
        traffic: Traffic::Read,
        ..ufs.clone()
    };
    let emmc = BootPlan {
        name: "emmc",
        profile: Some(ProfileName::Emmc),
        seed: boot_seed(input.seed, 2),
        ..ufs.clone()
    };
    let pressure = BootPlan {
        name: "pressure",
        guest_suite: GuestSuite::LabPressure,
        slots: Some(PRESSURE_SLOTS),
        seed: boot_seed(input.seed, 3),
        ..ufs.clone()
    };
    let restart = BootPlan {
        name: "restart",
        guest_suite: GuestSuite::LabRestart,
        seed: boot_seed(input.seed, 4),
        restart_device: true,
        ..ufs.clone()
    };
    let default_key = BootPlan {
        name: "default-key",
        guest_suite: GuestSuite::LabDefaultKey,
        seed: boot_seed(input.seed, 5),
        default_key: true,
        key_usage_limit: Some(DEFAULT_KEY_BOOT_LIMIT),
        ..ufs.clone()
    };
    let key_limit = BootPlan {
        name: "key-limit",
        guest_suite: GuestSuite::LabKeyLimit,
        image: Image::Fresh(SMOKE_IMAGE_SIZE),
        seed: boot_seed(input.seed, 6),
        key_usage_limit: Some(KEY_LIMIT_BOOT_LIMIT),
        ..ufs.clone()
    };
    let wrapped = BootPlan {
        name: "wrapped",
        guest_suite: GuestSuite::LabWrapped,
        image: Image::Fresh(SMOKE_IMAGE_SIZE),
        seed: boot_seed(input.seed, 7),
        key_manager_state: Some("wrapped"),
        ..ufs.clone()
    };
    let wrapped_reboot = BootPlan {
        name: "wrapped-reboot",
        guest_suite: GuestSuite::LabWrappedReboot,
        image: Image::SameAs("wrapped"),
        traffic: Traffic::Read,
        ..wrapped.clone()
    };
    let wrapped_foreign = BootPlan {
        name: "wrapped-foreign",
        guest_suite: GuestSuite::LabWrappedForeign,
        key_manager_state: Some("wrapped-foreign"),
        ..wrapped_reboot.clone()
    };
    match input.suite {
        Suite::Smoke => {
            let mut boots = vec![single(
                "native",
                GuestSuite::Smoke,
                Traffic::ReadWrite,
                false,
            )];
            if !input.no_control {
                boots.push(BootPlan {
                    name: "control",
                    profile: None,
                    traffic: Traffic::None,
                    ..boots[0].clone()
                });
            }
            boots
        }
        Suite::Matrix => vec![BootPlan {
            guest_suite: GuestSuite::Matrix,
            profile: Some(input.profile.unwrap_or(ProfileName::Ufs)),
            ..ufs
        }],
        Suite::Bench => vec![single(
            "native",
            GuestSuite::Bench,
            Traffic::ReadWrite,
            false,
        )],
        Suite::Lab
        | Suite::LabReboot
        | Suite::LabPressure
        | Suite::LabRestart
        | Suite::LabDefaultKey
        | Suite::LabWrapped => {
            let boots = match input.suite {
                Suite::Lab => vec![
                    ufs,
                    ufs_reboot,
                    emmc,
                    pressure,
                    restart,
                    default_key,
                    key_limit,
                ],
                Suite::LabReboot => vec![ufs, ufs_reboot],
                Suite::LabRestart => vec![restart],
                Suite::LabDefaultKey => vec![default_key, key_limit],
                Suite::LabWrapped => vec![wrapped, wrapped_reboot, wrapped_foreign],
                _ => vec![pressure],
            };
            boots
                .into_iter()
                .filter(|b| b.profile.is_some_and(wanted))
                .collect()
        }
    }
}

/// The boot of `icelab bench guest`: the guest's bench suite on a fresh
/// image of `image_size` bytes, on a `ufs` device (`native`) or a device
/// without inline encryption (blk-crypto-fallback).
pub fn bench_boot(name: &'static str, native: bool, image_size: u64) -> BootPlan {
    BootPlan {
        name,
        guest_suite: GuestSuite::Bench,
        profile: native.then_some(ProfileName::Ufs),
        slots: None,
        image: Image::Fresh(image_size),
        seed: 0,
        traffic: if native {
            Traffic::ReadWrite
        } else {
            Traffic::None
        },
        verify: false,
        restart_device: false,
        default_key: false,
        key_usage_limit: None,
        key_manager_state: None,
    }
}

/// The default key of a boot with [`BootPlan::default_key`]: 64 bytes
/// from its seed (another boot of the same seed gets the same key, so a
/// run repeats), distinct from every fscrypt master key of the guest
/// (those come from per-name seeds).
pub fn default_key(boot: &BootPlan) -> zeroize::Zeroizing<[u8; 64]> {
    const DEFAULT_KEY_SALT: u64 = 0xdefa_017e_c0de_5eed;
    zeroize::Zeroizing::new(icelab_verifier::manifest::master_key_from_seed(
        icelab_verifier::manifest::splitmix64(boot.seed ^ DEFAULT_KEY_SALT),
    ))
}

/// The seed of the plan's `n`-th seed slot: SplitMix64 of the run's seed
/// plus `n`, so one `--seed` repeats every boot and boots differ.
pub fn boot_seed(run_seed: u64, n: u64) -> u64 {
    icelab_verifier::manifest::splitmix64(run_seed.wrapping_add(n))
}

/// The engine capabilities a boot's device offers (`None` without inline
/// encryption).
pub fn capabilities(boot: &BootPlan) -> Option<Capabilities> {
    let mut caps = boot.profile?.capabilities();
    if let Some(slots) = boot.slots {
        caps.slots = slots;
    }
    Some(caps)
}

/// The device a run tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// `icelab serve`, started by the lab with each boot's options.
    IcelabServe,
    /// The user's device (`icelab run --device-cmd`), started by this
    /// command on each boot's socket and image, with no other option.
    Command(CommandTemplate),
}

impl Device {
    /// `icelab serve` or `command "CMD"`.
    pub fn describe(&self) -> String {
        match self {
            Device::IcelabServe => "icelab serve".to_owned(),
            Device::Command(template) => format!("command {:?}", template.as_str()),
        }
    }

    /// The command, if the device is one.
    pub fn command(&self) -> Option<&CommandTemplate> {
        match self {
            Device::IcelabServe => None,
            Device::Command(template) => Some(template),
        }
    }
}

/// A boot of the plan that a run leaves out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// The boot's name.
    pub boot: &'static str,
    /// Why (names the `icelab serve` option the boot needs).
    pub reason: String,
}

/// Why `boot` cannot run against a device started by `--device-cmd` that
/// offers `profile` (the command gets only the socket and the image, so
/// the device is what the command makes it), if it cannot.
pub fn device_command_refusal(boot: &BootPlan, profile: ProfileName) -> Option<String> {
    let Some(boot_profile) = boot.profile else {
        return Some(
            "the negative control needs a device without inline encryption (icelab serve \
             --no-inline-encryption), which the command cannot be told to be"
                .to_owned(),
        );
    };
    if boot_profile != profile {
        return Some(format!(
            "needs profile {boot_profile}; a device command serves one profile per run \
             (this run: {profile}); run again with --profile {boot_profile}"
        ));
    }
    if let Some(slots) = boot.slots {
        return Some(format!(
            "needs a device with {slots} keyslots (icelab serve --slots {slots})"
        ));
    }
    if boot.restart_device {
        return Some(
            "kills and restarts icelab serve and watches its log for QEMU's reconnection"
                .to_owned(),
        );
    }
    if boot.default_key || boot.key_usage_limit.is_some() {
        return Some(
            "needs a device default key and a key usage limit (icelab serve --default-key, \
             --key-usage-limit)"
                .to_owned(),
        );
    }
    if boot.key_manager_state.is_some() {
        return Some(
            "needs hardware-wrapped keys on a device whose secret is kept across boots and \
             another one with a different secret (icelab serve --key-manager-state)"
                .to_owned(),
        );
    }
    None
}

/// The boots of `boots` that can run against a device command offering
/// `profile`, and those left out ([`device_command_refusal`]).
pub fn for_device_command(
    boots: Vec<BootPlan>,
    profile: ProfileName,
) -> (Vec<BootPlan>, Vec<LeftOut>) {
    let mut left_out = Vec::new();
    let mut kept = Vec::new();
    for boot in boots {
        match device_command_refusal(&boot, profile) {
            Some(reason) => left_out.push(LeftOut {
                boot: boot.name,
                reason,
            }),
            None => kept.push(boot),
        }
    }
    (kept, left_out)
}

/// `icelab serve` options of a boot, besides image, socket, stats and
/// trace (which the boot runner adds).
pub fn device_options(boot: &BootPlan, fault: Option<Fault>) -> DeviceOptions {
    DeviceOptions {
        size: match boot.image {
            Image::Fresh(size) => Some(size),
            Image::SameAs(_) => None,
        },
        queues: Some(QUEUES),
        profile: boot.profile,
        slots: boot.profile.and(boot.slots),
        no_inline_encryption: boot.profile.is_none(),
        fault: boot.profile.and(fault),
        key_usage_limit: boot.key_usage_limit,
        ..DeviceOptions::default()
    }
}

/// What the guest runner is told in a boot (its `icelab.*` parameters).
pub fn guest_plan(boot: &BootPlan) -> GuestPlan {
    let engine = match (boot.profile, capabilities(boot)) {
        (Some(profile), Some(caps)) => Some(Engine {
            profile: guest_profile(profile),
            slots: u32::from(caps.slots),
            max_dun_bits: u32::from(caps.max_dun_bytes) * 8,
            modes: caps.data_unit_sizes.0,
        }),
        _ => None,
    };
    GuestPlan {
        expect: if engine.is_some() {
            Expect::Native
        } else {
            Expect::Fallback
        },
        engine,
        seed: Some(boot.seed),
        ..GuestPlan::new(boot.guest_suite, Expect::Native)
    }
}

/// The guest's `icelab.*` kernel parameters for a boot.
pub fn guest_cmdline(boot: &BootPlan) -> String {
    guest_plan(boot).to_cmdline()
}

/// The engine profile as the guest names it.
fn guest_profile(profile: ProfileName) -> Profile {
    match profile {
        ProfileName::Ufs => Profile::Ufs,
        ProfileName::Emmc => Profile::Emmc,
    }
}

/// A random run seed (from the OS), for when `--seed` is not given.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is keyed from the OS's random source once per process;
    // mixing in the time makes two RandomStates of one process differ too.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Parses `--seed`: 1 to 16 hex digits, with or without `0x`.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if hex.is_empty() || hex.len() > 16 {
        return Err(format!(
            "--seed {text:?} is not a seed; write 1 to 16 hex digits (as printed by a run)"
        ));
    }
    u64::from_str_radix(hex, 16).map_err(|_| {
        format!("--seed {text:?} is not a seed; write 1 to 16 hex digits (as printed by a run)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(suite: Suite, profile: Option<ProfileName>) -> PlanInput {
        PlanInput {
            suite,
            profile,
            no_control: false,
            seed: 0x1234,
        }
    }

    fn names(boots: &[BootPlan]) -> Vec<&'static str> {
        boots.iter().map(|b| b.name).collect()
    }

    #[test]
    fn lab_plan_is_the_contract() {
        let boots = plan(&input(Suite::Lab, None));
        assert_eq!(
            names(&boots),
            [
                "ufs",
                "ufs-reboot",
                "emmc",
                "pressure",
                "restart",
                "default-key",
                "key-limit"
            ]
        );
        let [ufs, reboot, emmc, pressure, restart, with_key, limited] = &boots[..] else {
            panic!("seven boots");
        };
        assert!(!limited.default_key);
        let scanned: Vec<_> = boots
            .iter()
            .filter(|b| scans_memory(b))
            .map(|b| b.name)
            .collect();
        assert_eq!(scanned, [ufs.name, emmc.name]);
        assert_eq!(limited.key_usage_limit, Some(KEY_LIMIT_BOOT_LIMIT));
        assert_eq!(limited.guest_suite, GuestSuite::LabKeyLimit);
        assert!(restart.restart_device);
        assert!(boots[..4].iter().all(|b| !b.restart_device));
        assert!(with_key.default_key && !with_key.restart_device);
        assert!(
            boots[..5]
                .iter()
                .all(|b| !b.default_key && b.key_usage_limit.is_none())
        );
        assert_eq!(with_key.key_usage_limit, Some(DEFAULT_KEY_BOOT_LIMIT));
        assert!(
            guest_cmdline(with_key)
                .starts_with("icelab.suite=lab-default-key icelab.expect=native")
        );
        assert_eq!(
            device_options(with_key, None).key_usage_limit,
            Some(DEFAULT_KEY_BOOT_LIMIT)
        );
        assert_eq!(
            names(&plan(&input(Suite::LabDefaultKey, None))),
            ["default-key", "key-limit"]
        );
        // The key follows the seed: the same boot gets the same key, another
        // boot another.
        assert_eq!(*default_key(with_key), *default_key(with_key));
        assert_ne!(*default_key(with_key), *default_key(ufs));
        assert_eq!(restart.image, Image::Fresh(1 << 30));
        assert!(
            guest_cmdline(restart).starts_with("icelab.suite=lab-restart icelab.expect=native")
        );
        assert_eq!(names(&plan(&input(Suite::LabRestart, None))), ["restart"]);
        assert_eq!(ufs.image, Image::Fresh(1 << 30));
        assert_eq!(reboot.image, Image::SameAs("ufs"));
        assert_eq!(reboot.seed, ufs.seed, "the reboot recreates boot 1's keys");
        assert_ne!(emmc.seed, ufs.seed);
        assert_ne!(pressure.seed, emmc.seed);
        assert_eq!(reboot.traffic, Traffic::Read);
        assert!(boots.iter().all(|b| b.verify));
        assert_eq!(
            guest_cmdline(ufs),
            format!(
                "icelab.suite=lab icelab.expect=native icelab.profile=ufs icelab.slots=32 \
                 icelab.max_dun_bits=64 icelab.modes=0x1e00 icelab.seed={:016x}",
                ufs.seed
            )
        );
        assert!(guest_cmdline(reboot).starts_with("icelab.suite=lab-reboot icelab.expect=native"));
        // What the host writes, the contract reads back as the same plan.
        for boot in &boots {
            assert_eq!(
                GuestPlan::parse(&guest_cmdline(boot)),
                Ok(guest_plan(boot)),
                "{}",
                boot.name
            );
        }
        assert!(guest_cmdline(emmc).contains("icelab.profile=emmc"));
        assert!(guest_cmdline(emmc).contains("icelab.max_dun_bits=32"));
        assert!(guest_cmdline(pressure).starts_with("icelab.suite=lab-pressure"));
        assert!(guest_cmdline(pressure).contains("icelab.slots=2 "));
    }

    #[test]
    fn wrapped_plan_shares_the_image_and_one_of_two_secrets() {
        let boots = plan(&input(Suite::LabWrapped, None));
        assert_eq!(
            names(&boots),
            ["wrapped", "wrapped-reboot", "wrapped-foreign"]
        );
        let [first, reboot, foreign] = &boots[..] else {
            panic!("three boots");
        };
        assert_eq!(first.image, Image::Fresh(SMOKE_IMAGE_SIZE));
        assert!(scans_memory(first) && !scans_memory(reboot) && !scans_memory(foreign));
        assert_eq!(reboot.image, Image::SameAs("wrapped"));
        assert_eq!(foreign.image, Image::SameAs("wrapped"));
        // The keys come from the seed: the same in all three.
        assert!(boots.iter().all(|b| b.seed == first.seed));
        assert_eq!(first.traffic, Traffic::ReadWrite);
        assert_eq!(reboot.traffic, Traffic::Read);
        assert_eq!(foreign.traffic, Traffic::Read);
        assert!(boots.iter().all(|b| b.verify));
        let base = Path::new("/run");
        let state = |b: &BootPlan| key_manager_state_path(b, base);
        assert_eq!(state(first), Some(PathBuf::from("/run/wrapped/km.state")));
        assert_eq!(state(reboot), state(first));
        assert_eq!(
            state(foreign),
            Some(PathBuf::from("/run/wrapped-foreign/km.state"))
        );
        assert_eq!(
            key_manager_state_path(&plan(&input(Suite::Lab, None))[0], base),
            None
        );
        for (boot, suite) in
            boots
                .iter()
                .zip(["lab-wrapped", "lab-wrapped-reboot", "lab-wrapped-foreign"])
        {
            assert!(
                guest_cmdline(boot).starts_with(&format!(
                    "icelab.suite={suite} icelab.expect=native icelab.profile=ufs"
                )),
                "{}",
                guest_cmdline(boot)
            );
            assert_eq!(GuestPlan::parse(&guest_cmdline(boot)), Ok(guest_plan(boot)));
            assert!(
                device_command_refusal(boot, ProfileName::Ufs)
                    .is_some_and(|r| r.contains("--key-manager-state"))
            );
        }
        assert!(plan(&input(Suite::LabWrapped, Some(ProfileName::Emmc))).is_empty());
    }

    #[test]
    fn device_args_per_boot() {
        let boots = plan(&input(Suite::Lab, None));
        assert_eq!(
            device_options(&boots[0], None).arg_strings(),
            ["--queues", "2", "--size", "1G", "--profile", "ufs"]
        );
        // The second boot must not name a size: the image is reused as is.
        assert_eq!(
            device_options(&boots[1], Some(Fault::Plaintext)).arg_strings(),
            ["--queues", "2", "--profile", "ufs", "--fault", "plaintext"]
        );
        assert_eq!(
            device_options(&boots[3], None).arg_strings(),
            [
                "--queues",
                "2",
                "--size",
                "1G",
                "--profile",
                "ufs",
                "--slots",
                "2"
            ]
        );
    }

    #[test]
    fn profile_selects_boots() {
        let ufs = plan(&input(Suite::Lab, Some(ProfileName::Ufs)));
        assert_eq!(
            names(&ufs),
            [
                "ufs",
                "ufs-reboot",
                "pressure",
                "restart",
                "default-key",
                "key-limit"
            ]
        );
        let emmc = plan(&input(Suite::Lab, Some(ProfileName::Emmc)));
        assert_eq!(names(&emmc), ["emmc"]);
        assert!(plan(&input(Suite::LabPressure, Some(ProfileName::Emmc))).is_empty());
        let matrix = plan(&input(Suite::Matrix, Some(ProfileName::Emmc)));
        assert_eq!(matrix[0].profile, Some(ProfileName::Emmc));
        assert_eq!(matrix[0].guest_suite, GuestSuite::Matrix);
    }

    #[test]
    fn smoke_is_unchanged() {
        let boots = plan(&input(Suite::Smoke, None));
        assert_eq!(names(&boots), ["native", "control"]);
        assert!(boots.iter().all(|b| !b.verify));
        assert_eq!(
            device_options(&boots[1], Some(Fault::Plaintext)).arg_strings(),
            ["--queues", "2", "--size", "512M", "--no-inline-encryption"]
        );
        assert!(guest_cmdline(&boots[1]).contains("icelab.expect=fallback"));
        let mut no_control = input(Suite::Smoke, None);
        no_control.no_control = true;
        assert_eq!(names(&plan(&no_control)), ["native"]);
    }

    #[test]
    fn seeds() {
        assert_eq!(parse_seed("0xff"), Ok(255));
        assert_eq!(parse_seed("00c0ffee12345678"), Ok(0x00c0_ffee_1234_5678));
        assert!(parse_seed("").is_err());
        assert!(parse_seed("12345678123456781").is_err());
        assert!(parse_seed("xyz").is_err());
        assert_ne!(boot_seed(1, 1), boot_seed(1, 2));
        assert_ne!(random_seed(), random_seed());
        for suite in Suite::ALL {
            assert_eq!(Suite::from_name(suite.name()), Some(suite));
        }
    }

    #[test]
    fn a_device_command_runs_only_what_it_can_be_told() {
        let (kept, left_out) = for_device_command(plan(&input(Suite::Lab, None)), ProfileName::Ufs);
        assert_eq!(names(&kept), ["ufs", "ufs-reboot"]);
        let left: Vec<&str> = left_out.iter().map(|l| l.boot).collect();
        assert_eq!(
            left,
            ["emmc", "pressure", "restart", "default-key", "key-limit"]
        );
        let reason = |boot: &str| {
            left_out
                .iter()
                .find(|l| l.boot == boot)
                .map(|l| l.reason.clone())
                .expect("left out")
        };
        assert!(reason("emmc").contains("--profile emmc"));
        assert!(reason("pressure").contains("--slots 2"));
        assert!(reason("restart").contains("restarts icelab serve"));
        assert!(reason("default-key").contains("--default-key"));

        let (kept, left_out) =
            for_device_command(plan(&input(Suite::Lab, None)), ProfileName::Emmc);
        assert_eq!(names(&kept), ["emmc"]);
        assert_eq!(left_out.len(), 6);

        let (kept, left_out) =
            for_device_command(plan(&input(Suite::Smoke, None)), ProfileName::Ufs);
        assert_eq!(names(&kept), ["native"]);
        assert_eq!(left_out[0].boot, "control");
        assert!(left_out[0].reason.contains("--no-inline-encryption"));
        // What the guest is told does not change.
        assert_eq!(
            guest_cmdline(&kept[0]),
            guest_cmdline(&plan(&input(Suite::Smoke, None))[0])
        );
    }
}
