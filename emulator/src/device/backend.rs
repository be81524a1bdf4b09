//! The vhost-user-blk backend: features, config space and queue service.
//!
//! Each virtqueue gets its own worker thread (`queues_per_thread`), so
//! queues are served in parallel; the only shared state on the request
//! path is the engine's per-slot read locks and relaxed counters.
//!
//! With an engine, the device offers VIRTIO_BLK_F_INLINE_ENCRYPTION and
//! VIRTIO_BLK_F_CTRL_VQ and serves one more virtqueue after the request
//! queues: the control queue (docs/PROTOCOL.md, "Virtqueues").

use super::image::Image;
use super::refusal_log::{Admission, RefusalLog};
use super::request::{self, Context, Limits, Scratch};
use crate::engine::Engine;
use crate::protocol::{
    BlockConfig, QueueRole, SECTOR_SIZE, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CTRL_VQ, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_INLINE_ENCRYPTION,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, crypto_negotiated, feature,
};
use std::io;
use std::num::Wrapping;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// Guest memory as the backend sees it.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Largest single data segment the device advertises (`size_max`).
pub const SEGMENT_MAX_BYTES: u32 = 64 * 1024;

/// Shape of the device as the guest sees it.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest queue size the device accepts.
    pub queue_size: u16,
    /// Logical block size in bytes.
    pub blk_size: u32,
    /// GET_ID answer (up to 20 bytes).
    pub serial: String,
}

/// The vhost-user-blk backend.
pub struct BlockDevice {
    config: DeviceConfig,
    limits: Limits,
    image: Image,
    engine: Arc<Engine>,
    mem: RwLock<GuestMemory>,
    event_idx: AtomicBool,
    crypto_negotiated: AtomicBool,
    scratch: Box<[Mutex<Scratch>]>,
    /// Per virtqueue: its avail ring was found corrupt and it is not
    /// served until the frontend sets it up again.
    broken: Box<[AtomicBool]>,
    refusals: RefusalLog,
}

impl BlockDevice {
    /// A device serving `image` through `engine`.
    pub fn new(config: DeviceConfig, image: Image, engine: Arc<Engine>, mem: GuestMemory) -> Self {
        let mut device_id = [0u8; crate::protocol::DEVICE_ID_BYTES];
        let serial = config.serial.as_bytes();
        let len = serial.len().min(device_id.len());
        device_id[..len].copy_from_slice(&serial[..len]);
        let seg_max = Self::seg_max(config.queue_size);
        let limits = Limits {
            max_data_bytes: u64::from(seg_max) * u64::from(SEGMENT_MAX_BYTES),
            max_discard_seg: 32,
            max_discard_sectors: u32::MAX / SECTOR_SIZE as u32,
            device_id,
        };
        let virtqueues = config.num_queues + u16::from(engine.capabilities().is_some());
        Self {
            scratch: (0..virtqueues)
                .map(|_| Mutex::new(Scratch::default()))
                .collect(),
            broken: (0..virtqueues).map(|_| AtomicBool::new(false)).collect(),
            refusals: RefusalLog::default(),
            config,
            limits,
            image,
            engine,
            mem: RwLock::new(mem),
            event_idx: AtomicBool::new(false),
            crypto_negotiated: AtomicBool::new(false),
        }
    }

    /// Number of virtqueues: the request queues, plus the control queue
    /// when the device has an engine.
    fn virtqueues(&self) -> u16 {
        self.config.num_queues + u16::from(self.engine.capabilities().is_some())
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Linux requires seg_max <= queue size - 2 (header and status take
    /// two descriptors).
    fn seg_max(queue_size: u16) -> u32 {
        u32::from(queue_size.saturating_sub(2)).clamp(1, 128)
    }

    /// The config space.
    pub fn block_config(&self) -> BlockConfig {
        BlockConfig {
            capacity_sectors: self.image.capacity() / SECTOR_SIZE,
            size_max: SEGMENT_MAX_BYTES,
            seg_max: Self::seg_max(self.config.queue_size),
            blk_size: self.config.blk_size,
            num_queues: self.config.num_queues,
            max_discard_sectors: self.limits.max_discard_sectors,
            max_discard_seg: self.limits.max_discard_seg,
            max_write_zeroes_sectors: self.limits.max_discard_sectors,
            max_write_zeroes_seg: self.limits.max_discard_seg,
            crypto: self.engine.capabilities().map(|caps| caps.to_wire()),
        }
    }

    /// True when the guest's avail index is more than a queue ahead of the
    /// device's next entry (VIRTIO 1.2 §2.7.13.3: the driver never makes
    /// more than a queue's worth of buffers available): the ring is
    /// corrupt and popping from it would fail forever. Such a queue is
    /// marked broken, logged once, and skipped until the frontend sets it
    /// up again (its next avail index is valid again).
    fn ring_is_corrupt(&self, vring: &VringRwLock, queue: u16, mem: &GuestMemoryMmap) -> bool {
        let state = vring.get_ref();
        let ring = state.get_queue();
        let corrupt = match ring.avail_idx(mem, Ordering::Acquire) {
            Ok(avail) => (avail - Wrapping(ring.next_avail())).0 > ring.size(),
            Err(_) => true,
        };
        let flag = &self.broken[usize::from(queue)];
        if corrupt && !flag.swap(true, Ordering::Relaxed) {
            tracing::error!(
                queue,
                next_avail = ring.next_avail(),
                size = ring.size(),
                "the guest's avail ring is corrupt (its index is more than a queue ahead, \
                 or unreadable): queue {queue} is not served until the driver resets it"
            );
            self.engine.stats().count_rejection("broken-ring");
        } else if !corrupt && flag.swap(false, Ordering::Relaxed) {
            tracing::info!(queue, "queue {queue} was set up again: serving it");
        }
        corrupt
    }

    /// Counts and logs (rate-limited) an avail ring entry naming a
    /// descriptor past the table.
    fn refuse_head(&self, queue: u16, head: u16, size: u16) {
        const KIND: &str = "head-out-of-range";
        self.engine.stats().count_rejection(KIND);
        let message = format!(
            "the guest made descriptor {head} available on queue {queue}, whose table has \
             {size}: dropped (no status can be written)"
        );
        match self.refusals.admit(KIND, std::time::Instant::now()) {
            Admission::Log | Admission::LogLast => tracing::warn!(queue, kind = KIND, "{message}"),
            Admission::Summary { count, over } => tracing::warn!(
                kind = KIND,
                count,
                "{count} more avail entries past the descriptor table in the last {:.1} s \
                 (latest: {message})",
                over.as_secs_f64()
            ),
            Admission::Quiet => {}
        }
    }

    /// Serves what the guest made available on one virtqueue; returns
    /// false when the ring is corrupt (nothing was served).
    fn serve_queue(&self, vring: &VringRwLock, queue: u16, role: QueueRole) -> io::Result<bool> {
        let mem = self
            .mem
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .memory();
        if self.ring_is_corrupt(vring, queue, &mem) {
            return Ok(false);
        }
        let mut scratch = self.scratch[usize::from(queue)]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ctx = Context {
            engine: &self.engine,
            image: &self.image,
            limits: &self.limits,
            queue,
            role,
            crypto_negotiated: self.crypto_negotiated.load(Ordering::Acquire),
            refusals: &self.refusals,
        };
        let queue_size = vring.get_ref().get_queue().size();
        let mut served = false;
        // Chains borrow the memory (not a clone of the guard: no reference
        // count per pop, nor per look at the next chain's first descriptor).
        let pop = || vring.get_mut().get_queue_mut().pop_descriptor_chain(&*mem);
        // One request ahead: while a request is served, the start of the
        // next one's source is on its way from memory.
        let mut next = pop();
        while let Some(chain) = next.take() {
            next = pop();
            if let Some(first) = next.as_ref().and_then(|next| next.clone().next()) {
                request::prefetch_source(&ctx, &*mem, first);
            }
            let head = chain.head_index();
            if head >= queue_size {
                // No descriptor, and no used ring entry can name it: drop
                // it and serve what follows.
                self.refuse_head(queue, head, queue_size);
                continue;
            }
            let used = request::serve(&ctx, &*mem, chain, &mut scratch);
            if let Err(error) = vring.add_used(head, used) {
                // The guest's used ring is unusable; keep the worker alive
                // for a reset rather than ending it.
                tracing::error!(
                    queue,
                    "cannot return a request to the guest's used ring: {error}"
                );
                if next.is_some() {
                    // Not served: leave it on the avail ring for after a
                    // reset.
                    vring.get_mut().get_queue_mut().go_to_previous_position();
                }
                break;
            }
            served = true;
        }
        if served {
            let notify = vring.needs_notification().unwrap_or_else(|error| {
                tracing::warn!(queue, "cannot read the guest's used_event: {error}");
                true
            });
            if notify && let Err(error) = vring.signal_used_queue() {
                tracing::warn!(queue, "cannot signal the guest: {error}");
            }
        }
        Ok(true)
    }
}

impl VhostUserBackend for BlockDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.virtqueues())
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.queue_size)
    }

    fn features(&self) -> u64 {
        let mut features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VHOST_USER_F_PROTOCOL_FEATURES)
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_BLK_F_MQ)
            | feature(VIRTIO_BLK_F_DISCARD)
            | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        if self.image.read_only() {
            features |= feature(VIRTIO_BLK_F_RO);
        }
        if self.engine.capabilities().is_some() {
            features |= feature(VIRTIO_BLK_F_INLINE_ENCRYPTION) | feature(VIRTIO_BLK_F_CTRL_VQ);
        }
        features
    }

    fn acked_features(&self, features: u64) {
        // SET_FEATURES starts every (re)initialisation of the device by the
        // frontend: QEMU sends it each time the guest driver starts the
        // device, after a guest reset or reboot too. Like a hardware reset,
        // it empties every keyslot and renews the key manager's ephemeral
        // wrapping key: keys, and ephemerally-wrapped keys, never outlive
        // the driver that programmed or prepared them.
        self.engine.reset();
        let crypto = crypto_negotiated(features);
        self.crypto_negotiated.store(crypto, Ordering::Release);
        tracing::info!(
            inline_encryption = crypto,
            "frontend acked features {features:#x}"
        );
        if features & feature(VIRTIO_BLK_F_INLINE_ENCRYPTION) != 0 && !crypto {
            tracing::warn!(
                "the driver acked VIRTIO_BLK_F_INLINE_ENCRYPTION without VIRTIO_BLK_F_CTRL_VQ: \
                 inline encryption stays off and crypto requests get UNSUPP (docs/PROTOCOL.md)"
            );
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        self.engine.reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.block_config().encode();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= config.len() => config[start..end].to_vec(),
            _ => {
                tracing::warn!(
                    offset,
                    size,
                    "frontend read config bytes past the {}-byte config space",
                    config.len()
                );
                Vec::new()
            }
        }
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        *self
            .mem
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.virtqueues()).map(|queue| 1u64 << queue).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "unexpected epoll event set {evset:?}"
            )));
        }
        // One queue per thread: the thread index is the queue index.
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("event for unknown vring {device_event}")))?;
        let queue = u16::try_from(thread_id).map_err(io::Error::other)?;
        let role = QueueRole::of(queue, self.config.num_queues)
            .ok_or_else(|| io::Error::other(format!("event for unknown queue {queue}")))?;
        if self.event_idx.load(Ordering::Relaxed) {
            // With EVENT_IDX, keep serving until the guest adds nothing
            // between our last pop and re-enabling notifications.
            // A corrupt ring ends the loop: enable_notification would keep
            // reporting buffers that can never be popped.
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                if !self.serve_queue(vring, queue, role)? {
                    break;
                }
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
            Ok(())
        } else {
            self.serve_queue(vring, queue, role).map(|_| ())
        }
    }
}
