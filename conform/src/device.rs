//! What the device advertises, read once by a probe connection before the
//! checks: offered features, the config space, GET_CRYPTO_MODES. Checks
//! use it to pick parameters (data unit sizes, slots, DUN bytes) and to
//! decide what to skip; the config checks read it again themselves.

use icelab_frontend::blk::ConfigSpace;
use icelab_protocol::{
    CONFIG_SIZE, KeyType, VIRTIO_BLK_F_CTRL_VQ, VIRTIO_BLK_F_INLINE_ENCRYPTION, feature,
};

use crate::check::{Failure, Stop};
use crate::session::{Op, Q, Session, status_name};

/// Smallest data unit size the draft allows (bit 9 of `modes[1]`).
pub const MIN_DATA_UNIT_BITS: u32 = 9;
/// Largest (bit 16: 64 KiB).
pub const MAX_DATA_UNIT_BITS: u32 = 16;
/// The AES-256-XTS tweak is 16 bytes: DUN bytes past it cannot reach the
/// cipher, so checks program at most this many.
pub const MAX_CHECKED_DUN_BYTES: u8 = 16;

/// The reason every inline-encryption check gives on a plain device.
pub const NO_INLINE_ENCRYPTION: &str =
    "the device does not offer VIRTIO_BLK_F_INLINE_ENCRYPTION (bit 23)";

/// What the probe found.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The socket.
    pub socket: std::path::PathBuf,
    /// GET_FEATURES.
    pub offered_features: u64,
    /// Features acked by a default connection.
    pub acked_features: u64,
    /// Request queues of a default connection.
    pub num_queues: u16,
    /// GET_QUEUE_NUM, when MQ was negotiated.
    pub backend_queue_num: Option<u64>,
    /// The config space (104 bytes when inline encryption was acked), or
    /// why it could not be read.
    pub config: Result<ConfigSpace, String>,
    /// The raw config bytes read.
    pub config_bytes: Vec<u8>,
    /// GET_CRYPTO_MODES's answer when inline encryption was negotiated:
    /// `Ok(modes)` or what was wrong with the answer.
    pub crypto_modes: Option<Result<[u32; 2], String>>,
}

impl DeviceInfo {
    /// Connects once and reads what the device advertises. Only a failure
    /// to connect is an error; a bad config or modes answer is recorded.
    pub fn probe(socket: &std::path::Path, session: &mut Session) -> Self {
        let frontend = session.frontend();
        let offered_features = frontend.offered_features();
        let acked_features = frontend.acked_features();
        let num_queues = frontend.num_queues();
        let backend_queue_num = frontend.backend_queue_num();
        let crypto_acked = frontend.has_feature(VIRTIO_BLK_F_INLINE_ENCRYPTION);
        let (config, config_bytes) = if crypto_acked {
            // Lengths are constants far below u32::MAX.
            match frontend.get_config(0, CONFIG_SIZE as u32) {
                Ok(bytes) => (Ok(ConfigSpace::parse(&bytes)), bytes),
                Err(error) => (
                    Err(format!("GET_CONFIG of {CONFIG_SIZE} bytes failed: {error}")),
                    Vec::new(),
                ),
            }
        } else {
            match frontend.block_config() {
                Ok(config) => (Ok(config), Vec::new()),
                Err(error) => (Err(format!("GET_CONFIG failed: {error}")), Vec::new()),
            }
        };
        let crypto_modes = icelab_protocol::crypto_negotiated(acked_features).then(|| {
            read_modes(session, 8)
                .map(|(modes, _)| modes)
                .map_err(|failure| {
                    let mut text = failure.message;
                    if let Some(response) = failure.response {
                        text.push_str(&format!(" ({response})"));
                    }
                    text
                })
        });
        Self {
            socket: socket.to_owned(),
            offered_features,
            acked_features,
            num_queues,
            backend_queue_num,
            config,
            config_bytes,
            crypto_modes,
        }
    }

    /// True when the device offers feature `bit`.
    pub fn offers(&self, bit: u32) -> bool {
        self.offered_features & feature(bit) != 0
    }

    /// The inline-encryption capabilities, or why checks of them skip
    /// (feature not offered) or cannot run (unusable advertisement).
    pub fn crypto(&self) -> Result<CryptoInfo, Stop> {
        if !self.offers(VIRTIO_BLK_F_INLINE_ENCRYPTION) {
            return Err(Stop::Skip(NO_INLINE_ENCRYPTION.into()));
        }
        if !self.offers(VIRTIO_BLK_F_CTRL_VQ) {
            return Err(Stop::Fail(Failure::new(
                "the device offers VIRTIO_BLK_F_INLINE_ENCRYPTION (bit 23) without \
                 VIRTIO_BLK_F_CTRL_VQ (bit 22): there is no control queue to program keys on",
            )));
        }
        let unusable = |what: String| Stop::Fail(Failure::new(format!("cannot run: {what}")));
        let config = self
            .config
            .as_ref()
            .map_err(|error| unusable(format!("the config space: {error}")))?;
        let caps = config.crypto.ok_or_else(|| {
            unusable("the config space has no inline-encryption fields (bytes 96..104)".into())
        })?;
        if caps.max_slots == 0 {
            return Err(unusable(
                "config max_slots is 0 (see config/crypto-fields)".into(),
            ));
        }
        if caps.max_dun_bytes == 0 {
            return Err(unusable(
                "config max_dun_bytes is 0 (see config/crypto-fields)".into(),
            ));
        }
        if caps.key_types & KeyType::Raw.config_bit() == 0 {
            return Err(unusable(
                "config key_types does not include raw keys (see config/crypto-fields)".into(),
            ));
        }
        let modes = match &self.crypto_modes {
            Some(Ok(modes)) => *modes,
            Some(Err(error)) => {
                return Err(unusable(format!(
                    "GET_CRYPTO_MODES: {error} (see config/crypto-modes)"
                )));
            }
            None => return Err(unusable("GET_CRYPTO_MODES was not answered".into())),
        };
        let data_unit_sizes: Vec<u32> = (MIN_DATA_UNIT_BITS..=MAX_DATA_UNIT_BITS)
            .filter(|bit| modes[1] & (1 << bit) != 0)
            .map(|bit| 1u32 << bit)
            .collect();
        if data_unit_sizes.is_empty() {
            return Err(unusable(format!(
                "GET_CRYPTO_MODES modes[1] = {:#x} names no data unit size from 512 to 65536 \
                 (see config/crypto-modes)",
                modes[1]
            )));
        }
        Ok(CryptoInfo {
            max_slots: caps.max_slots,
            max_dun_bytes: caps.max_dun_bytes,
            key_types: caps.key_types,
            modes1: modes[1],
            data_unit_sizes,
        })
    }
}

/// GET_CRYPTO_MODES on the control queue with an `len`-byte answer
/// buffer, checked: status OK, the answer there. Returns `modes` and the
/// used length.
pub fn read_modes(session: &mut Session, len: u32) -> Result<([u32; 2], u32), Failure> {
    let op = Op::get_crypto_modes(len);
    let reply = session.expect(
        Q::Control,
        &op,
        icelab_protocol::Status::Ok,
        "GET_CRYPTO_MODES",
    )?;
    let word = |index: usize| -> Option<u32> {
        let bytes = reply.data.get(index * 4..index * 4 + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    match (word(0), word(1)) {
        (Some(reserved), Some(xts)) if reply.used_len >= 9 => Ok(([reserved, xts], reply.used_len)),
        _ => Err(Failure::new(format!(
            "GET_CRYPTO_MODES: status {} but used length {} (the 8-byte answer and the status \
             byte are 9)",
            status_name(reply.status),
            reply.used_len
        ))
        .request(session.describe(Q::Control, &op))
        .response(reply.describe())),
    }
}

/// The inline-encryption capabilities, checked usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoInfo {
    /// Keyslots (≥ 1).
    pub max_slots: u16,
    /// Largest dun_bytes (≥ 1).
    pub max_dun_bytes: u8,
    /// Config key_types (has raw).
    pub key_types: u8,
    /// GET_CRYPTO_MODES modes[1].
    pub modes1: u32,
    /// Data unit sizes from modes[1], 512..=65536, ascending (not empty).
    pub data_unit_sizes: Vec<u32>,
}

impl CryptoInfo {
    /// The dun_bytes checks program: max_dun_bytes, at most 16.
    pub fn dun_bytes(&self) -> u32 {
        u32::from(self.max_dun_bytes.min(MAX_CHECKED_DUN_BYTES))
    }

    /// 4096 when advertised (the usual filesystem block), else the
    /// largest size below it, else the smallest.
    pub fn default_data_unit_size(&self) -> u32 {
        let sizes = &self.data_unit_sizes;
        sizes
            .iter()
            .rev()
            .find(|size| **size <= 4096)
            .or(sizes.first())
            .copied()
            .unwrap_or(4096)
    }

    /// A size larger than 512 (for misalignment checks), preferring 4096.
    pub fn data_unit_size_above_512(&self) -> Option<u32> {
        let preferred = self.default_data_unit_size();
        if preferred > 512 {
            return Some(preferred);
        }
        self.data_unit_sizes
            .iter()
            .copied()
            .find(|size| *size > 512)
    }

    /// True when hardware-wrapped keys are advertised.
    pub fn wrapped_keys(&self) -> bool {
        self.key_types & KeyType::HardwareWrapped.config_bit() != 0
    }
}

/// Data units per crypto request: at least 2, and at least 4 KiB of data.
pub fn units_per_request(data_unit_size: u32) -> u32 {
    (4096 / data_unit_size.max(1)).max(2)
}

/// The largest DUN `dun_bytes` bytes hold: 2^(8·dun_bytes) − 1.
pub fn dun_limit(dun_bytes: u32) -> u128 {
    if dun_bytes >= 16 {
        u128::MAX
    } else {
        (1u128 << (8 * dun_bytes)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sizes: &[u32]) -> CryptoInfo {
        CryptoInfo {
            max_slots: 32,
            max_dun_bytes: 8,
            key_types: 1,
            modes1: sizes.iter().fold(0, |m, s| m | s),
            data_unit_sizes: sizes.to_vec(),
        }
    }

    #[test]
    fn preferred_sizes() {
        assert_eq!(
            info(&[512, 1024, 2048, 4096]).default_data_unit_size(),
            4096
        );
        assert_eq!(info(&[512, 8192]).default_data_unit_size(), 512);
        assert_eq!(info(&[512, 8192]).data_unit_size_above_512(), Some(8192));
        assert_eq!(info(&[512]).data_unit_size_above_512(), None);
        assert_eq!(info(&[16384]).default_data_unit_size(), 16384);
        assert_eq!(units_per_request(512), 8);
        assert_eq!(units_per_request(65536), 2);
        assert_eq!(dun_limit(4), u32::MAX as u128);
        assert_eq!(dun_limit(8), u64::MAX as u128);
        assert_eq!(dun_limit(16), u128::MAX);
    }
}
