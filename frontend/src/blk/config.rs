//! The virtio-blk configuration space as read with GET_CONFIG
//! (VIRTIO 1.2 §5.2.4, plus the draft's inline-encryption bytes 96..104).

use icelab_emulator::protocol::{CONFIG_SIZE, config_offset, parse_crypto_config};

/// The inline-encryption fields of the config space (draft, byte 96).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoConfig {
    /// Number of keyslots.
    pub max_slots: u16,
    /// Largest `dun_bytes` a slot may be programmed with.
    pub max_dun_bytes: u8,
    /// Bit 0 raw keys, bit 1 hardware-wrapped keys.
    pub key_types: u8,
}

/// The fields of `struct virtio_blk_config` a test or benchmark needs.
/// Fields past the end of what the backend returned read as 0 (or
/// `None` for the crypto fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    /// The bytes as returned.
    pub raw: Vec<u8>,
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Largest segment in bytes (VIRTIO_BLK_F_SIZE_MAX).
    pub size_max: u32,
    /// Most data segments per request (VIRTIO_BLK_F_SEG_MAX).
    pub seg_max: u32,
    /// Logical block size (VIRTIO_BLK_F_BLK_SIZE).
    pub blk_size: u32,
    /// Number of request queues (VIRTIO_BLK_F_MQ).
    pub num_queues: u16,
    /// Largest discard in sectors.
    pub max_discard_sectors: u32,
    /// Most discard segments per request.
    pub max_discard_seg: u32,
    /// Largest write-zeroes in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most write-zeroes segments per request.
    pub max_write_zeroes_seg: u32,
    /// Inline-encryption fields, when the backend returned them.
    pub crypto: Option<CryptoConfig>,
}

impl ConfigSpace {
    /// Parses however many bytes the backend returned.
    pub fn parse(raw: &[u8]) -> Self {
        use config_offset as o;
        let le = |offset: usize, width: usize| -> u64 {
            raw.get(offset..offset + width).map_or(0, |bytes| {
                bytes
                    .iter()
                    .rev()
                    .fold(0u64, |value, byte| (value << 8) | u64::from(*byte))
            })
        };
        // Each value below is read with the width of its field, so the
        // narrowing casts cannot lose bits.
        let crypto = (raw.len() >= CONFIG_SIZE)
            .then(|| parse_crypto_config(raw))
            .flatten()
            .map(|(max_slots, max_dun_bytes, key_types)| CryptoConfig {
                max_slots,
                max_dun_bytes,
                key_types,
            });
        Self {
            raw: raw.to_vec(),
            capacity_sectors: le(o::CAPACITY, 8),
            size_max: le(o::SIZE_MAX, 4) as u32,
            seg_max: le(o::SEG_MAX, 4) as u32,
            blk_size: le(o::BLK_SIZE, 4) as u32,
            num_queues: le(o::NUM_QUEUES, 2) as u16,
            max_discard_sectors: le(o::MAX_DISCARD_SECTORS, 4) as u32,
            max_discard_seg: le(o::MAX_DISCARD_SEG, 4) as u32,
            max_write_zeroes_sectors: le(o::MAX_WRITE_ZEROES_SECTORS, 4) as u32,
            max_write_zeroes_seg: le(o::MAX_WRITE_ZEROES_SEG, 4) as u32,
            crypto,
        }
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors
            .saturating_mul(icelab_emulator::protocol::SECTOR_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_emulator::protocol::{BlockConfig, CryptoCapabilities};

    #[test]
    fn parses_what_the_protocol_module_encodes() {
        let config = BlockConfig {
            capacity_sectors: 131072,
            size_max: 65536,
            seg_max: 126,
            blk_size: 4096,
            num_queues: 4,
            max_discard_sectors: 1 << 20,
            max_discard_seg: 1,
            max_write_zeroes_sectors: 1 << 19,
            max_write_zeroes_seg: 1,
            crypto: Some(CryptoCapabilities {
                max_slots: 32,
                max_dun_bytes: 8,
                key_types: 1,
            }),
        };
        let parsed = ConfigSpace::parse(&config.encode());
        assert_eq!(parsed.capacity_sectors, 131072);
        assert_eq!(parsed.capacity_bytes(), 64 << 20);
        assert_eq!(parsed.size_max, 65536);
        assert_eq!(parsed.seg_max, 126);
        assert_eq!(parsed.blk_size, 4096);
        assert_eq!(parsed.num_queues, 4);
        assert_eq!(parsed.max_write_zeroes_sectors, 1 << 19);
        assert_eq!(
            parsed.crypto,
            Some(CryptoConfig {
                max_slots: 32,
                max_dun_bytes: 8,
                key_types: 1
            })
        );
    }

    #[test]
    fn short_config_leaves_missing_fields_zero() {
        let mut raw = vec![0u8; 60];
        raw[..8].copy_from_slice(&2048u64.to_le_bytes());
        let parsed = ConfigSpace::parse(&raw);
        assert_eq!(parsed.capacity_sectors, 2048);
        assert_eq!(parsed.crypto, None);
        assert_eq!(ConfigSpace::parse(&[]).capacity_sectors, 0);
    }
}
