//! `icelab conform --against-reference`: the same seeded stream of valid
//! and invalid requests ([`stream`]) goes to the device under test and to
//! icelab's own device running in this process ([`reference`]) with the
//! capabilities the device under test advertises. Status bytes, used
//! lengths and returned data must match request by request, and, when the
//! device's image file is given, the region's bytes on both images at the
//! end. The first divergence stops the run and is reported with the seed
//! and request number that replay it.

pub mod reference;
pub mod stream;

use anyhow::Context;
use icelab_frontend::blk::{BlkQueue, Completion, Request};
use icelab_frontend::{Frontend, FrontendOptions};
use icelab_protocol::{RequestType, SECTOR_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES};
use reference::Reference;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stream::{PlainFeatures, REGION_SECTORS, Stream, Target};

/// How long one request may take on either device.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Plain writes that fill the region before the stream.
const FILL_CHUNK: usize = 256 * 1024;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The device under test's vhost-user socket.
    pub socket: PathBuf,
    /// Its image file, for the final comparison of the region's bytes.
    pub image: Option<PathBuf>,
    /// The stream's seed.
    pub seed: u64,
    /// Requests in the stream.
    pub requests: u64,
}

/// The outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// The seed.
    pub seed: String,
    /// Requests sent to both devices (the region's fill not counted).
    pub requests: u64,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
    /// Whether the images' regions were compared (an image was given and
    /// no request diverged).
    pub images_compared: bool,
}

/// The first difference between the device and the reference.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Divergence {
    /// The request's number in the stream (0-based); `None` for the final
    /// image comparison.
    pub request: Option<u64>,
    /// What it was.
    pub what: String,
    /// What differs.
    pub difference: String,
}

/// A frontend session on one device: its request queue and, with inline
/// encryption, its control queue.
struct Side {
    frontend: Frontend,
    requests: BlkQueue,
    control: Option<BlkQueue>,
}

impl Side {
    fn connect(socket: &Path, who: &str) -> anyhow::Result<(Self, icelab_protocol::BlockConfig)> {
        let mut frontend = Frontend::connect(socket, &FrontendOptions::default())
            .with_context(|| format!("cannot connect to {who} at {}", socket.display()))?;
        let config = frontend
            .block_config()
            .with_context(|| format!("cannot read {who}'s config space"))?;
        let requests = frontend
            .take_blk_queues()
            .with_context(|| format!("cannot set up {who}'s request queues"))?
            .into_iter()
            .next()
            .with_context(|| format!("{who} offers no request queue"))?;
        let control = frontend
            .take_control_queue()
            .map(BlkQueue::new)
            .transpose()
            .with_context(|| format!("cannot set up {who}'s control queue"))?;
        Ok((
            Self {
                frontend,
                requests,
                control,
            },
            config,
        ))
    }

    fn send(&mut self, target: Target, request: &Request) -> anyhow::Result<Completion> {
        let queue = match target {
            Target::Request => &mut self.requests,
            Target::Control => self
                .control
                .as_mut()
                .context("the stream sent a control command without a control queue")?,
        };
        Ok(queue.submit_and_wait(request, REQUEST_TIMEOUT)?)
    }
}

/// Runs the differential stream against the device at `options.socket`.
pub fn run(options: &Options) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("icelab-reference-")
        .tempdir()
        .context("cannot create a directory for the reference device")?;
    let (mut device, config) = Side::connect(&options.socket, "the device under test")?;
    let modes = if config.crypto.is_some() {
        let answer = device.send(Target::Control, &Request::get_crypto_modes())?;
        if answer.status != 0 || answer.data.len() < 8 {
            anyhow::bail!(
                "the device under test offers inline encryption but GET_CRYPTO_MODES failed \
                 (status {}, {} bytes): see `icelab conform` without --against-reference",
                answer.status,
                answer.data.len()
            );
        }
        u32::from_le_bytes([
            answer.data[4],
            answer.data[5],
            answer.data[6],
            answer.data[7],
        ])
    } else {
        0
    };
    let caps = reference::capabilities(&config, modes)?;
    let capacity = config.capacity_sectors * SECTOR_SIZE;
    if config.capacity_sectors < REGION_SECTORS {
        anyhow::bail!(
            "the device under test has {} sectors; the differential run needs at least {REGION_SECTORS}",
            config.capacity_sectors
        );
    }
    let reference = Reference::start(dir.path(), caps, capacity, config.blk_size.max(512))?;
    let (mut reference_side, _) = Side::connect(&reference.socket, "the reference device")?;

    let plain = PlainFeatures {
        flush: device.frontend.has_feature(VIRTIO_BLK_F_FLUSH),
        write_zeroes: device.frontend.has_feature(VIRTIO_BLK_F_WRITE_ZEROES),
    };
    let mut stream = Stream::new(options.seed, caps, plain);
    // The region starts equal on both.
    let mut sector = 0;
    while sector < REGION_SECTORS {
        let data = stream.region_fill(FILL_CHUNK);
        let write = Request::write(sector, data);
        for (side, who) in [
            (&mut device, "the device"),
            (&mut reference_side, "the reference"),
        ] {
            let done = side.send(Target::Request, &write)?;
            if done.status != 0 {
                anyhow::bail!(
                    "{who} refused a plain write at sector {sector} (status {})",
                    done.status
                );
            }
        }
        sector += (FILL_CHUNK as u64) / SECTOR_SIZE;
    }

    let mut outcome = Outcome {
        seed: format!("{:016x}", options.seed),
        requests: 0,
        divergence: None,
        images_compared: false,
    };
    for index in 0..options.requests {
        let step = stream.next_step();
        if step.target == Target::Control && device.control.is_none() {
            continue;
        }
        let ours = device.send(step.target, &step.request);
        let theirs = reference_side.send(step.target, &step.request)?;
        outcome.requests = index + 1;
        let ours = match ours {
            Ok(done) => done,
            Err(error) => {
                outcome.divergence = Some(Divergence {
                    request: Some(index),
                    what: step.what,
                    difference: format!("the device did not answer: {error:#}"),
                });
                break;
            }
        };
        if let Some(difference) = compare(&ours, &theirs, step.compare_data) {
            outcome.divergence = Some(Divergence {
                request: Some(index),
                what: step.what,
                difference,
            });
            break;
        }
    }
    drop(reference_side);
    drop(device);
    let reference_image = reference.image.clone();
    reference.finish();
    if outcome.divergence.is_none()
        && let Some(image) = &options.image
    {
        outcome.images_compared = true;
        outcome.divergence = compare_images(image, &reference_image)?;
    }
    Ok(outcome)
}

fn status_name(status: u8) -> String {
    match status {
        0 => "OK".into(),
        1 => "IOERR".into(),
        2 => "UNSUPP".into(),
        other => format!("{other}"),
    }
}

/// What differs between the device's completion and the reference's.
fn compare(ours: &Completion, theirs: &Completion, compare_data: bool) -> Option<String> {
    if ours.status != theirs.status {
        return Some(format!(
            "status: device {}, reference {}",
            status_name(ours.status),
            status_name(theirs.status)
        ));
    }
    if ours.used_len != theirs.used_len {
        return Some(format!(
            "used length: device {}, reference {}",
            ours.used_len, theirs.used_len
        ));
    }
    let returns_data = matches!(
        ours.request_type,
        RequestType::In | RequestType::CryptoIn | RequestType::GetCryptoModes
    );
    if compare_data && returns_data && ours.status == 0 && ours.data != theirs.data {
        let at = ours
            .data
            .iter()
            .zip(&theirs.data)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Some(format!(
            "returned data differs from byte {at} (device {}, reference {})",
            hex(&ours.data[at..]),
            hex(&theirs.data[at..])
        ));
    }
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Compares the region of the two images.
fn compare_images(device: &Path, reference: &Path) -> anyhow::Result<Option<Divergence>> {
    let open = |path: &Path| {
        File::open(path).with_context(|| format!("cannot open the image {}", path.display()))
    };
    let (ours, theirs) = (open(device)?, open(reference)?);
    let mut a = vec![0u8; FILL_CHUNK];
    let mut b = vec![0u8; FILL_CHUNK];
    let region = REGION_SECTORS * SECTOR_SIZE;
    let mut offset = 0;
    while offset < region {
        ours.read_exact_at(&mut a, offset)
            .with_context(|| format!("cannot read {} at {offset}", device.display()))?;
        theirs
            .read_exact_at(&mut b, offset)
            .with_context(|| format!("cannot read the reference image at {offset}"))?;
        if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
            return Ok(Some(Divergence {
                request: None,
                what: "the images after the stream".into(),
                difference: format!(
                    "byte {} of the image differs (device {}, reference {})",
                    offset + at as u64,
                    hex(&a[at..]),
                    hex(&b[at..])
                ),
            }));
        }
        offset += FILL_CHUNK as u64;
    }
    Ok(None)
}
