//! The guest-RAM scan of `lab-wrapped` (issue 12's proof that a
//! hardware-wrapped key never enters the guest): in the middle of a test,
//! with its keys loaded, the guest sends [`SIGNAL_SCAN_GUEST_MEMORY`] with a
//! [`ScanRequest`] under [`FACT_MEMORY_SCAN`] and holds still for
//! [`ScanRequest::hold_ms`]; the host stops QEMU, reads the guest's whole
//! RAM and counts where each key's bytes occur.
//!
//! The request names keys by seed, as the manifest does, never by value:
//! the host derives the bytes itself.

use serde::{Deserialize, Serialize};

/// The signal: scan guest memory now.
pub const SIGNAL_SCAN_GUEST_MEMORY: &str = "scan-guest-memory";

/// The signal's fact holding the [`ScanRequest`].
pub const FACT_MEMORY_SCAN: &str = "memory_scan";

/// What the host looks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// Hardware-wrapped keys in use: neither their raw key nor their inline
    /// encryption key may be anywhere in guest memory.
    pub wrapped: Vec<WrappedKeyRef>,
    /// The negative control: raw keys in use with an IV_INO_LBLK_64 policy,
    /// whose inline encryption key the kernel holds, so the scan must find
    /// it (a scan that finds nothing proves nothing).
    pub raw_controls: Vec<RawKeyRef>,
    /// How long the guest holds still (keys loaded, no result written)
    /// after the signal: the host must have taken its snapshot by then.
    pub hold_ms: u64,
}

/// A hardware-wrapped key, by the seed of the raw key the guest imported
/// (`manifest::hw_key_from_seed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKeyRef {
    /// For reports (the test's key name).
    pub name: String,
    /// 16 hex digits, as the manifest's `hw_wrapped_key_seed`.
    pub hw_wrapped_key_seed: String,
}

/// A raw fscrypt master key used with an IV_INO_LBLK_64 policy (AES-256-XTS
/// contents) on the filesystem `fs_uuid`: its inline encryption key is the
/// per-mode key fscrypt derives from the master key and the UUID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyRef {
    /// For reports (the test's key name).
    pub name: String,
    /// 16 hex digits, as the manifest's `master_key_seed`.
    pub master_key_seed: String,
    /// The filesystem's UUID (`8f3c...-...`).
    pub fs_uuid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_through_json() {
        let request = ScanRequest {
            wrapped: vec![WrappedKeyRef {
                name: "wrapped/lblk64".into(),
                hw_wrapped_key_seed: "00000000000000ab".into(),
            }],
            raw_controls: vec![RawKeyRef {
                name: "scan/raw".into(),
                master_key_seed: "00000000000000cd".into(),
                fs_uuid: "8f3c0000-0000-4000-8000-000000000001".into(),
            }],
            hold_ms: 8000,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json["wrapped"][0]["hw_wrapped_key_seed"],
            "00000000000000ab"
        );
        assert_eq!(
            serde_json::from_value::<ScanRequest>(json).unwrap(),
            request
        );
    }
}
