//! Per-key usage accounting: how much data each key encrypted and
//! decrypted, across every keyslot it was programmed into, and the
//! optional `--key-usage-limit` on what one key may encrypt.
//!
//! XTS under one key should not encrypt unboundedly much data (IEEE 1619
//! bounds the data per key); a policy such as IV_INO_LBLK_64 uses one key
//! for a whole filesystem. The ledger tells a developer how much each key
//! covered. Keys are told apart by fingerprint, so programming the same
//! key again (after an eviction, into another slot, on a reconnection)
//! adds to the same entry.
//!
//! The guest decides how many distinct keys it programs, so the ledger is
//! bounded ([`MAX_TRACKED_KEYS`]): when it is full, entries of keys no
//! keyslot holds any more are dropped (counted in `forgotten`).

use super::fingerprint::Fingerprint;
use icelab_contract::device::{DataUnits, KeyUsage as KeyUsageEntry, KeyUsageLimit, LimitAction};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

/// Keys the ledger tracks at most (plus those keyslots still hold).
pub const MAX_TRACKED_KEYS: usize = 4096;

/// One key's counters.
#[derive(Debug)]
pub struct KeyUsage {
    fingerprint: Fingerprint,
    default_key: bool,
    /// Order of first use, for the stats.
    order: u64,
    encrypted_units: AtomicU64,
    encrypted_bytes: AtomicU64,
    decrypted_units: AtomicU64,
    decrypted_bytes: AtomicU64,
    refused: AtomicU64,
    over_limit: AtomicBool,
}

/// What [`KeyUsage::charge_encryption`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Within the limit (or no limit): counted.
    Counted,
    /// Counted, and this request took the key past the limit for the first
    /// time (`warn`): trace it.
    CrossedLimit {
        /// Bytes encrypted before this request.
        before: u64,
    },
    /// Refused (`refuse`): not counted. `first` on the key's first refusal.
    Refused {
        /// Bytes encrypted so far.
        before: u64,
        /// The key's first refusal (trace it).
        first: bool,
    },
}

impl KeyUsage {
    fn new(fingerprint: Fingerprint, default_key: bool, order: u64) -> Self {
        Self {
            fingerprint,
            default_key,
            order,
            encrypted_units: AtomicU64::new(0),
            encrypted_bytes: AtomicU64::new(0),
            decrypted_units: AtomicU64::new(0),
            decrypted_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            over_limit: AtomicBool::new(false),
        }
    }

    /// Whether this is the device default key.
    pub fn is_default_key(&self) -> bool {
        self.default_key
    }

    /// Counts `bytes` (`units` data units) about to be encrypted, unless
    /// `limit` refuses them.
    pub fn charge_encryption(
        &self,
        units: u64,
        bytes: u64,
        limit: Option<KeyUsageLimit>,
    ) -> Charge {
        let Some(limit) = limit else {
            self.encrypted_bytes.fetch_add(bytes, Relaxed);
            self.encrypted_units.fetch_add(units, Relaxed);
            return Charge::Counted;
        };
        match limit.action {
            LimitAction::Warn => {
                let before = self.encrypted_bytes.fetch_add(bytes, Relaxed);
                self.encrypted_units.fetch_add(units, Relaxed);
                let over = before.saturating_add(bytes) > limit.bytes;
                if over && !self.over_limit.swap(true, Relaxed) {
                    Charge::CrossedLimit { before }
                } else {
                    Charge::Counted
                }
            }
            LimitAction::Refuse => {
                // Check and count in one step: two queues encrypting under
                // the same key cannot both slip under the limit.
                let counted = self
                    .encrypted_bytes
                    .fetch_update(Relaxed, Relaxed, |before| {
                        before
                            .checked_add(bytes)
                            .filter(|after| *after <= limit.bytes)
                    });
                match counted {
                    Ok(_) => {
                        self.encrypted_units.fetch_add(units, Relaxed);
                        Charge::Counted
                    }
                    Err(before) => {
                        self.refused.fetch_add(1, Relaxed);
                        let first = !self.over_limit.swap(true, Relaxed);
                        Charge::Refused { before, first }
                    }
                }
            }
        }
    }

    /// Counts `bytes` (`units` data units) decrypted.
    pub fn charge_decryption(&self, units: u64, bytes: u64) {
        self.decrypted_bytes.fetch_add(bytes, Relaxed);
        self.decrypted_units.fetch_add(units, Relaxed);
    }

    /// The stats file's entry.
    pub fn snapshot(&self) -> KeyUsageEntry {
        KeyUsageEntry {
            fingerprint: self.fingerprint.to_string(),
            default_key: self.default_key,
            encrypted: DataUnits {
                data_units: self.encrypted_units.load(Relaxed),
                bytes: self.encrypted_bytes.load(Relaxed),
            },
            decrypted: DataUnits {
                data_units: self.decrypted_units.load(Relaxed),
                bytes: self.decrypted_bytes.load(Relaxed),
            },
            refused: self.refused.load(Relaxed),
            over_limit: self.over_limit.load(Relaxed),
        }
    }
}

/// Every key's [`KeyUsage`], by fingerprint.
#[derive(Debug, Default)]
pub struct Ledger {
    keys: Mutex<LedgerKeys>,
}

#[derive(Debug, Default)]
struct LedgerKeys {
    by_fingerprint: HashMap<Fingerprint, Arc<KeyUsage>>,
    next_order: u64,
    forgotten: u64,
}

impl Ledger {
    /// The entry of the key with `fingerprint`, created on its first use.
    /// A programmed key holds its entry, so a full ledger can drop only
    /// keys no keyslot holds.
    pub fn entry(&self, fingerprint: Fingerprint, default_key: bool) -> Arc<KeyUsage> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(usage) = keys.by_fingerprint.get(&fingerprint) {
            return usage.clone();
        }
        if keys.by_fingerprint.len() >= MAX_TRACKED_KEYS {
            let before = keys.by_fingerprint.len();
            keys.by_fingerprint
                .retain(|_, usage| Arc::strong_count(usage) > 1 || usage.default_key);
            keys.forgotten += (before - keys.by_fingerprint.len()) as u64;
        }
        let order = keys.next_order;
        keys.next_order += 1;
        let usage = Arc::new(KeyUsage::new(fingerprint, default_key, order));
        keys.by_fingerprint.insert(fingerprint, usage.clone());
        usage
    }

    /// Every tracked key's entry, in the order of first use, and how many
    /// entries a full ledger dropped.
    pub fn snapshot(&self) -> (Vec<KeyUsageEntry>, u64) {
        let keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut usages: Vec<&Arc<KeyUsage>> = keys.by_fingerprint.values().collect();
        usages.sort_by_key(|usage| usage.order);
        (
            usages.into_iter().map(|usage| usage.snapshot()).collect(),
            keys.forgotten,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(bytes: u64, action: LimitAction) -> Option<KeyUsageLimit> {
        Some(KeyUsageLimit { bytes, action })
    }

    #[test]
    fn the_same_fingerprint_is_one_entry() {
        let ledger = Ledger::default();
        let first = ledger.entry(Fingerprint(7), false);
        first.charge_encryption(2, 1024, None);
        drop(first);
        let again = ledger.entry(Fingerprint(7), false);
        again.charge_encryption(1, 512, None);
        again.charge_decryption(3, 1536);
        ledger.entry(Fingerprint(9), true);
        let (entries, forgotten) = ledger.snapshot();
        assert_eq!(forgotten, 0);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].fingerprint, Fingerprint(7).to_string());
        assert_eq!(entries[0].encrypted.data_units, 3);
        assert_eq!(entries[0].encrypted.bytes, 1536);
        assert_eq!(entries[0].decrypted.bytes, 1536);
        assert!(entries[1].default_key);
    }

    #[test]
    fn warn_counts_everything_and_reports_the_crossing_once() {
        let usage = KeyUsage::new(Fingerprint(1), false, 0);
        let warn = limit(4096, LimitAction::Warn);
        assert_eq!(usage.charge_encryption(4, 2048, warn), Charge::Counted);
        assert_eq!(usage.charge_encryption(4, 2048, warn), Charge::Counted);
        assert_eq!(
            usage.charge_encryption(1, 512, warn),
            Charge::CrossedLimit { before: 4096 }
        );
        assert_eq!(usage.charge_encryption(1, 512, warn), Charge::Counted);
        let entry = usage.snapshot();
        assert_eq!(entry.encrypted.bytes, 5120);
        assert!(entry.over_limit);
        assert_eq!(entry.refused, 0);
    }

    #[test]
    fn refuse_stops_at_the_limit_and_counts_refusals() {
        let usage = KeyUsage::new(Fingerprint(1), false, 0);
        let refuse = limit(4096, LimitAction::Refuse);
        assert_eq!(usage.charge_encryption(4, 2048, refuse), Charge::Counted);
        assert_eq!(
            usage.charge_encryption(8, 4096, refuse),
            Charge::Refused {
                before: 2048,
                first: true
            }
        );
        // Exactly up to the limit is allowed.
        assert_eq!(usage.charge_encryption(4, 2048, refuse), Charge::Counted);
        assert_eq!(
            usage.charge_encryption(1, 512, refuse),
            Charge::Refused {
                before: 4096,
                first: false
            }
        );
        // Decryption is never limited.
        usage.charge_decryption(8, 4096);
        let entry = usage.snapshot();
        assert_eq!(entry.encrypted.bytes, 4096);
        assert_eq!(entry.encrypted.data_units, 8);
        assert_eq!(entry.refused, 2);
        assert!(entry.over_limit);
    }

    #[test]
    fn a_full_ledger_drops_only_keys_no_slot_holds() {
        let ledger = Ledger::default();
        let held = ledger.entry(Fingerprint(0), false);
        for n in 1..MAX_TRACKED_KEYS as u64 {
            ledger.entry(Fingerprint(n), false);
        }
        let newcomer = ledger.entry(Fingerprint(u64::MAX), false);
        let (entries, forgotten) = ledger.snapshot();
        assert_eq!(forgotten, MAX_TRACKED_KEYS as u64 - 1);
        let names: Vec<String> = entries.into_iter().map(|e| e.fingerprint).collect();
        assert_eq!(
            names,
            [
                Fingerprint(0).to_string(),
                Fingerprint(u64::MAX).to_string()
            ]
        );
        drop((held, newcomer));
    }
}
