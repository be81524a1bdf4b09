//! The guest runner's suites and what a boot expects of blk-crypto: the
//! names the host writes on the guest's command line (`icelab.suite=`,
//! `icelab.expect=`) and the guest matches.

use serde::{Deserialize, Serialize};

/// A suite of the in-guest runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestSuite {
    /// Driver, crypto sysfs, an fscrypt round trip, the blk-crypto path.
    Smoke,
    /// The lab's first boot: policy matrix, path selection, key removal,
    /// keyring provisioning, the `fscrypt` tool.
    Lab,
    /// The lab's second boot: the first boot's files read back.
    LabReboot,
    /// Many keys through a device with few keyslots.
    LabPressure,
    /// Writes through a restart of the device.
    LabRestart,
    /// The matrix, path selection and unencrypted files on a device with
    /// a default key.
    LabDefaultKey,
    /// A key past `--key-usage-limit` with the refuse action.
    LabKeyLimit,
    /// Hardware-wrapped keys: the blk-crypto ioctls, fscrypt with
    /// hardware-wrapped keys, key removal; the long-term keys saved on the
    /// filesystem.
    LabWrapped,
    /// The same image and device secret after a reboot: the saved
    /// long-term keys unlock the files, the old ephemerally-wrapped keys
    /// are refused.
    LabWrappedReboot,
    /// The same image on a device with another secret: the saved keys are
    /// refused; the raw keys imported again unlock the files.
    LabWrappedForeign,
    /// The policy matrix alone (the fault runs).
    Matrix,
    /// fio on an inlinecrypt ext4 file.
    Bench,
    /// The real userland: switch to the root filesystem image and run the
    /// user's command or an interactive shell (`icelab run --guest-cmd`,
    /// `icelab shell`).
    Userland,
}

impl GuestSuite {
    /// Every suite.
    pub const ALL: [GuestSuite; 13] = [
        GuestSuite::Smoke,
        GuestSuite::Lab,
        GuestSuite::LabReboot,
        GuestSuite::LabPressure,
        GuestSuite::LabRestart,
        GuestSuite::LabDefaultKey,
        GuestSuite::LabKeyLimit,
        GuestSuite::LabWrapped,
        GuestSuite::LabWrappedReboot,
        GuestSuite::LabWrappedForeign,
        GuestSuite::Matrix,
        GuestSuite::Bench,
        GuestSuite::Userland,
    ];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            GuestSuite::Smoke => "smoke",
            GuestSuite::Lab => "lab",
            GuestSuite::LabReboot => "lab-reboot",
            GuestSuite::LabPressure => "lab-pressure",
            GuestSuite::LabRestart => "lab-restart",
            GuestSuite::LabDefaultKey => "lab-default-key",
            GuestSuite::LabKeyLimit => "lab-key-limit",
            GuestSuite::LabWrapped => "lab-wrapped",
            GuestSuite::LabWrappedReboot => "lab-wrapped-reboot",
            GuestSuite::LabWrappedForeign => "lab-wrapped-foreign",
            GuestSuite::Matrix => "matrix",
            GuestSuite::Bench => "bench",
            GuestSuite::Userland => "userland",
        }
    }

    /// The suite called `name`.
    pub fn from_name(name: &str) -> Option<GuestSuite> {
        GuestSuite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The names, comma-separated (for messages).
    pub fn names() -> String {
        GuestSuite::ALL.map(GuestSuite::name).join(", ")
    }
}

impl std::fmt::Display for GuestSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which blk-crypto implementation fscrypt must use in a boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The device's inline crypto engine ("blk-crypto (native)").
    Native,
    /// The kernel's software fallback (a device without an engine).
    Fallback,
}

impl Expect {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Expect::Native => "native",
            Expect::Fallback => "fallback",
        }
    }

    /// The expectation called `name`.
    pub fn from_name(name: &str) -> Option<Expect> {
        [Expect::Native, Expect::Fallback]
            .into_iter()
            .find(|e| e.name() == name)
    }
}

/// The device's engine profile, as the guest is told it (`icelab.profile=`;
/// `icelab serve --profile` uses the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// UFSHCI-like: 64-bit DUNs, every policy runs natively.
    Ufs,
    /// eMMC-like: 32-bit DUNs, so IV_INO_LBLK_64 falls back to
    /// blk-crypto-fallback while IV_INO_LBLK_32 runs natively.
    Emmc,
}

impl Profile {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Ufs => "ufs",
            Profile::Emmc => "emmc",
        }
    }

    /// The profile called `name`.
    pub fn from_name(name: &str) -> Option<Profile> {
        [Profile::Ufs, Profile::Emmc]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for suite in GuestSuite::ALL {
            assert_eq!(GuestSuite::from_name(suite.name()), Some(suite));
            let json = serde_json::to_string(&suite).expect("serialize");
            assert_eq!(json, format!("\"{}\"", suite.name()));
        }
        assert_eq!(GuestSuite::from_name("labs"), None);
        for expect in [Expect::Native, Expect::Fallback] {
            assert_eq!(Expect::from_name(expect.name()), Some(expect));
        }
        for profile in [Profile::Ufs, Profile::Emmc] {
            assert_eq!(Profile::from_name(profile.name()), Some(profile));
        }
        assert_eq!(
            GuestSuite::names().matches(", ").count(),
            GuestSuite::ALL.len() - 1
        );
    }
}
