//! Crypto profiles: what an engine supports (docs/PROTOCOL.md,
//! "Engine profiles").

use crate::protocol::{CryptoCapabilities, CryptoMode, KeyType};
use std::fmt;

/// The named engine profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileName {
    /// UFSHCI crypto: 32 keyslots, 8 DUN bytes, AES-256-XTS with data
    /// units 512..4096, raw and hardware-wrapped keys (a UFS controller
    /// with a key manager, as Qualcomm's ICE with its Hardware Key
    /// Manager).
    Ufs,
    /// eMMC CQHCI crypto: 4 DUN bytes (32-bit DUNs), raw keys only.
    Emmc,
}

impl ProfileName {
    /// Every profile, for help texts and errors.
    pub const ALL: [ProfileName; 2] = [ProfileName::Ufs, ProfileName::Emmc];

    /// The profile's name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ufs => "ufs",
            Self::Emmc => "emmc",
        }
    }

    /// Looks a profile up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|profile| profile.name() == name)
    }

    /// The profile's capabilities.
    pub const fn capabilities(self) -> Capabilities {
        let ufs = Capabilities {
            slots: 32,
            max_dun_bytes: 8,
            data_unit_sizes: DataUnitSizes::range(512, 4096),
            key_types: KeyTypes::RAW_AND_WRAPPED,
        };
        match self {
            Self::Ufs => ufs,
            Self::Emmc => Capabilities {
                max_dun_bytes: 4,
                key_types: KeyTypes::RAW,
                ..ufs
            },
        }
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of data unit sizes supported for AES-256-XTS, as the `modes[1]`
/// bit mask: bit i set means 2^i-byte data units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataUnitSizes(pub u32);

impl DataUnitSizes {
    /// Smallest data unit size the engine accepts at all (one sector).
    pub const MIN: u32 = 512;
    /// Largest data unit size the engine accepts at all.
    pub const MAX: u32 = 65536;

    /// Every power of two from `min` to `max`.
    pub const fn range(min: u32, max: u32) -> Self {
        let mut mask = 0;
        let mut size = min;
        while size <= max {
            mask |= size;
            size <<= 1;
        }
        Self(mask)
    }

    /// True when data units of 2^`bits` bytes are supported.
    pub fn contains_bits(self, bits: u32) -> bool {
        bits < 32 && self.0 & (1 << bits) != 0
    }

    /// The sizes in bytes, ascending.
    pub fn sizes(self) -> impl Iterator<Item = u32> {
        (0..32)
            .filter(move |bit| self.0 & (1 << bit) != 0)
            .map(|bit| 1 << bit)
    }
}

/// The set of key types the engine accepts, as the config's `key_types`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyTypes(pub u8);

impl KeyTypes {
    /// Raw keys only.
    pub const RAW: Self = Self(KeyType::Raw.config_bit());
    /// Hardware-wrapped keys only.
    pub const WRAPPED: Self = Self(KeyType::HardwareWrapped.config_bit());
    /// Raw and hardware-wrapped keys.
    pub const RAW_AND_WRAPPED: Self = Self(Self::RAW.0 | Self::WRAPPED.0);

    /// True when `key_type` is accepted.
    pub const fn accepts(self, key_type: KeyType) -> bool {
        self.0 & key_type.config_bit() != 0
    }

    /// The accepted types by name (`raw`, `hw-wrapped`), as the stats
    /// file shows them.
    pub fn names(self) -> Vec<String> {
        [
            (KeyType::Raw, "raw"),
            (KeyType::HardwareWrapped, "hw-wrapped"),
        ]
        .into_iter()
        .filter(|(key_type, _)| self.accepts(*key_type))
        .map(|(_, name)| name.to_owned())
        .collect()
    }
}

/// What one engine supports. Every field can be overridden on the command
/// line; [`Capabilities::validate`] says whether the result makes sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Number of keyslots.
    pub slots: u16,
    /// Largest `dun_bytes` a keyslot may be programmed with.
    pub max_dun_bytes: u8,
    /// Supported AES-256-XTS data unit sizes.
    pub data_unit_sizes: DataUnitSizes,
    /// Accepted key types.
    pub key_types: KeyTypes,
}

/// Why a set of capabilities cannot be offered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapabilityError {
    /// No keyslots.
    #[error("the engine needs at least one keyslot (--slots 1 or more)")]
    NoSlots,
    /// DUN bytes outside 1..=16.
    #[error("--max-dun-bytes {0} is out of range: AES-256-XTS carries DUNs of 1 to 16 bytes")]
    MaxDunBytes(u8),
    /// Empty or out-of-range data unit sizes.
    #[error("--data-unit-sizes must list powers of two from 512 to 65536 (got mask {0:#x})")]
    DataUnitSizes(u32),
    /// No key type, or an unknown one.
    #[error("--key-types must name at least one supported key type (raw, wrapped)")]
    KeyTypes,
}

impl Capabilities {
    /// Checks that a guest could use these capabilities.
    pub fn validate(&self) -> Result<(), CapabilityError> {
        if self.slots == 0 {
            return Err(CapabilityError::NoSlots);
        }
        let max_iv = CryptoMode::Aes256Xts.iv_size() as u8;
        if self.max_dun_bytes == 0 || self.max_dun_bytes > max_iv {
            return Err(CapabilityError::MaxDunBytes(self.max_dun_bytes));
        }
        let allowed = DataUnitSizes::range(DataUnitSizes::MIN, DataUnitSizes::MAX).0;
        let mask = self.data_unit_sizes.0;
        if mask == 0 || mask & !allowed != 0 {
            return Err(CapabilityError::DataUnitSizes(mask));
        }
        let known = KeyTypes::RAW_AND_WRAPPED.0;
        if self.key_types.0 == 0 || self.key_types.0 & !known != 0 {
            return Err(CapabilityError::KeyTypes);
        }
        Ok(())
    }

    /// The `modes[]` table of GET_CRYPTO_MODES.
    pub fn modes(&self) -> [u32; CryptoMode::TABLE_LEN] {
        let mut modes = [0; CryptoMode::TABLE_LEN];
        modes[CryptoMode::Aes256Xts.to_wire() as usize] = self.data_unit_sizes.0;
        modes
    }

    /// The config-space form.
    pub fn to_wire(&self) -> CryptoCapabilities {
        CryptoCapabilities {
            max_slots: self.slots,
            max_dun_bytes: self.max_dun_bytes,
            key_types: self.key_types.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_match_design() {
        let ufs = ProfileName::Ufs.capabilities();
        assert_eq!(ufs.slots, 32);
        assert_eq!(ufs.max_dun_bytes, 8);
        assert_eq!(
            ufs.data_unit_sizes.sizes().collect::<Vec<_>>(),
            [512, 1024, 2048, 4096]
        );
        assert_eq!(ufs.modes(), [0, 0x1e00]);
        assert_eq!(ufs.key_types, KeyTypes(0b11), "raw and hardware-wrapped");
        assert_eq!(ufs.key_types.names(), ["raw", "hw-wrapped"]);
        let emmc = ProfileName::Emmc.capabilities();
        assert_eq!(emmc.max_dun_bytes, 4);
        assert_eq!(emmc.key_types, KeyTypes::RAW);
        assert!(emmc.validate().is_ok());
        assert_eq!(ProfileName::from_name("emmc"), Some(ProfileName::Emmc));
        assert_eq!(ProfileName::from_name("nvme"), None);
        assert!(ufs.validate().is_ok());
    }

    #[test]
    fn nonsense_capabilities_are_refused() {
        let ufs = ProfileName::Ufs.capabilities();
        assert_eq!(
            Capabilities { slots: 0, ..ufs }.validate(),
            Err(CapabilityError::NoSlots)
        );
        assert!(
            Capabilities {
                max_dun_bytes: 17,
                ..ufs
            }
            .validate()
            .is_err()
        );
        assert!(
            Capabilities {
                max_dun_bytes: 0,
                ..ufs
            }
            .validate()
            .is_err()
        );
        assert!(
            Capabilities {
                data_unit_sizes: DataUnitSizes(256),
                ..ufs
            }
            .validate()
            .is_err()
        );
        assert!(
            Capabilities {
                data_unit_sizes: DataUnitSizes(0),
                ..ufs
            }
            .validate()
            .is_err()
        );
        for bad in [0, 4, 0b111] {
            assert_eq!(
                Capabilities {
                    key_types: KeyTypes(bad),
                    ..ufs
                }
                .validate(),
                Err(CapabilityError::KeyTypes)
            );
        }
        for good in [KeyTypes::RAW, KeyTypes::WRAPPED, KeyTypes::RAW_AND_WRAPPED] {
            let caps = Capabilities {
                key_types: good,
                ..ufs
            };
            assert!(caps.validate().is_ok());
            assert_eq!(caps.to_wire().key_types, good.0);
        }
    }
}
