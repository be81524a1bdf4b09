//! The driver side of one split virtqueue (VIRTIO 1.2 §2.7).
//!
//! A [`Queue`] owns its rings in guest memory, its kick and call eventfds
//! and its descriptor free list. It is `Send`: each queue can run on its
//! own thread, with no lock on the request path. It implements:
//! - supplying buffers (§2.7.13): descriptors, then the available ring
//!   entry, then a release store of `avail->idx`;
//! - notifying the device (§2.7.13.4), honouring `VIRTQ_USED_F_NO_NOTIFY`
//!   or, with VIRTIO_F_EVENT_IDX, `avail_event` (§2.7.10);
//! - reaping used buffers (§2.7.14) with a deadline: the call eventfd is
//!   waited on with poll(2), together with the vhost-user socket so that
//!   a backend that dies is reported at once instead of as a timeout;
//! - with VIRTIO_F_EVENT_IDX, publishing `used_event` so the device only
//!   interrupts for what the driver waits for.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::chain::{RawDescriptor, Segment, link};
use crate::error::{Error, Result};
use crate::memory::{GuestBuffer, SharedMemory};
use crate::vring::{DESC_SIZE, VIRTQ_USED_F_NO_NOTIFY, VringLayout, need_event};

/// A used element as the device returned it (`struct virtq_used_elem`,
/// §2.7.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElement {
    /// Head descriptor index of the chain, as returned by `add_*`.
    pub head: u16,
    /// Bytes the device says it wrote into the chain's writable buffers.
    pub len: u32,
}

/// Counters of one queue, for benchmarks and notification tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains made available.
    pub chains: u64,
    /// Kicks written to the kick eventfd.
    pub kicks: u64,
    /// Kicks skipped because the device asked not to be notified.
    pub kicks_suppressed: u64,
    /// Times the call eventfd was found signalled.
    pub interrupts: u64,
    /// Used elements reaped.
    pub completions: u64,
}

/// What the queue remembers about a chain until the device returns it.
#[derive(Debug)]
struct InFlight {
    /// Every descriptor slot the chain occupies, head first.
    slots: Vec<u16>,
    /// Guest memory that must live until completion (indirect tables).
    _keep: Vec<GuestBuffer>,
}

/// Everything the queue needs from the connection it belongs to.
#[derive(Clone)]
pub(crate) struct Link {
    /// Keeps the vhost-user session open while any queue lives.
    pub(crate) _session: vhost::vhost_user::Frontend,
    /// A second handle on the socket, polled for hang-up.
    pub(crate) socket: Arc<UnixStream>,
}

/// The driver of one split virtqueue.
pub struct Queue {
    index: u16,
    memory: SharedMemory,
    layout: VringLayout,
    _rings: GuestBuffer,
    kick: EventFd,
    call: EventFd,
    link: Link,
    event_idx: bool,
    indirect_desc: bool,
    free: Vec<u16>,
    in_flight: Vec<Option<InFlight>>,
    in_flight_count: usize,
    /// Shadow of `avail->idx`.
    avail_idx: u16,
    /// `avail->idx` at the last kick decision.
    kicked_idx: u16,
    /// Next used ring slot to read.
    last_used: u16,
    stats: QueueStats,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("layout", &self.layout)
            .field("event_idx", &self.event_idx)
            .field("indirect_desc", &self.indirect_desc)
            .field("in_flight", &self.in_flight_count)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Lays out a fresh queue of `size` entries (rings zeroed, every
    /// descriptor free) and creates its eventfds. The connection then
    /// tells the backend about it.
    pub(crate) fn new(
        index: u16,
        size: u16,
        memory: SharedMemory,
        event_idx: bool,
        indirect_desc: bool,
        link: Link,
    ) -> Result<Self> {
        let rings = memory.alloc_zeroed(VringLayout::block_size(size), VringLayout::BLOCK_ALIGN)?;
        let layout = VringLayout::at(rings.addr(), size);
        let eventfd =
            |what| EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Host { what, source });
        Ok(Self {
            index,
            memory,
            layout,
            _rings: rings,
            kick: eventfd("eventfd for kicks")?,
            call: eventfd("eventfd for calls")?,
            link,
            event_idx,
            indirect_desc,
            // Popped from the end: descriptor 0 goes first.
            free: (0..size).rev().collect(),
            in_flight: (0..size).map(|_| None).collect(),
            in_flight_count: 0,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            stats: QueueStats::default(),
        })
    }

    /// Queue index (0-based, as in SET_VRING_*).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Queue size N.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Guest addresses of the rings.
    pub fn layout(&self) -> VringLayout {
        self.layout
    }

    /// The guest memory the queue lives in.
    pub fn memory(&self) -> &SharedMemory {
        &self.memory
    }

    /// True when VIRTIO_F_EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// True when VIRTIO_RING_F_INDIRECT_DESC was negotiated.
    pub fn indirect_desc(&self) -> bool {
        self.indirect_desc
    }

    /// Descriptors not owned by an in-flight chain.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet returned by the device.
    pub fn in_flight(&self) -> usize {
        self.in_flight_count
    }

    /// Counters since the queue was created.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// The kick eventfd (the backend got a copy through SET_VRING_KICK).
    pub(crate) fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (the backend got a copy through SET_VRING_CALL).
    pub(crate) fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Makes a well-formed chain of `segments` available, in order, linked
    /// with NEXT. Addresses, lengths and the readable/writable order are
    /// taken as given, so this also builds chains the device must reject
    /// (outside guest memory, zero length, readable after writable, no
    /// writable buffer). Returns the head index. Does not kick.
    pub fn add_chain(&mut self, segments: &[Segment]) -> Result<u16> {
        if segments.is_empty() {
            return Err(Error::InvalidArgument(
                "a chain needs at least one segment".into(),
            ));
        }
        self.add_raw_chain(&link(segments), Vec::new())
    }

    /// Like [`Queue::add_chain`], but the segments go into an indirect
    /// descriptor table (§2.7.5.3) named by a single ring descriptor.
    /// Needs VIRTIO_RING_F_INDIRECT_DESC; use [`Queue::add_raw_chain`] to
    /// send one without it.
    pub fn add_indirect_chain(&mut self, segments: &[Segment]) -> Result<u16> {
        if !self.indirect_desc {
            return Err(Error::InvalidArgument(
                "VIRTIO_RING_F_INDIRECT_DESC was not negotiated".into(),
            ));
        }
        if segments.is_empty() {
            return Err(Error::InvalidArgument(
                "a chain needs at least one segment".into(),
            ));
        }
        let entries = u32::try_from(segments.len())
            .map_err(|_| Error::InvalidArgument("indirect table too long".into()))?;
        let table = self.write_indirect_table(&link(segments))?;
        let head = RawDescriptor::indirect(table.addr(), entries);
        self.add_raw_chain(&[head], vec![table])
    }

    /// Writes an indirect descriptor table into newly allocated guest
    /// memory. `RawNext::Index(i)` links to entry `i` of the table. The
    /// caller points a [`RawDescriptor::indirect`] at it (with any length,
    /// flags or successor, to test malformed tables) and passes the buffer
    /// to [`Queue::add_raw_chain`] to keep it alive until completion.
    pub fn write_indirect_table(&self, table: &[RawDescriptor]) -> Result<GuestBuffer> {
        let slots: Vec<u16> = (0..table.len())
            .map(|i| u16::try_from(i).unwrap_or(u16::MAX))
            .collect();
        let buffer = self
            .memory
            .alloc(DESC_SIZE * table.len() as u64, DESC_SIZE)?;
        for (position, raw) in table.iter().enumerate() {
            let descriptor = raw.encode(&slots)?;
            self.memory
                .write_obj(buffer.at(DESC_SIZE * position as u64), descriptor)?;
        }
        Ok(buffer)
    }

    /// Makes a chain of raw descriptors available exactly as described:
    /// each takes a free slot of the descriptor table, the first is the
    /// head, and `RawNext::Index(i)` links to the slot of the `i`-th.
    /// `keep` is guest memory released when the chain completes. Returns
    /// the head index. Does not kick.
    pub fn add_raw_chain(
        &mut self,
        descriptors: &[RawDescriptor],
        keep: Vec<GuestBuffer>,
    ) -> Result<u16> {
        if descriptors.is_empty() {
            return Err(Error::InvalidArgument(
                "a chain needs at least one descriptor".into(),
            ));
        }
        if descriptors.len() > self.free.len() {
            return Err(Error::QueueFull {
                queue: self.index,
                needed: descriptors.len(),
                free: self.free.len(),
            });
        }
        let slots = self.free.split_off(self.free.len() - descriptors.len());
        if let Err(error) = self.write_descriptors(descriptors, &slots) {
            self.free.extend(slots);
            return Err(error);
        }
        let head = slots[0];
        self.in_flight[usize::from(head)] = Some(InFlight { slots, _keep: keep });
        self.in_flight_count += 1;
        self.publish(head)?;
        Ok(head)
    }

    /// Makes `head` available with no chain of this queue behind it: a
    /// broken driver's ring entry (e.g. an index past the descriptor
    /// table). Nothing waits for it; a correct device never returns it.
    /// Does not kick.
    pub fn publish_raw_head(&mut self, head: u16) -> Result<()> {
        self.publish(head)
    }

    fn write_descriptors(&self, descriptors: &[RawDescriptor], slots: &[u16]) -> Result<()> {
        for (raw, slot) in descriptors.iter().zip(slots) {
            self.memory
                .write_obj(self.layout.desc(*slot), raw.encode(slots)?)?;
        }
        Ok(())
    }

    /// §2.7.13.2–3: place the head in the available ring, then publish the
    /// new index with release ordering so the device sees the descriptors
    /// and the ring entry before the index.
    fn publish(&mut self, head: u16) -> Result<()> {
        self.memory.store_u16(
            self.layout.avail_entry(self.avail_idx),
            head,
            Ordering::Relaxed,
        )?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.memory
            .store_u16(self.layout.avail_idx(), self.avail_idx, Ordering::Release)?;
        self.stats.chains += 1;
        Ok(())
    }

    /// Notifies the device of the chains made available since the last
    /// kick, unless it asked not to be (§2.7.13.4: `avail_event` with
    /// VIRTIO_F_EVENT_IDX, else `VIRTQ_USED_F_NO_NOTIFY`). Returns whether
    /// the eventfd was written.
    pub fn kick(&mut self) -> Result<bool> {
        let old = self.kicked_idx;
        let new = self.avail_idx;
        if old == new {
            return Ok(false);
        }
        // The index store must be visible before the suppression state is
        // read, or a device going idle could miss the new buffers.
        fence(Ordering::SeqCst);
        let notify = if self.event_idx {
            let event = self
                .memory
                .load_u16(self.layout.avail_event(), Ordering::Acquire)?;
            need_event(event, new, old)
        } else {
            let flags = self
                .memory
                .load_u16(self.layout.used_flags(), Ordering::Acquire)?;
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        self.kicked_idx = new;
        if notify {
            self.notify()?;
        } else {
            self.stats.kicks_suppressed += 1;
        }
        Ok(notify)
    }

    /// Writes the kick eventfd whatever the device asked (a spurious kick
    /// when nothing is new).
    pub fn kick_always(&mut self) -> Result<()> {
        self.kicked_idx = self.avail_idx;
        self.notify()
    }

    fn notify(&mut self) -> Result<()> {
        self.kick.write(1).map_err(|source| Error::Host {
            what: "write to the kick eventfd",
            source,
        })?;
        self.stats.kicks += 1;
        Ok(())
    }

    /// Takes the next used element if the device returned one, without
    /// waiting. The chain's descriptors are free again afterwards.
    pub fn pop_used(&mut self) -> Result<Option<UsedElement>> {
        let used_idx = self
            .memory
            .load_u16(self.layout.used_idx(), Ordering::Acquire)?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        let pending = used_idx.wrapping_sub(self.last_used);
        if usize::from(pending) > self.in_flight_count {
            return Err(Error::BackendBug {
                what: format!(
                    "queue {}: used->idx moved from {} to {used_idx}, but only {} chain(s) were in flight",
                    self.index, self.last_used, self.in_flight_count
                ),
            });
        }
        let entry = self.layout.used_entry(self.last_used);
        let id = self.memory.load_u32(entry, Ordering::Relaxed)?;
        let len = self.memory.load_u32(entry + 4, Ordering::Relaxed)?;
        let record = usize::try_from(id)
            .ok()
            .and_then(|id| self.in_flight.get_mut(id))
            .and_then(Option::take)
            .ok_or_else(|| Error::BackendBug {
                what: format!(
                    "queue {}: used element {} names descriptor {id}, which heads no in-flight chain",
                    self.index, self.last_used
                ),
            })?;
        self.free.extend(record.slots.iter().rev());
        self.in_flight_count -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            self.memory
                .store_u16(self.layout.used_event(), self.last_used, Ordering::Release)?;
        }
        self.stats.completions += 1;
        // `id` indexed `in_flight`, whose length is the queue size (u16).
        Ok(Some(UsedElement {
            head: id as u16,
            len,
        }))
    }

    /// Waits up to `timeout` for the next used element. Fails with
    /// [`Error::Timeout`] when none arrives, [`Error::Disconnected`] when
    /// the backend closes the socket, and at once when nothing is in
    /// flight.
    pub fn wait_used(&mut self, timeout: Duration) -> Result<UsedElement> {
        let deadline = Instant::now() + timeout;
        self.wait_used_until(deadline, timeout)
    }

    fn wait_used_until(&mut self, deadline: Instant, timeout: Duration) -> Result<UsedElement> {
        if self.in_flight_count == 0 {
            return Err(Error::InvalidArgument(format!(
                "queue {}: waiting for a completion with nothing in flight",
                self.index
            )));
        }
        loop {
            if let Some(element) = self.pop_used()? {
                return Ok(element);
            }
            if self.event_idx {
                // Ask for an interrupt at the next used entry, then look
                // again: the device may have added it before it could see
                // the request (§2.7.10).
                self.memory.store_u16(
                    self.layout.used_event(),
                    self.last_used,
                    Ordering::Release,
                )?;
                fence(Ordering::SeqCst);
                if let Some(element) = self.pop_used()? {
                    return Ok(element);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    queue: self.index,
                    waited: timeout,
                    in_flight: self.in_flight_count,
                });
            }
            match self.poll(deadline - now)? {
                Wake::Call => {
                    // Reset the counter; a racing signal only costs one
                    // extra look at the ring.
                    match self.call.read() {
                        Ok(_) => self.stats.interrupts += 1,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(source) => {
                            return Err(Error::Host {
                                what: "read of the call eventfd",
                                source,
                            });
                        }
                    }
                }
                Wake::HangUp => {
                    if let Some(element) = self.pop_used()? {
                        return Ok(element);
                    }
                    return Err(Error::Disconnected { queue: self.index });
                }
                Wake::Timeout => {}
            }
        }
    }

    /// poll(2) on the call eventfd and the socket, for at most `wait`.
    fn poll(&self, wait: Duration) -> Result<Wake> {
        let mut fds = [
            libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.link.socket.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // Round up so a sub-millisecond remainder still sleeps.
        let millis = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: `fds` is a valid array of two initialised pollfd
            // structs that outlives the call, and its length is passed.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
            if ready >= 0 {
                break;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Host {
                    what: "poll(2) on the call eventfd",
                    source: error,
                });
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            Ok(Wake::Call)
        } else if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            Ok(Wake::HangUp)
        } else {
            Ok(Wake::Timeout)
        }
    }
}

enum Wake {
    Call,
    HangUp,
    Timeout,
}

#[cfg(test)]
mod tests {
    //! The driver against virtio-queue's device-side implementation, an
    //! independent reading of §2.7, in the same process.

    use super::*;
    use crate::chain::RawNext;
    use crate::vring::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use virtio_queue::{Queue as DeviceQueue, QueueT};
    use vm_memory::GuestMemoryMmap;

    /// A descriptor as the device sees it: (addr, len, writable).
    type Seen = (u64, u32, bool);

    struct Harness {
        driver: Queue,
        device: DeviceQueue,
        /// The backend's end of the vhost-user socket; dropping it is a
        /// backend hang-up.
        peer: Option<UnixStream>,
    }

    fn harness(size: u16, event_idx: bool, indirect: bool) -> Harness {
        let memory = SharedMemory::new(1 << 20).expect("memfd");
        let (ours, peer) = UnixStream::pair().expect("socketpair");
        let link = Link {
            socket: Arc::new(ours.try_clone().expect("dup")),
            _session: vhost::vhost_user::Frontend::from_stream(ours, 1),
        };
        let driver = Queue::new(0, size, memory, event_idx, indirect, link).expect("queue");
        let layout = driver.layout();
        let mut device = DeviceQueue::new(size).expect("device queue");
        device.set_size(size);
        let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
        let (low, high) = split(layout.desc_table);
        device.set_desc_table_address(low, high);
        let (low, high) = split(layout.avail_ring);
        device.set_avail_ring_address(low, high);
        let (low, high) = split(layout.used_ring);
        device.set_used_ring_address(low, high);
        device.set_event_idx(event_idx);
        device.set_ready(true);
        Harness {
            driver,
            device,
            peer: Some(peer),
        }
    }

    impl Harness {
        fn mem(&self) -> GuestMemoryMmap {
            self.driver.memory().guest_memory().clone()
        }

        /// Pops one chain; returns its head and descriptors as
        /// (addr, len, writable).
        fn pop(&mut self) -> Option<(u16, Vec<Seen>)> {
            let mem = self.mem();
            let chain = self.device.pop_descriptor_chain(&mem)?;
            let head = chain.head_index();
            let descriptors = chain
                .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                .collect();
            Some((head, descriptors))
        }

        /// Returns a chain as used and signals when the device must.
        fn complete(&mut self, head: u16, len: u32) {
            let mem = self.mem();
            self.device.add_used(&mem, head, len).expect("add_used");
            if self
                .device
                .needs_notification(&mem)
                .expect("needs_notification")
            {
                self.driver.call.write(1).expect("signal");
            }
        }
    }

    #[test]
    fn chains_reach_the_device_as_described_and_come_back() {
        let mut h = harness(16, false, false);
        let segments = [
            Segment::readable(0x10000, 16),
            Segment::writable(0x11000, 4096),
            Segment::writable(0x12000, 1),
        ];
        let head = h.driver.add_chain(&segments).expect("room");
        assert_eq!(h.driver.free_descriptors(), 13);
        assert!(h.driver.kick().expect("kick"), "no NO_NOTIFY: kick");
        assert!(!h.driver.kick().expect("kick"), "nothing new: no kick");
        let (device_head, seen) = h.pop().expect("a chain");
        assert_eq!(device_head, head);
        assert_eq!(
            seen,
            vec![
                (0x10000, 16, false),
                (0x11000, 4096, true),
                (0x12000, 1, true)
            ]
        );
        h.complete(head, 4097);
        let used = h.driver.wait_used(Duration::from_secs(5)).expect("used");
        assert_eq!(used, UsedElement { head, len: 4097 });
        assert_eq!(h.driver.free_descriptors(), 16);
        assert_eq!(h.driver.in_flight(), 0);
        assert_eq!(h.driver.stats().completions, 1);
    }

    #[test]
    fn indices_wrap_and_descriptors_are_recycled() {
        for event_idx in [false, true] {
            let mut h = harness(4, event_idx, false);
            for round in 0..300u32 {
                let a = h
                    .driver
                    .add_chain(&[Segment::writable(0x20000, round)])
                    .expect("room");
                let b = h
                    .driver
                    .add_chain(&[Segment::readable(0x21000, 1), Segment::writable(0x22000, 2)])
                    .expect("room");
                h.driver.kick().expect("kick");
                let (first, _) = h.pop().expect("chain a");
                let (second, seen) = h.pop().expect("chain b");
                assert_eq!((first, second), (a, b));
                assert_eq!(seen.len(), 2);
                // Out of order completion.
                h.complete(b, 2);
                h.complete(a, round);
                let timeout = Duration::from_secs(5);
                assert_eq!(h.driver.wait_used(timeout).expect("b").head, b);
                assert_eq!(
                    h.driver.wait_used(timeout).expect("a"),
                    UsedElement {
                        head: a,
                        len: round
                    }
                );
                assert_eq!(h.driver.free_descriptors(), 4);
            }
        }
    }

    #[test]
    fn event_idx_publishes_used_event_and_honours_avail_event() {
        let mut h = harness(8, true, false);
        let mem = h.mem();
        h.driver
            .add_chain(&[Segment::writable(0x30000, 8)])
            .expect("room");
        assert!(
            h.driver.kick().expect("kick"),
            "avail_event 0: first chain kicks"
        );
        // The device goes on polling without re-arming: later kicks are
        // suppressed (§2.7.10).
        let (head, _) = h.pop().expect("chain");
        h.driver
            .add_chain(&[Segment::writable(0x30000, 8)])
            .expect("room");
        assert!(!h.driver.kick().expect("kick"), "device did not ask");
        assert_eq!(h.driver.stats().kicks_suppressed, 1);
        // Re-armed at its next index: the next chain kicks again.
        let (second, _) = h.pop().expect("chain");
        h.device.enable_notification(&mem).expect("arm");
        h.driver
            .add_chain(&[Segment::writable(0x30000, 8)])
            .expect("room");
        assert!(h.driver.kick().expect("kick"));
        let (third, _) = h.pop().expect("chain");

        h.complete(head, 1);
        assert_eq!(
            h.driver
                .wait_used(Duration::from_secs(5))
                .expect("used")
                .head,
            head
        );
        let used_event = h
            .driver
            .memory()
            .load_u16(h.driver.layout().used_event(), Ordering::Acquire);
        assert_eq!(
            used_event.expect("mapped"),
            1,
            "used_event follows the reaped index"
        );
        h.complete(second, 1);
        h.complete(third, 1);
        assert_eq!(
            h.driver
                .wait_used(Duration::from_secs(5))
                .expect("used")
                .head,
            second
        );
        assert_eq!(
            h.driver
                .wait_used(Duration::from_secs(5))
                .expect("used")
                .head,
            third
        );
    }

    #[test]
    fn indirect_chains_are_one_ring_descriptor() {
        let mut h = harness(4, false, true);
        let segments: Vec<Segment> = (0..10)
            .map(|i| Segment::writable(0x40000 + i * 512, 512))
            .collect();
        let head = h.driver.add_indirect_chain(&segments).expect("room");
        assert_eq!(h.driver.free_descriptors(), 3);
        let (_, seen) = h.pop().expect("chain");
        assert_eq!(seen.len(), 10);
        assert!(
            seen.iter()
                .all(|(_, len, writable)| *len == 512 && *writable)
        );
        h.complete(head, 5120);
        h.driver.wait_used(Duration::from_secs(5)).expect("used");
        let mut plain = harness(4, false, false);
        assert!(matches!(
            plain.driver.add_indirect_chain(&segments),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn raw_chains_are_written_verbatim() {
        let mut h = harness(8, false, false);
        let raw = [
            RawDescriptor::from_segment(Segment::readable(0x50000, 16))
                .with_next(RawNext::Index(1)),
            RawDescriptor::from_segment(Segment::writable(0x51000, 0)).with_next(RawNext::Index(0)),
        ];
        let head = h.driver.add_raw_chain(&raw, Vec::new()).expect("room");
        let second = {
            let desc: virtio_queue::desc::split::Descriptor = vm_memory::Bytes::read_obj(
                h.driver.memory().guest_memory(),
                vm_memory::GuestAddress(h.driver.layout().desc(head)),
            )
            .expect("mapped");
            assert_eq!(desc.flags(), VIRTQ_DESC_F_NEXT);
            desc.next()
        };
        let desc: virtio_queue::desc::split::Descriptor = vm_memory::Bytes::read_obj(
            h.driver.memory().guest_memory(),
            vm_memory::GuestAddress(h.driver.layout().desc(second)),
        )
        .expect("mapped");
        assert_eq!(desc.flags(), VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
        assert_eq!(desc.next(), head, "the loop closes on the head");
        assert_eq!(desc.len(), 0);
        // The device gives up on the loop but still returns the head.
        let (device_head, seen) = h.pop().expect("chain");
        assert_eq!(device_head, head);
        assert!(seen.len() <= 8, "virtio-queue stops a looping chain");
        h.complete(head, 0);
        h.driver.wait_used(Duration::from_secs(5)).expect("used");
        assert_eq!(h.driver.free_descriptors(), 8);
    }

    #[test]
    fn a_used_element_for_no_chain_is_a_backend_bug() {
        let mut h = harness(8, false, false);
        let head = h
            .driver
            .add_chain(&[Segment::writable(0x60000, 1)])
            .expect("room");
        let mem = h.mem();
        let bogus = (head + 1) % 8;
        h.device.add_used(&mem, bogus, 1).expect("add_used");
        let error = h.driver.pop_used().expect_err("bogus id");
        assert!(matches!(error, Error::BackendBug { .. }), "{error}");
    }

    #[test]
    fn waiting_times_out_and_notices_a_hang_up() {
        let mut h = harness(8, true, false);
        assert!(matches!(
            h.driver.wait_used(Duration::from_millis(1)),
            Err(Error::InvalidArgument(_))
        ));
        h.driver
            .add_chain(&[Segment::writable(0x70000, 1)])
            .expect("room");
        let started = Instant::now();
        let error = h
            .driver
            .wait_used(Duration::from_millis(100))
            .expect_err("nothing used");
        assert!(
            matches!(error, Error::Timeout { in_flight: 1, .. }),
            "{error}"
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(h.peer.take());
        let error = h
            .driver
            .wait_used(Duration::from_secs(30))
            .expect_err("peer gone");
        assert!(matches!(error, Error::Disconnected { queue: 0 }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn queue_full_leaves_the_queue_intact() {
        let mut h = harness(2, false, false);
        let segment = Segment::writable(0x80000, 1);
        let full = h.driver.add_chain(&[segment, segment, segment]);
        assert!(matches!(
            full,
            Err(Error::QueueFull {
                needed: 3,
                free: 2,
                ..
            })
        ));
        assert_eq!(h.driver.free_descriptors(), 2);
        assert!(h.driver.add_chain(&[]).is_err());
        h.driver
            .add_chain(&[segment, segment])
            .expect("exactly fits");
        assert_eq!(h.driver.free_descriptors(), 0);
    }

    #[test]
    fn handles_are_send() {
        fn send<T: Send>() {}
        fn sync<T: Send + Sync>() {}
        send::<Queue>();
        send::<crate::BlkQueue>();
        send::<crate::Frontend>();
        sync::<SharedMemory>();
    }
}
