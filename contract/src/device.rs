//! Device → host: what `icelab serve` writes for the host to read back.
//!
//! - `--stats FILE`: one JSON document, [`StatsFile`]
//!   (`{"device": {...}, "stats": {...}}`), written atomically at exit and
//!   on SIGUSR1;
//! - `--trace FILE`: one JSON line per event, [`TraceLine`]
//!   (`{"t": seconds, "event": "program", ...}`): keyslot programs and
//!   evictions, refused requests, GET_IDs (the guest's marks, see
//!   [`crate::marks`]) and, once, the cap being reached.
//!
//! The emulator serializes these types and the host deserializes them;
//! neither side names a field by string. Fingerprints are the device's
//! 64-bit key fingerprints in hex, never key material.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

// --- the stats file -------------------------------------------------------------------

/// The `--stats` file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsFile {
    /// How the device was configured.
    pub device: DeviceInfo,
    /// What it counted.
    pub stats: Counters,
}

impl StatsFile {
    /// Parses a stats file's text.
    pub fn from_json(text: &[u8]) -> serde_json::Result<StatsFile> {
        serde_json::from_slice(text)
    }

    /// The file's text (pretty-printed, as `icelab serve` writes it).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
    }
}

/// The device's configuration, as `icelab serve` was started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The image file.
    pub image: PathBuf,
    /// Its size in bytes.
    pub capacity_bytes: u64,
    /// Request queues (the control queue comes after them).
    pub queues: u16,
    /// `--read-only`.
    pub read_only: bool,
    /// The engine profile's name (`ufs`, `emmc`).
    pub profile: String,
    /// False for a device without inline encryption (`--profile none`).
    pub inline_encryption: bool,
    /// The deliberate fault (`--fault`), if any.
    pub fault: Option<String>,
    /// Keyslots (`None` without inline encryption).
    pub keyslots: Option<u16>,
    /// Most DUN bytes a key may use.
    pub max_dun_bytes: Option<u8>,
    /// Data unit sizes the engine accepts, in bytes.
    pub data_unit_sizes: Option<Vec<u32>>,
    /// The device default key (`--default-key`), if any: requests without
    /// a crypto context are encrypted with it.
    pub default_key: Option<DefaultKeyInfo>,
    /// `--key-usage-limit`, if set.
    pub key_usage_limit: Option<KeyUsageLimit>,
    /// Key types the engine accepts (`raw`, `hw-wrapped`; config byte
    /// 99), `None` without inline encryption.
    #[serde(default)]
    pub key_types: Option<Vec<String>>,
}

/// The engine's and the device's counters (`stats` in the file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Keyslot programs and evictions.
    pub keyslots: KeyslotCounters,
    /// CRYPTO_IN requests served.
    pub crypto_in: Traffic,
    /// CRYPTO_OUT requests served.
    pub crypto_out: Traffic,
    /// Plain IN requests served.
    pub plain_in: Traffic,
    /// Plain OUT requests served.
    pub plain_out: Traffic,
    /// Requests without a crypto context decrypted with the device default
    /// key (these are not in `plain_in`).
    pub default_key_in: Traffic,
    /// Requests without a crypto context encrypted with the device default
    /// key, WRITE_ZEROES included (not in `plain_out`).
    pub default_key_out: Traffic,
    /// FLUSH requests served.
    pub flush: u64,
    /// DISCARD requests served.
    pub discard: u64,
    /// WRITE_ZEROES requests served.
    pub write_zeroes: u64,
    /// GET_ID and GET_CRYPTO_MODES requests served.
    pub queries: u64,
    /// Commands that arrived on the control queue.
    pub control_queue: ControlQueueCounters,
    /// Hardware-wrapped key management (requests 32..35 and keyslots
    /// programmed with a hardware-wrapped key).
    pub key_manager: KeyManagerCounters,
    /// Refused requests.
    pub rejected: Rejections,
    /// What each key encrypted and decrypted, in the order the keys were
    /// first used (see [`KeyUsage`]).
    pub key_usage: Vec<KeyUsage>,
    /// Entries dropped from a full ledger (keys no keyslot held any more;
    /// the device tracks a few thousand keys).
    pub key_usage_forgotten: u64,
}

/// The device default key, as the stats file shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultKeyInfo {
    /// The key's fingerprint (the same one its [`KeyUsage`] entry shows).
    pub fingerprint: String,
    /// Its data unit size: the device's logical block size.
    pub data_unit_size: u32,
}

/// `--key-usage-limit BYTES` and `--key-usage-limit-action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsageLimit {
    /// Bytes one key may encrypt.
    pub bytes: u64,
    /// What happens past them.
    pub action: LimitAction,
}

/// What the engine does when a key would encrypt more than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitAction {
    /// Serve the request; trace `key-usage-limit` once for the key.
    Warn,
    /// Refuse the request (IOERR, log line, `key-usage-limit` refusal);
    /// trace `key-usage-limit` at the key's first refusal.
    Refuse,
}

impl LimitAction {
    /// The name on the command line and in the stats.
    pub const fn name(self) -> &'static str {
        match self {
            LimitAction::Warn => "warn",
            LimitAction::Refuse => "refuse",
        }
    }

    /// The action called `name`.
    pub fn from_name(name: &str) -> Option<LimitAction> {
        [LimitAction::Warn, LimitAction::Refuse]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// One key's usage, across every keyslot it was programmed into and every
/// eviction: keys are told apart by fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsage {
    /// The key's fingerprint.
    pub fingerprint: String,
    /// Whether this is the device default key.
    pub default_key: bool,
    /// What the key encrypted (CRYPTO_OUT; OUT and WRITE_ZEROES for the
    /// default key).
    pub encrypted: DataUnits,
    /// What it decrypted.
    pub decrypted: DataUnits,
    /// CRYPTO_OUT requests refused by `--key-usage-limit-action refuse`.
    pub refused: u64,
    /// The key reached `--key-usage-limit` (it would have encrypted more).
    pub over_limit: bool,
}

/// An amount of data in data units and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataUnits {
    /// Data units.
    pub data_units: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Keyslot counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyslotCounters {
    /// Successful KEYSLOT_PROGRAM requests.
    pub programmed: u64,
    /// Successful KEYSLOT_EVICT requests (the guest's).
    pub evicted: u64,
    /// Keys dropped by a device reset or a new connection.
    pub evicted_by_reset: u64,
    /// Crypto requests per keyslot (one entry per slot of the device).
    pub uses_per_slot: Vec<u64>,
}

/// A request count and the bytes it moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Requests.
    pub requests: u64,
    /// Data bytes.
    pub bytes: u64,
}

/// What arrived on the control queue, whatever its outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlQueueCounters {
    /// Control commands (types 29..35).
    pub commands: u64,
    /// KEYSLOT_PROGRAM and KEYSLOT_EVICT among them.
    pub keyslot_commands: u64,
}

/// What the engine's key manager did (hardware-wrapped keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyManagerCounters {
    /// IMPORT_KEY requests served (raw key to long-term wrapped).
    pub imported: u64,
    /// GENERATE_KEY requests served.
    pub generated: u64,
    /// PREPARE_KEY requests served (long-term to ephemerally wrapped).
    pub prepared: u64,
    /// DERIVE_SW_SECRET requests served.
    pub derived: u64,
    /// KEYSLOT_PROGRAMs of a hardware-wrapped key that succeeded.
    pub programmed: u64,
    /// Raw keys and wrapped blobs the key manager refused (the
    /// `wrapped-key-*` and `wrong-raw-key-size` kinds in
    /// [`Rejections::by_kind`]).
    pub refused: u64,
}

/// Refused requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejections {
    /// All of them.
    pub total: u64,
    /// Per kind (`slot-empty`, `wrong-queue`, ...: the `kind` of the
    /// trace's [`RejectEvent`]s); kinds never seen are absent.
    pub by_kind: BTreeMap<String, u64>,
}

impl Rejections {
    /// Refusals of `kind` (0 when there were none).
    pub fn of_kind(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }
}

/// Kinds of refused requests the host looks for (in
/// [`Rejections::by_kind`] and [`RejectEvent::kind`]). The device has
/// more; these are the ones a check names.
pub mod reject_kind {
    /// A crypto request named a keyslot that holds no key (expected in a
    /// device restart until the driver has programmed its keys again).
    pub const SLOT_EMPTY: &str = "slot-empty";
    /// A CRYPTO_OUT refused by `--key-usage-limit-action refuse`.
    pub const KEY_USAGE_LIMIT: &str = "key-usage-limit";
    /// A hardware-wrapped key request (32..35) to an engine whose
    /// `key_types` lacks hardware-wrapped keys (UNSUPP).
    pub const WRAPPED_KEYS_NOT_OFFERED: &str = "wrapped-keys-not-offered";
    /// IMPORT_KEY of a raw key that is not 32 bytes.
    pub const WRONG_RAW_KEY_SIZE: &str = "wrong-raw-key-size";
    /// A blob that is not one of this device's wrapped keys at all (size,
    /// header, version).
    pub const WRAPPED_KEY_MALFORMED: &str = "wrapped-key-malformed";
    /// A long-term wrapped key where an ephemerally-wrapped one is needed
    /// (DERIVE_SW_SECRET, KEYSLOT_PROGRAM), or the other way round
    /// (PREPARE_KEY).
    pub const WRAPPED_KEY_WRONG_KIND: &str = "wrapped-key-wrong-kind";
    /// A long-term wrapped key of another device (another device secret,
    /// `--key-manager-state`).
    pub const WRAPPED_KEY_FOREIGN: &str = "wrapped-key-foreign";
    /// An ephemerally-wrapped key of an earlier boot of the engine (before
    /// a reset or a restart) or of another device.
    pub const WRAPPED_KEY_STALE: &str = "wrapped-key-stale";
    /// A wrapped key whose authentication tag does not verify: tampered
    /// with.
    pub const WRAPPED_KEY_UNAUTHENTIC: &str = "wrapped-key-unauthentic";
}

// --- the trace ------------------------------------------------------------------------

/// One line of the `--trace` file: the time and the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceLine {
    /// Seconds since the device started.
    pub t: f64,
    /// What happened (its `event` field names the kind).
    #[serde(flatten)]
    pub event: TraceEvent,
}

impl TraceLine {
    /// Parses one line of a trace file.
    pub fn from_json(line: &str) -> serde_json::Result<TraceLine> {
        serde_json::from_str(line)
    }

    /// The line's text, without the newline.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// A trace event; the `event` field of its line is the variant's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum TraceEvent {
    /// A key was programmed into a keyslot (KEYSLOT_PROGRAM).
    #[serde(rename = "program")]
    Program(ProgramEvent),
    /// A keyslot was emptied: KEYSLOT_EVICT, or a reset.
    #[serde(rename = "evict")]
    Evict(EvictEvent),
    /// A request was refused.
    #[serde(rename = "reject")]
    Reject(RejectEvent),
    /// A GET_ID was answered: the guest's marks (written before the guest
    /// sees the answer, so it orders guest actions against keyslot events).
    #[serde(rename = "get_id")]
    GetId(GetIdEvent),
    /// The trace reached its size cap; later events were dropped (the
    /// stats still count them). Always the last line.
    #[serde(rename = "trace-truncated")]
    Truncated(TruncatedEvent),
    /// A key would pass `--key-usage-limit` (once per key).
    #[serde(rename = "key-usage-limit")]
    KeyUsageLimit(KeyUsageLimitEvent),
}

impl TraceEvent {
    /// The `event` field's value.
    pub const fn name(&self) -> &'static str {
        match self {
            TraceEvent::Program(_) => "program",
            TraceEvent::Evict(_) => "evict",
            TraceEvent::Reject(_) => "reject",
            TraceEvent::GetId(_) => "get_id",
            TraceEvent::Truncated(_) => "trace-truncated",
            TraceEvent::KeyUsageLimit(_) => "key-usage-limit",
        }
    }
}

/// `program`: a key went into a keyslot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramEvent {
    /// The keyslot.
    pub slot: u32,
    /// The queue the command came on.
    pub queue: u16,
    /// The key's fingerprint.
    pub fingerprint: String,
    /// The crypto mode.
    pub mode: KeyMode,
    /// Data unit size in bytes.
    pub data_unit_size: u32,
    /// DUN bytes requests with this key may use.
    pub dun_bytes: u32,
    /// The fingerprint of the key the slot held before, if any.
    pub replaced: Option<String>,
}

/// The crypto mode of a programmed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyMode {
    /// AES-256-XTS (the only mode of the draft).
    #[serde(rename = "AES-256-XTS")]
    Aes256Xts,
}

/// `evict`: a keyslot was emptied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictEvent {
    /// The keyslot.
    pub slot: u32,
    /// The queue of the KEYSLOT_EVICT (`None` for a reset).
    pub queue: Option<u16>,
    /// Why.
    pub cause: EvictCause,
    /// The fingerprint of the key the slot held (`None`: it was empty).
    pub fingerprint: Option<String>,
}

/// Why a keyslot was emptied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictCause {
    /// The guest's KEYSLOT_EVICT (counted in `keyslots.evicted`).
    Guest,
    /// A device reset or a new connection (counted in
    /// `keyslots.evicted_by_reset`).
    Reset,
}

/// `reject`: a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectEvent {
    /// The queue.
    pub queue: u16,
    /// The request type (`CRYPTO_OUT`, ...), when its header parsed.
    pub request: Option<String>,
    /// Its sector, when its header parsed.
    pub sector: Option<u64>,
    /// Why, as counted in [`Rejections::by_kind`] (see [`reject_kind`]).
    pub kind: String,
    /// The status the guest got.
    pub status: RejectStatus,
    /// The device's explanation.
    pub message: String,
}

/// The status byte of a refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectStatus {
    /// VIRTIO_BLK_S_OK (not for a refusal; for completeness).
    #[serde(rename = "OK")]
    Ok,
    /// VIRTIO_BLK_S_IOERR.
    #[serde(rename = "IOERR")]
    IoErr,
    /// VIRTIO_BLK_S_UNSUPP.
    #[serde(rename = "UNSUPP")]
    Unsupp,
}

/// `get_id`: a GET_ID was answered (one guest mark).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetIdEvent {
    /// The queue.
    pub queue: u16,
}

/// `key-usage-limit`: a key would pass `--key-usage-limit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsageLimitEvent {
    /// The key's fingerprint.
    pub fingerprint: String,
    /// Whether it is the device default key.
    pub default_key: bool,
    /// Bytes it had encrypted before the request that would pass the limit.
    pub bytes_encrypted: u64,
    /// That request's bytes.
    pub request_bytes: u64,
    /// The limit.
    pub limit: u64,
    /// What the engine did with the request.
    pub action: LimitAction,
}

/// `trace-truncated`: the trace reached `--trace-max-bytes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncatedEvent {
    /// The cap.
    pub max_bytes: u64,
    /// What it means for the reader.
    pub message: String,
}

impl TruncatedEvent {
    /// The event for a trace capped at `max_bytes`.
    pub fn at(max_bytes: u64) -> TruncatedEvent {
        TruncatedEvent {
            max_bytes,
            message: "the trace reached --trace-max-bytes; later events were dropped \
                      (the stats count them)"
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn stats_file() -> StatsFile {
        StatsFile {
            device: DeviceInfo {
                image: PathBuf::from("/tmp/disk.img"),
                capacity_bytes: 1 << 30,
                queues: 2,
                read_only: false,
                profile: "ufs".to_owned(),
                inline_encryption: true,
                fault: Some("dun-off-by-one".to_owned()),
                keyslots: Some(32),
                max_dun_bytes: Some(8),
                data_unit_sizes: Some(vec![512, 1024, 2048, 4096]),
                default_key: Some(DefaultKeyInfo {
                    fingerprint: "00112233445566ff".to_owned(),
                    data_unit_size: 4096,
                }),
                key_usage_limit: Some(KeyUsageLimit {
                    bytes: 1 << 30,
                    action: LimitAction::Warn,
                }),
                key_types: Some(vec!["raw".to_owned(), "hw-wrapped".to_owned()]),
            },
            stats: Counters {
                keyslots: KeyslotCounters {
                    programmed: 7,
                    evicted: 3,
                    evicted_by_reset: 1,
                    uses_per_slot: vec![4, 0, 9],
                },
                crypto_in: Traffic {
                    requests: 10,
                    bytes: 40960,
                },
                crypto_out: Traffic {
                    requests: 11,
                    bytes: 45056,
                },
                plain_in: Traffic {
                    requests: 1,
                    bytes: 512,
                },
                plain_out: Traffic {
                    requests: 2,
                    bytes: 1024,
                },
                flush: 5,
                discard: 6,
                write_zeroes: 7,
                queries: 8,
                control_queue: ControlQueueCounters {
                    commands: 12,
                    keyslot_commands: 10,
                },
                key_manager: KeyManagerCounters {
                    imported: 1,
                    generated: 2,
                    prepared: 3,
                    derived: 4,
                    programmed: 5,
                    refused: 6,
                },
                rejected: Rejections {
                    total: 3,
                    by_kind: BTreeMap::from([
                        ("slot-empty".to_owned(), 2),
                        ("wrong-queue".to_owned(), 1),
                    ]),
                },
                default_key_in: Traffic {
                    requests: 13,
                    bytes: 53248,
                },
                default_key_out: Traffic {
                    requests: 14,
                    bytes: 57344,
                },
                key_usage: vec![KeyUsage {
                    fingerprint: "00112233445566ff".to_owned(),
                    default_key: true,
                    encrypted: DataUnits {
                        data_units: 14,
                        bytes: 57344,
                    },
                    decrypted: DataUnits {
                        data_units: 13,
                        bytes: 53248,
                    },
                    refused: 0,
                    over_limit: false,
                }],
                key_usage_forgotten: 0,
            },
        }
    }

    #[test]
    fn limit_actions_round_trip_by_name() {
        for action in [LimitAction::Warn, LimitAction::Refuse] {
            assert_eq!(LimitAction::from_name(action.name()), Some(action));
            let json = serde_json::to_string(&action).expect("serializes");
            assert_eq!(json, format!("\"{}\"", action.name()));
        }
        assert_eq!(LimitAction::from_name("ignore"), None);
    }

    #[test]
    fn a_stats_file_round_trips() {
        let file = stats_file();
        let text = file.to_json().expect("serializes");
        assert_eq!(StatsFile::from_json(&text).expect("parses"), file);
        let none = StatsFile::default();
        let text = none.to_json().expect("serializes");
        assert_eq!(StatsFile::from_json(&text).expect("parses"), none);
    }

    /// The field names the README documents, where the host used to find
    /// them by dotted path.
    #[test]
    fn the_stats_file_keeps_its_field_names() {
        let value = serde_json::to_value(stats_file()).expect("serializes");
        assert_eq!(value["stats"]["keyslots"]["programmed"], 7);
        assert_eq!(value["stats"]["keyslots"]["evicted_by_reset"], 1);
        assert_eq!(
            value["stats"]["keyslots"]["uses_per_slot"],
            json!([4, 0, 9])
        );
        assert_eq!(value["stats"]["crypto_out"]["requests"], 11);
        assert_eq!(value["stats"]["crypto_in"]["bytes"], 40960);
        assert_eq!(value["stats"]["plain_in"]["requests"], 1);
        assert_eq!(value["stats"]["write_zeroes"], 7);
        assert_eq!(value["stats"]["control_queue"]["keyslot_commands"], 10);
        assert_eq!(value["stats"]["key_manager"]["imported"], 1);
        assert_eq!(value["stats"]["key_manager"]["refused"], 6);
        assert_eq!(value["device"]["key_types"], json!(["raw", "hw-wrapped"]));
        assert_eq!(value["stats"]["rejected"]["total"], 3);
        assert_eq!(value["stats"]["rejected"]["by_kind"]["slot-empty"], 2);
        assert_eq!(value["stats"]["default_key_out"]["bytes"], 57344);
        assert_eq!(
            value["stats"]["key_usage"][0]["encrypted"]["data_units"],
            14
        );
        assert_eq!(value["device"]["default_key"]["data_unit_size"], 4096);
        assert_eq!(value["device"]["key_usage_limit"]["action"], "warn");
        assert_eq!(value["device"]["image"], "/tmp/disk.img");
        assert_eq!(value["device"]["fault"], "dun-off-by-one");
        assert_eq!(
            value["device"]["data_unit_sizes"],
            json!([512, 1024, 2048, 4096])
        );
        let counters = &stats_file().stats;
        assert_eq!(counters.rejected.of_kind(reject_kind::SLOT_EMPTY), 2);
        assert_eq!(counters.rejected.of_kind("misaligned"), 0);
    }

    #[test]
    fn a_stats_file_missing_a_counter_does_not_parse() {
        let mut value = serde_json::to_value(stats_file()).expect("serializes");
        value["stats"]["keyslots"]
            .as_object_mut()
            .expect("object")
            .remove("programmed");
        let text = serde_json::to_vec(&value).expect("text");
        let error = StatsFile::from_json(&text).expect_err("incomplete");
        assert!(error.to_string().contains("programmed"), "{error}");
    }

    fn events() -> Vec<TraceEvent> {
        vec![
            TraceEvent::Program(ProgramEvent {
                slot: 3,
                queue: 0,
                fingerprint: "9c1f0e6a2b7d4410".to_owned(),
                mode: KeyMode::Aes256Xts,
                data_unit_size: 4096,
                dun_bytes: 8,
                replaced: None,
            }),
            TraceEvent::Program(ProgramEvent {
                slot: 3,
                queue: 1,
                fingerprint: "0123456789abcdef".to_owned(),
                mode: KeyMode::Aes256Xts,
                data_unit_size: 512,
                dun_bytes: 4,
                replaced: Some("9c1f0e6a2b7d4410".to_owned()),
            }),
            TraceEvent::Evict(EvictEvent {
                slot: 3,
                queue: Some(1),
                cause: EvictCause::Guest,
                fingerprint: Some("0123456789abcdef".to_owned()),
            }),
            TraceEvent::Evict(EvictEvent {
                slot: 4,
                queue: None,
                cause: EvictCause::Reset,
                fingerprint: None,
            }),
            TraceEvent::Reject(RejectEvent {
                queue: 0,
                request: Some("CRYPTO_OUT".to_owned()),
                sector: Some(8),
                kind: reject_kind::SLOT_EMPTY.to_owned(),
                status: RejectStatus::IoErr,
                message: "guest used keyslot 5, which holds no key (program it first)".to_owned(),
            }),
            TraceEvent::Reject(RejectEvent {
                queue: 2,
                request: None,
                sector: None,
                kind: "short-header".to_owned(),
                status: RejectStatus::Unsupp,
                message: "short".to_owned(),
            }),
            TraceEvent::GetId(GetIdEvent { queue: 1 }),
            TraceEvent::Truncated(TruncatedEvent::at(1000)),
            TraceEvent::KeyUsageLimit(KeyUsageLimitEvent {
                fingerprint: "0123456789abcdef".to_owned(),
                default_key: false,
                bytes_encrypted: 1 << 20,
                request_bytes: 4096,
                limit: 1 << 20,
                action: LimitAction::Refuse,
            }),
        ]
    }

    #[test]
    fn every_event_kind_round_trips() {
        for (n, event) in events().into_iter().enumerate() {
            let line = TraceLine {
                t: n as f64 * 0.25,
                event,
            };
            let text = line.to_json().expect("serializes");
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(TraceLine::from_json(&text).expect(&text), line);
            let value: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(value["event"], line.event.name(), "{text}");
        }
    }

    /// The README's example lines, as the device wrote them before the
    /// types existed.
    #[test]
    fn the_documented_lines_parse() {
        let lines = [
            r#"{"t":0.42,"event":"program","slot":3,"queue":0,"fingerprint":"9c1f0e6a2b7d4410","mode":"AES-256-XTS","data_unit_size":4096,"dun_bytes":8,"replaced":null}"#,
            r#"{"t":0.97,"event":"evict","slot":3,"queue":1,"cause":"guest","fingerprint":"9c1f0e6a2b7d4410"}"#,
            r#"{"t":1.20,"event":"reject","queue":0,"request":"CRYPTO_OUT","sector":8,"kind":"slot-empty","status":"IOERR","message":"guest used keyslot 5, which holds no key (program it first)"}"#,
            r#"{"cause":"reset","event":"evict","fingerprint":null,"queue":null,"slot":0,"t":2.5}"#,
            r#"{"event":"get_id","queue":0,"t":3.0}"#,
            r#"{"event":"trace-truncated","max_bytes":1000,"message":"m","t":4.0}"#,
        ];
        let parsed: Vec<TraceLine> = lines
            .iter()
            .map(|l| TraceLine::from_json(l).expect(l))
            .collect();
        assert_eq!(parsed[0].t, 0.42);
        assert_eq!(parsed[0].event, events()[0]);
        assert!(matches!(
            &parsed[1].event,
            TraceEvent::Evict(EvictEvent {
                cause: EvictCause::Guest,
                queue: Some(1),
                ..
            })
        ));
        assert_eq!(parsed[2].event, events()[4]);
        assert!(matches!(
            &parsed[3].event,
            TraceEvent::Evict(EvictEvent {
                cause: EvictCause::Reset,
                queue: None,
                ..
            })
        ));
        assert_eq!(parsed[4].event, TraceEvent::GetId(GetIdEvent { queue: 0 }));
        assert!(matches!(
            &parsed[5].event,
            TraceEvent::Truncated(TruncatedEvent {
                max_bytes: 1000,
                ..
            })
        ));
        // The time and the kind lead each written line, as documented.
        let text = TraceLine {
            t: 0.5,
            event: events()[0].clone(),
        }
        .to_json()
        .expect("serializes");
        assert!(
            text.starts_with(r#"{"t":0.5,"event":"program","slot":3,"#),
            "{text}"
        );
    }

    #[test]
    fn unknown_or_malformed_events_do_not_parse() {
        for line in [
            r#"{"t":1.0,"event":"program","slot":3}"#,
            r#"{"t":1.0,"event":"teleport","queue":0}"#,
            r#"{"t":1.0,"queue":0}"#,
            r#"{"event":"get_id","queue":0}"#,
            r#"{"t":1.0,"event":"evict","slot":0,"queue":null,"cause":"gremlins","fingerprint":null}"#,
        ] {
            assert!(TraceLine::from_json(line).is_err(), "{line}");
        }
    }
}
