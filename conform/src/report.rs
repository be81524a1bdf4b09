//! The JSON report of a run (`icelab conform --json FILE`):
//!
//! ```text
//! { "tool": "icelab conform", "protocol": "docs/PROTOCOL.md",
//!   "device": { "socket", "offered_features" (hex), "offered_feature_bits",
//!               "inline_encryption", "request_queues", "vhost_queue_num",
//!               "config": {...} | null, "config_error",
//!               "crypto_modes": [m0, m1] | null, "crypto_modes_error",
//!               "data_unit_sizes": [...] },
//!   "checks": [ { "id", "section", "requirement": "MUST" | "CHOICE",
//!                 "outcome": "pass" | "fail" | "skip",
//!                 "message", "request", "response" (null when absent),
//!                 "duration" (seconds) } ],
//!   "passed", "failed", "skipped", "duration" (seconds) }
//! ```
//!
//! `message` is the failure's message or the skip's reason. No key bytes
//! appear anywhere: keys are named "key #n".

use std::time::Duration;

use serde::Serialize;

use crate::check::{Outcome, Requirement};
use crate::device::DeviceInfo;
use crate::runner::CheckRecord;

/// The whole document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "icelab conform".
    pub tool: &'static str,
    /// The specification checked against.
    pub protocol: &'static str,
    /// What the device advertised.
    pub device: DeviceReport,
    /// Every check instance, in run order.
    pub checks: Vec<CheckReport>,
    /// Checks passed.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
    /// Checks skipped.
    pub skipped: usize,
    /// Wall time of the run, seconds.
    pub duration: f64,
}

/// What the device advertised.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// The vhost-user socket.
    pub socket: String,
    /// GET_FEATURES, hex.
    pub offered_features: String,
    /// The offered feature bits.
    pub offered_feature_bits: Vec<u32>,
    /// Bits 22 and 23 both offered.
    pub inline_encryption: bool,
    /// Request queues of a default connection.
    pub request_queues: u16,
    /// GET_QUEUE_NUM, when the device negotiates vhost-user MQ.
    pub vhost_queue_num: Option<u64>,
    /// The config space fields.
    pub config: Option<ConfigReport>,
    /// Why the config space could not be read.
    pub config_error: Option<String>,
    /// GET_CRYPTO_MODES's answer.
    pub crypto_modes: Option<[u32; 2]>,
    /// Why GET_CRYPTO_MODES gave no usable answer.
    pub crypto_modes_error: Option<String>,
    /// Data unit sizes of modes[1] (512..=65536).
    pub data_unit_sizes: Vec<u32>,
}

/// Config space fields.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigReport {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// blk_size.
    pub blk_size: u32,
    /// size_max.
    pub size_max: u32,
    /// seg_max.
    pub seg_max: u32,
    /// num_queues.
    pub num_queues: u16,
    /// max_slots (byte 96).
    pub max_slots: Option<u16>,
    /// max_dun_bytes (byte 98).
    pub max_dun_bytes: Option<u8>,
    /// key_types (byte 99).
    pub key_types: Option<u8>,
}

/// One check instance.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Id.
    pub id: String,
    /// docs/PROTOCOL.md section.
    pub section: &'static str,
    /// MUST or CHOICE.
    pub requirement: Requirement,
    /// "pass", "fail" or "skip".
    pub outcome: &'static str,
    /// Failure message or skip reason.
    pub message: Option<String>,
    /// The request that showed the failure.
    pub request: Option<String>,
    /// The device's answer to it.
    pub response: Option<String>,
    /// Seconds.
    pub duration: f64,
}

impl From<&CheckRecord> for CheckReport {
    fn from(record: &CheckRecord) -> Self {
        let (message, request, response) = match &record.outcome {
            Outcome::Pass => (None, None, None),
            Outcome::Fail(failure) => (
                Some(failure.message.clone()),
                failure.request.clone(),
                failure.response.clone(),
            ),
            Outcome::Skip { reason } => (Some(reason.clone()), None, None),
        };
        Self {
            id: record.id.clone(),
            section: record.section,
            requirement: record.requirement,
            outcome: record.outcome.name(),
            message,
            request,
            response,
            duration: record.duration.as_secs_f64(),
        }
    }
}

impl DeviceReport {
    /// From the probe.
    pub fn new(device: &DeviceInfo) -> Self {
        let crypto = device.crypto().ok();
        let (crypto_modes, crypto_modes_error) = match &device.crypto_modes {
            Some(Ok(modes)) => (Some(*modes), None),
            Some(Err(error)) => (None, Some(error.clone())),
            None => (None, None),
        };
        Self {
            socket: device.socket.display().to_string(),
            offered_features: format!("{:#x}", device.offered_features),
            offered_feature_bits: (0..64)
                .filter(|bit| device.offered_features & (1u64 << bit) != 0)
                .collect(),
            inline_encryption: device.offers(icelab_protocol::VIRTIO_BLK_F_INLINE_ENCRYPTION)
                && device.offers(icelab_protocol::VIRTIO_BLK_F_CTRL_VQ),
            request_queues: device.num_queues,
            vhost_queue_num: device.backend_queue_num,
            config: device.config.as_ref().ok().map(|config| ConfigReport {
                capacity_sectors: config.capacity_sectors,
                blk_size: config.blk_size,
                size_max: config.size_max,
                seg_max: config.seg_max,
                num_queues: config.num_queues,
                max_slots: config.crypto.map(|c| c.max_slots),
                max_dun_bytes: config.crypto.map(|c| c.max_dun_bytes),
                key_types: config.crypto.map(|c| c.key_types),
            }),
            config_error: device.config.as_ref().err().cloned(),
            crypto_modes,
            crypto_modes_error,
            data_unit_sizes: crypto.map(|c| c.data_unit_sizes).unwrap_or_default(),
        }
    }
}

impl Report {
    /// The report of `records` run against `device` in `duration`.
    pub fn new(device: &DeviceInfo, records: &[CheckRecord], duration: Duration) -> Self {
        let count = |name: &str| {
            records
                .iter()
                .filter(|record| record.outcome.name() == name)
                .count()
        };
        Self {
            tool: "icelab conform",
            protocol: "docs/PROTOCOL.md",
            device: DeviceReport::new(device),
            checks: records.iter().map(CheckReport::from).collect(),
            passed: count("pass"),
            failed: count("fail"),
            skipped: count("skip"),
            duration: duration.as_secs_f64(),
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Every field is a string, number, bool, array or null: this
        // cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|error| {
            format!("{{\"error\": \"cannot serialize the report: {error}\"}}")
        })
    }
}
