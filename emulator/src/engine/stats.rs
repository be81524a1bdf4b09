//! Engine and device counters, written as JSON by `--stats`.
//!
//! Hot counters are relaxed atomics; rejections, which only a misbehaving
//! guest causes, go through a mutex-protected map keyed by a stable kind.

use serde_json::{Value, json};
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

    fn to_json(&self) -> Value {
        json!({ "requests": self.requests(), "bytes": self.bytes() })
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
            flushes: AtomicU64::new(0),
            discards: AtomicU64::new(0),
            write_zeroes: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            control_commands: AtomicU64::new(0),
            control_keyslot_commands: AtomicU64::new(0),
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

    /// The counters as JSON.
    pub fn to_json(&self) -> Value {
        let rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let per_slot: Vec<u64> = self.per_slot_uses.iter().map(|c| c.load(Relaxed)).collect();
        json!({
            "keyslots": {
                "programmed": self.slots_programmed.load(Relaxed),
                "evicted": self.slots_evicted.load(Relaxed),
                "evicted_by_reset": self.slots_reset.load(Relaxed),
                "uses_per_slot": per_slot,
            },
            "crypto_in": self.crypto_reads.to_json(),
            "crypto_out": self.crypto_writes.to_json(),
            "plain_in": self.plain_reads.to_json(),
            "plain_out": self.plain_writes.to_json(),
            "flush": self.flushes.load(Relaxed),
            "discard": self.discards.load(Relaxed),
            "write_zeroes": self.write_zeroes.load(Relaxed),
            "queries": self.queries.load(Relaxed),
            "control_queue": {
                "commands": self.control_commands.load(Relaxed),
                "keyslot_commands": self.control_keyslot_commands.load(Relaxed),
            },
            "rejected": {
                "total": rejected.values().sum::<u64>(),
                "by_kind": rejected,
            },
        })
    }
}
