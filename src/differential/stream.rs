//! The seeded request stream of the differential mode: valid and invalid
//! requests of every kind the protocol has, aimed at a small region of
//! the disk and a few keyslots so that they interact (a write under one
//! key read back under another, a slot replaced between write and read,
//! requests at the edges of the DUN space).
//!
//! The same seed gives the same stream for the same capabilities: a
//! divergence is replayed with `--seed` and `--requests`.

use icelab_emulator::engine::capabilities::Capabilities;
use icelab_frontend::blk::Request;
use icelab_protocol::{CryptoMsg, DiscardSegment, Dun, KeyDesc, RequestType};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Sectors of the region the stream reads and writes (4 MiB).
pub const REGION_SECTORS: u64 = 8192;
/// Keyslots the stream uses (or fewer, when the device has fewer).
const SLOTS_USED: u32 = 4;

/// Which queue a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The first request queue.
    Request,
    /// The control queue.
    Control,
}

/// One step of the stream.
pub struct Step {
    /// The request.
    pub request: Request,
    /// Where it goes.
    pub target: Target,
    /// What it is, for a divergence report (never key bytes).
    pub what: String,
    /// Compare the data it returns (not for GET_ID: the serial differs).
    pub compare_data: bool,
}

/// The optional plain requests the device under test offers (its
/// VIRTIO_BLK_F_FLUSH and VIRTIO_BLK_F_WRITE_ZEROES bits): the stream
/// sends only those, since the reference would serve them either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainFeatures {
    /// FLUSH.
    pub flush: bool,
    /// WRITE_ZEROES.
    pub write_zeroes: bool,
}

/// The generator.
pub struct Stream {
    rng: StdRng,
    caps: Option<Capabilities>,
    plain: PlainFeatures,
    /// Data unit size last programmed into each used slot (a guess that
    /// makes most requests whole data units; the devices decide).
    slot_units: Vec<u32>,
    keys: u64,
}

impl Stream {
    /// The stream of `seed` for a device with `caps` and `plain`.
    pub fn new(seed: u64, caps: Option<Capabilities>, plain: PlainFeatures) -> Self {
        let slots = caps.map_or(0, |c| u32::from(c.slots).min(SLOTS_USED));
        Self {
            rng: StdRng::seed_from_u64(seed),
            caps,
            plain,
            slot_units: vec![4096; slots as usize],
            keys: 0,
        }
    }

    /// The data that fills the region before the stream (written to both
    /// devices with plain writes), `len` bytes at a time.
    pub fn region_fill(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        data
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        let Some(caps) = self.caps else {
            return self.plain_step();
        };
        match self.rng.random_range(0..100u32) {
            0..12 => self.program(&caps),
            12..16 => self.bad_program(&caps),
            16..22 => self.evict(&caps),
            22..50 => self.crypto(&caps, RequestType::CryptoOut),
            50..75 => self.crypto(&caps, RequestType::CryptoIn),
            75..77 => self.wrong_queue(&caps),
            77..78 => Step {
                request: Request::get_crypto_modes(),
                target: Target::Control,
                what: "GET_CRYPTO_MODES".into(),
                compare_data: true,
            },
            _ => self.plain_step(),
        }
    }

    fn slot(&mut self, caps: &Capabilities) -> u32 {
        let used = u32::from(caps.slots).min(SLOTS_USED);
        // Now and then one past the device's last slot.
        if self.rng.random_range(0..20u32) == 0 {
            u32::from(caps.slots)
        } else {
            self.rng.random_range(0..used)
        }
    }

    fn data_unit_sizes(caps: &Capabilities) -> Vec<u32> {
        caps.data_unit_sizes.sizes().collect()
    }

    fn program(&mut self, caps: &Capabilities) -> Step {
        let slot = self
            .rng
            .random_range(0..u32::from(caps.slots).min(SLOTS_USED));
        let sizes = Self::data_unit_sizes(caps);
        let unit = sizes[self.rng.random_range(0..sizes.len())];
        let dun_bytes = self.rng.random_range(1..=u32::from(caps.max_dun_bytes));
        let mut key = zeroize::Zeroizing::new([0u8; 64]);
        self.rng.fill_bytes(&mut key[..]);
        self.keys += 1;
        if let Some(units) = self.slot_units.get_mut(slot as usize) {
            *units = unit;
        }
        let desc = KeyDesc::raw_aes_256_xts(slot, &key, unit, dun_bytes);
        Step {
            request: Request::keyslot_program(&desc),
            target: Target::Control,
            what: format!(
                "KEYSLOT_PROGRAM slot {slot} key #{} data units {unit} dun_bytes {dun_bytes}",
                self.keys
            ),
            compare_data: true,
        }
    }

    fn bad_program(&mut self, caps: &Capabilities) -> Step {
        let mut key = zeroize::Zeroizing::new([0u8; 64]);
        self.rng.fill_bytes(&mut key[..]);
        let mut desc = KeyDesc::raw_aes_256_xts(0, &key, 4096, 1);
        let what = match self.rng.random_range(0..6u32) {
            0 => {
                desc.slot = u32::from(caps.slots);
                "slot one past the last"
            }
            1 => {
                desc.key_size = 32;
                "key_size 32"
            }
            2 => {
                desc.dun_bytes = 0;
                "dun_bytes 0"
            }
            3 => {
                desc.dun_bytes = u32::from(caps.max_dun_bytes) + 1;
                "dun_bytes one past max_dun_bytes"
            }
            4 => {
                desc.crypto_mode = 2;
                "crypto_mode 2"
            }
            _ => {
                desc.data_unit_size_bits = 17;
                "data unit 2^17"
            }
        };
        Step {
            request: Request::keyslot_program(&desc),
            target: Target::Control,
            what: format!("KEYSLOT_PROGRAM with {what}"),
            compare_data: true,
        }
    }

    fn evict(&mut self, caps: &Capabilities) -> Step {
        let slot = self.slot(caps);
        Step {
            request: Request::keyslot_evict_slot(slot),
            target: Target::Control,
            what: format!("KEYSLOT_EVICT slot {slot}"),
            compare_data: true,
        }
    }

    fn crypto(&mut self, caps: &Capabilities, request_type: RequestType) -> Step {
        let slot = self.slot(caps);
        let unit = self.slot_units.get(slot as usize).copied().unwrap_or(4096);
        let unit_sectors = u64::from(unit / 512).max(1);
        let units = self.rng.random_range(1..=8u64);
        let mut sector = self
            .rng
            .random_range(0..REGION_SECTORS / unit_sectors - units)
            * unit_sectors;
        let mut len = units * u64::from(unit);
        match self.rng.random_range(0..12u32) {
            0 => sector += 1,
            1 => len += 512,
            _ => {}
        }
        // Mostly small DUNs; now and then at the top of the DUN space.
        let max_bits = 8 * u32::from(caps.max_dun_bytes).min(16);
        let top = if max_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << max_bits) - 1
        };
        let dun = if self.rng.random_range(0..6u32) == 0 {
            top - u128::from(self.rng.random_range(0..units + 2))
        } else {
            u128::from(self.rng.random::<u32>())
        };
        let msg = CryptoMsg {
            slot,
            reserved: 0,
            dun: Dun::from_u128(dun),
        };
        let (request, name) = if request_type == RequestType::CryptoOut {
            let mut data = vec![0u8; len as usize];
            self.rng.fill_bytes(&mut data);
            (Request::crypto_write(sector, &msg, data), "CRYPTO_OUT")
        } else {
            (Request::crypto_read(sector, &msg, len as u32), "CRYPTO_IN")
        };
        Step {
            request,
            target: Target::Request,
            what: format!("{name} sector {sector} slot {slot} dun {dun:#x} len {len}"),
            compare_data: true,
        }
    }

    fn wrong_queue(&mut self, caps: &Capabilities) -> Step {
        if self.rng.random_bool(0.5) {
            let slot = self.slot(caps);
            Step {
                request: Request::keyslot_evict_slot(slot),
                target: Target::Request,
                what: format!("KEYSLOT_EVICT slot {slot} on a request queue"),
                compare_data: true,
            }
        } else {
            Step {
                request: Request::read(0, 512),
                target: Target::Control,
                what: "IN sector 0 on the control queue".into(),
                compare_data: true,
            }
        }
    }

    fn plain_step(&mut self) -> Step {
        let sectors = self.rng.random_range(1..=64u64);
        let sector = self.rng.random_range(0..REGION_SECTORS - sectors);
        let len = sectors * 512;
        match self.rng.random_range(0..10u32) {
            0..5 => Step {
                request: Request::read(sector, len as u32),
                target: Target::Request,
                what: format!("IN sector {sector} len {len}"),
                compare_data: true,
            },
            5..8 => {
                let mut data = vec![0u8; len as usize];
                self.rng.fill_bytes(&mut data);
                Step {
                    request: Request::write(sector, data),
                    target: Target::Request,
                    what: format!("OUT sector {sector} len {len}"),
                    compare_data: true,
                }
            }
            8 if self.plain.write_zeroes => {
                let segment = DiscardSegment {
                    sector,
                    num_sectors: sectors as u32,
                    flags: 0,
                };
                Step {
                    request: Request::write_zeroes(&[segment]),
                    target: Target::Request,
                    what: format!("WRITE_ZEROES sector {sector} sectors {sectors}"),
                    compare_data: true,
                }
            }
            9 if self.plain.flush => Step {
                request: Request::flush(),
                target: Target::Request,
                what: "FLUSH".into(),
                compare_data: true,
            },
            _ => Step {
                request: Request::read(sector, len as u32),
                target: Target::Request,
                what: format!("IN sector {sector} len {len}"),
                compare_data: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_emulator::engine::ProfileName;

    const ALL_PLAIN: PlainFeatures = PlainFeatures {
        flush: true,
        write_zeroes: true,
    };

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let caps = Some(ProfileName::Ufs.capabilities());
        let describe = |seed| {
            let mut stream = Stream::new(seed, caps, ALL_PLAIN);
            (0..500)
                .map(|_| stream.next_step().what)
                .collect::<Vec<_>>()
        };
        assert_eq!(describe(7), describe(7));
        assert_ne!(describe(7), describe(8));
    }

    #[test]
    fn the_stream_has_every_kind_and_no_key_bytes_in_descriptions() {
        let mut stream = Stream::new(1, Some(ProfileName::Emmc.capabilities()), ALL_PLAIN);
        let steps: Vec<String> = (0..2000).map(|_| stream.next_step().what).collect();
        for kind in [
            "KEYSLOT_PROGRAM slot",
            "KEYSLOT_PROGRAM with",
            "KEYSLOT_EVICT",
            "CRYPTO_OUT",
            "CRYPTO_IN",
            "on a request queue",
            "on the control queue",
            "GET_CRYPTO_MODES",
            "IN sector",
            "OUT sector",
            "WRITE_ZEROES",
            "FLUSH",
        ] {
            assert!(steps.iter().any(|s| s.contains(kind)), "no {kind}");
        }
        // emmc: 4 DUN bytes; some requests reach the top of that space.
        assert!(steps.iter().any(|s| s.contains("dun 0xffffff")));
    }

    #[test]
    fn without_inline_encryption_only_plain_requests() {
        let mut stream = Stream::new(3, None, ALL_PLAIN);
        for _ in 0..200 {
            let step = stream.next_step();
            assert_eq!(step.target, Target::Request);
            assert!(!step.what.contains("CRYPTO") && !step.what.contains("KEYSLOT"));
        }
    }

    #[test]
    fn requests_the_device_does_not_offer_are_not_sent() {
        let none = PlainFeatures {
            flush: false,
            write_zeroes: false,
        };
        let mut stream = Stream::new(4, Some(ProfileName::Ufs.capabilities()), none);
        let steps: Vec<String> = (0..3000).map(|_| stream.next_step().what).collect();
        assert!(
            !steps
                .iter()
                .any(|s| s.contains("FLUSH") || s.contains("WRITE_ZEROES"))
        );
        let mut all = Stream::new(4, Some(ProfileName::Ufs.capabilities()), ALL_PLAIN);
        let steps: Vec<String> = (0..3000).map(|_| all.next_step().what).collect();
        assert!(steps.iter().any(|s| s.contains("FLUSH")));
        assert!(steps.iter().any(|s| s.contains("WRITE_ZEROES")));
    }
}
