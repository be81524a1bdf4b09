//! The serve loop (`BlockDevice::handle_event`, which calls
//! `serve_queue`) on a real split virtqueue. The loop pops one request
//! ahead of the one it serves, to prefetch its source
//! (`request::prefetch_source`), so these check that every request made
//! available at once is served once and in order, and that the request
//! popped ahead goes back on the avail ring when the used ring fails.

use crate::device::backend::{BlockDevice, DeviceConfig};
use crate::device::image::Image;
use crate::engine::Engine;
use crate::protocol::SECTOR_SIZE;
use std::sync::Arc;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const QUEUE_SIZE: u16 = 16;
const MEMORY: usize = 1 << 20;
/// The rings live at 0; each request's buffers in its own 4 KiB from here.
const BUFFERS: u64 = 0x1_0000;
const IMAGE_SIZE: usize = 64 << 10;
/// Requests made available at once.
const REQUESTS: u16 = 5;
const DATA: u32 = 512;
/// A used ring address outside guest memory (aligned, so the queue takes it).
const OUTSIDE: u64 = 1 << 40;

/// A device on a patterned image, its guest memory and a vring laid out by
/// `MockSplitQueue` with `REQUESTS` reads available.
struct Setup {
    _dir: tempfile::TempDir,
    image: Vec<u8>,
    device: BlockDevice,
    mem: GuestMemoryMmap,
    vring: VringRwLock,
}

/// The sector request `index` reads: spread over the image, not in order.
fn sector(index: u16) -> u64 {
    (u64::from(index) * 37 + 5) % (IMAGE_SIZE as u64 / SECTOR_SIZE - 1)
}

fn buffer(index: u16) -> u64 {
    BUFFERS + u64::from(index) * 0x1000
}

impl Setup {
    /// `used_ring`, when given, is where the device is told the used ring
    /// is, instead of where `MockSplitQueue` put it.
    fn new(used_ring: Option<u64>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("disk.img");
        let image: Vec<u8> = (0..IMAGE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &image).expect("write the image");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).expect("memory");
        let config = DeviceConfig {
            num_queues: 1,
            queue_size: QUEUE_SIZE,
            blk_size: 512,
            serial: "icelab-serve-loop".to_owned(),
        };
        let device = BlockDevice::new(
            config,
            Image::open(&path, None, false).expect("image"),
            Arc::new(Engine::new(None, None)),
            GuestMemoryAtomic::new(mem.clone()),
        );
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
        for index in 0..REQUESTS {
            let at = buffer(index);
            let mut header = [0u8; 16];
            header[8..].copy_from_slice(&sector(index).to_le_bytes());
            mem.write_slice(&header, GuestAddress(at)).expect("header");
            let head = 3 * index;
            let chain = [
                Descriptor::new(at, 16, VRING_DESC_F_NEXT as u16, head + 1),
                Descriptor::new(
                    at + 0x100,
                    DATA,
                    (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                    head + 2,
                ),
                Descriptor::new(at + 0x800, 1, VRING_DESC_F_WRITE as u16, 0),
            ];
            for (offset, descriptor) in (0u16..).zip(chain) {
                mock.desc_table()
                    .store(head + offset, RawDescriptor::from(descriptor))
                    .expect("descriptor");
            }
            mock.avail()
                .ring()
                .ref_at(usize::from(index))
                .expect("avail slot")
                .store(head);
            mem.write_obj(0xffu8, GuestAddress(at + 0x800))
                .expect("status canary");
        }
        mock.avail().idx().store(REQUESTS);
        let vring =
            VringRwLock::new(GuestMemoryAtomic::new(mem.clone()), QUEUE_SIZE).expect("vring");
        vring.set_queue_size(QUEUE_SIZE);
        vring
            .set_queue_info(
                mock.desc_table_addr().0,
                mock.avail_addr().0,
                used_ring.unwrap_or(mock.used_addr().0),
            )
            .expect("queue addresses");
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        Self {
            _dir: dir,
            image,
            device,
            mem,
            vring,
        }
    }

    fn kick(&self) {
        self.device
            .handle_event(0, EventSet::IN, std::slice::from_ref(&self.vring), 0)
            .expect("handle_event");
    }

    fn status(&self, index: u16) -> u8 {
        self.mem
            .read_obj(GuestAddress(buffer(index) + 0x800))
            .expect("status")
    }
}

#[test]
fn requests_available_at_once_are_all_served_in_order() {
    let setup = Setup::new(None);
    setup.kick();
    let used = setup.vring.get_ref().get_queue().used_ring();
    let used_idx: u16 = setup
        .mem
        .read_obj(GuestAddress(used + 2))
        .expect("used idx");
    assert_eq!(used_idx, REQUESTS, "requests returned to the used ring");
    for index in 0..REQUESTS {
        let element = used + 4 + 8 * u64::from(index);
        let id: u32 = setup.mem.read_obj(GuestAddress(element)).expect("id");
        let len: u32 = setup.mem.read_obj(GuestAddress(element + 4)).expect("len");
        assert_eq!(id, u32::from(3 * index), "used element {index}: head");
        assert_eq!(len, DATA + 1, "used element {index}: length");
        assert_eq!(setup.status(index), 0, "request {index}: status");
        let mut data = vec![0u8; DATA as usize];
        setup
            .mem
            .read_slice(&mut data, GuestAddress(buffer(index) + 0x100))
            .expect("data");
        let from = (sector(index) * SECTOR_SIZE) as usize;
        assert!(
            data == setup.image[from..from + DATA as usize],
            "request {index}: sector {} read back wrong",
            sector(index)
        );
    }
}

#[test]
fn a_request_popped_ahead_stays_available_when_the_used_ring_fails() {
    let setup = Setup::new(Some(OUTSIDE));
    setup.kick();
    // The first request was served (its status written) but could not be
    // returned; the second, popped ahead, was neither served nor lost.
    assert_eq!(setup.status(0), 0, "first request's status");
    assert_eq!(setup.status(1), 0xff, "second request untouched");
    assert_eq!(
        setup.vring.queue_next_avail(),
        1,
        "the request popped ahead went back on the avail ring"
    );
}
