//! Engine and device counters, written by `--stats` as the contract's
//! [`StatsFile`] (`icelab_contract::device`, re-exported here for
//! `icelab serve`).
//!
//! Hot counters are relaxed atomics; rejections, which only a misbehaving
//! guest causes, go through a mutex-protected map keyed by a stable kind.

use icelab_contract::device::{
    ControlQueueCounters, KeyManagerCounters, KeyslotCounters, Rejections,
};
pub use icelab_contract::device::{Counters, DeviceInfo, StatsFile};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A request count and the bytes it moved.
#[derive(Default, Debug)]
pub struct Traffic {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Traffic {
    /// Counts one request of `bytes` bytes.
    pub fn add(&self, bytes: u64) {
        self.requests.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    fn snapshot(&self) -> icelab_contract::device::Traffic {
        icelab_contract::device::Traffic {
            requests: self.requests(),
            bytes: self.bytes(),
        }
    }
}

/// What the key manager did (hardware-wrapped keys).
#[derive(Default, Debug)]
pub struct KeyManagerStats {
    /// IMPORT_KEY requests served.
    pub imported: AtomicU64,
    /// GENERATE_KEY requests served.
    pub generated: AtomicU64,
    /// PREPARE_KEY requests served.
    pub prepared: AtomicU64,
    /// DERIVE_SW_SECRET requests served.
    pub derived: AtomicU64,
    /// Keyslots programmed with a hardware-wrapped key.
    pub programmed: AtomicU64,
    /// Raw keys and blobs the key manager refused.
    pub refused: AtomicU64,
}

impl KeyManagerStats {
    fn snapshot(&self) -> KeyManagerCounters {
        KeyManagerCounters {
            imported: self.imported.load(Relaxed),
            generated: self.generated.load(Relaxed),
            prepared: self.prepared.load(Relaxed),
            derived: self.derived.load(Relaxed),
            programmed: self.programmed.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

/// All counters of one engine and its device.
#[derive(Debug)]
pub struct Stats {
    /// Successful KEYSLOT_PROGRAM requests.
    pub slots_programmed: AtomicU64,
    /// Successful KEYSLOT_EVICT requests.
    pub slots_evicted: AtomicU64,
    /// Keys dropped by a device reset or a new connection.
    pub slots_reset: AtomicU64,
    /// CRYPTO_IN requests served.
    pub crypto_reads: Traffic,
    /// CRYPTO_OUT requests served.
    pub crypto_writes: Traffic,
    /// Plain IN requests served.
    pub plain_reads: Traffic,
    /// Plain OUT requests served.
    pub plain_writes: Traffic,
    /// Requests without a crypto context decrypted with the default key.
    pub default_key_reads: Traffic,
    /// Requests without a crypto context encrypted with the default key
    /// (WRITE_ZEROES included).
    pub default_key_writes: Traffic,
    /// FLUSH requests served.
    pub flushes: AtomicU64,
    /// DISCARD requests served.
    pub discards: AtomicU64,
    /// WRITE_ZEROES requests served.
    pub write_zeroes: AtomicU64,
    /// GET_ID and GET_CRYPTO_MODES requests served.
    pub queries: AtomicU64,
    /// Control commands (types 29..35) that arrived on the control queue,
    /// whatever their outcome.
    pub control_commands: AtomicU64,
    /// KEYSLOT_PROGRAM and KEYSLOT_EVICT requests among them.
    pub control_keyslot_commands: AtomicU64,
    /// The key manager's operations.
    pub key_manager: KeyManagerStats,
    per_slot_uses: Box<[AtomicU64]>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    /// Zeroed counters for an engine with `slots` keyslots.
    pub fn new(slots: u16) -> Self {
        Self {
            slots_programmed: AtomicU64::new(0),
            slots_evicted: AtomicU64::new(0),
            slots_reset: AtomicU64::new(0),
            crypto_reads: Traffic::default(),
            crypto_writes: Traffic::default(),
            plain_reads: Traffic::default(),
            plain_writes: Traffic::default(),
            default_key_reads: Traffic::default(),
            default_key_writes: Traffic::default(),
            flushes: AtomicU64::new(0),
            discards: AtomicU64::new(0),
            write_zeroes: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            control_commands: AtomicU64::new(0),
            control_keyslot_commands: AtomicU64::new(0),
            key_manager: KeyManagerStats::default(),
            per_slot_uses: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            rejected: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one crypto request on `slot`.
    pub fn count_slot_use(&self, slot: u32) {
        if let Some(counter) = self.per_slot_uses.get(slot as usize) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Counts one rejected request of `kind`.
    pub fn count_rejection(&self, kind: &'static str) {
        let mut rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *rejected.entry(kind).or_default() += 1;
    }

    /// Total rejected requests.
    pub fn rejections(&self) -> u64 {
        let rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        rejected.values().sum()
    }

    /// The counters now (what `--stats` writes as `stats`), without the
    /// per-key usage, which the engine adds ([`super::Engine::counters`]).
    pub fn snapshot(&self) -> Counters {
        let rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Counters {
            keyslots: KeyslotCounters {
                programmed: self.slots_programmed.load(Relaxed),
                evicted: self.slots_evicted.load(Relaxed),
                evicted_by_reset: self.slots_reset.load(Relaxed),
                uses_per_slot: self.per_slot_uses.iter().map(|c| c.load(Relaxed)).collect(),
            },
            crypto_in: self.crypto_reads.snapshot(),
            crypto_out: self.crypto_writes.snapshot(),
            plain_in: self.plain_reads.snapshot(),
            plain_out: self.plain_writes.snapshot(),
            default_key_in: self.default_key_reads.snapshot(),
            default_key_out: self.default_key_writes.snapshot(),
            flush: self.flushes.load(Relaxed),
            discard: self.discards.load(Relaxed),
            write_zeroes: self.write_zeroes.load(Relaxed),
            queries: self.queries.load(Relaxed),
            control_queue: ControlQueueCounters {
                commands: self.control_commands.load(Relaxed),
                keyslot_commands: self.control_keyslot_commands.load(Relaxed),
            },
            key_manager: self.key_manager.snapshot(),
            rejected: Rejections {
                total: rejected.values().sum(),
                by_kind: rejected
                    .into_iter()
                    .map(|(kind, count)| (kind.to_owned(), count))
                    .collect(),
            },
            key_usage: Vec::new(),
            key_usage_forgotten: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_contract::device::reject_kind;

    #[test]
    fn the_snapshot_is_the_contracts_stats_file() {
        let stats = Stats::new(4);
        stats.slots_programmed.fetch_add(3, Relaxed);
        stats.slots_evicted.fetch_add(1, Relaxed);
        stats.crypto_writes.add(4096);
        stats.crypto_reads.add(8192);
        stats.count_slot_use(2);
        stats.count_slot_use(9);
        stats.control_keyslot_commands.fetch_add(4, Relaxed);
        stats.key_manager.prepared.fetch_add(2, Relaxed);
        stats.count_rejection("slot-empty");
        stats.count_rejection("slot-empty");
        stats.count_rejection("misaligned");
        let file = StatsFile {
            device: DeviceInfo::default(),
            stats: stats.snapshot(),
        };
        let parsed = StatsFile::from_json(&file.to_json().expect("serializes")).expect("parses");
        let counters = parsed.stats;
        assert_eq!(counters.keyslots.programmed, 3);
        assert_eq!(counters.keyslots.evicted, 1);
        assert_eq!(counters.keyslots.uses_per_slot, [0, 0, 1, 0]);
        assert_eq!(
            (counters.crypto_out.requests, counters.crypto_out.bytes),
            (1, 4096)
        );
        assert_eq!(counters.crypto_in.bytes, 8192);
        assert_eq!(counters.control_queue.keyslot_commands, 4);
        assert_eq!(counters.key_manager.prepared, 2);
        assert_eq!(counters.rejected.total, 3);
        assert_eq!(counters.rejected.of_kind(reject_kind::SLOT_EMPTY), 2);
        assert_eq!(stats.rejections(), 3);
    }
}
