//! Split virtqueue layout (VIRTIO 1.2 §2.7).
//!
//! A split virtqueue is three areas in guest memory, each with its own
//! alignment (§2.7, table "Virtqueue Part Alignment"):
//!
//! | part | alignment | size |
//! |---|---|---|
//! | Descriptor Table | 16 | 16 × N |
//! | Available Ring | 2 | 6 + 2 × N |
//! | Used Ring | 4 | 6 + 8 × N |
//!
//! This module is arithmetic only: offsets, sizes and the event-index
//! test of §2.7.10. The queue driver does the memory accesses.

/// Largest queue size of a split virtqueue (§2.7: "Queue Size ... up to
/// 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Size of one descriptor (`struct virtq_desc`, §2.7.5).
pub const DESC_SIZE: u64 = 16;
/// Size of one used element (`struct virtq_used_elem`, §2.7.8).
pub const USED_ELEM_SIZE: u64 = 8;

/// Descriptor flag: the buffer continues via `next` (§2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the buffer is device-writable (§2.7.5).
pub const VIRTQ_DESC_F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is an indirect descriptor table
/// (§2.7.5.3).
pub const VIRTQ_DESC_F_INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
/// Used ring flag: the device asks not to be notified (§2.7.10, only
/// without VIRTIO_F_EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16;

/// Guest physical addresses of the three parts of one split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringLayout {
    /// Queue size N.
    pub size: u16,
    /// Descriptor Table (16-byte aligned).
    pub desc_table: u64,
    /// Available Ring (2-byte aligned).
    pub avail_ring: u64,
    /// Used Ring (4-byte aligned).
    pub used_ring: u64,
}

impl VringLayout {
    /// Alignment the whole block must have; the parts are placed inside it
    /// with their own alignment. A page keeps the rings off the request
    /// buffers' cache lines.
    pub const BLOCK_ALIGN: u64 = 4096;

    /// Bytes needed for a queue of `size` entries laid out by
    /// [`VringLayout::at`].
    pub fn block_size(size: u16) -> u64 {
        let layout = Self::at(0, size);
        layout.used_ring + Self::used_ring_size(size)
    }

    /// Lays out a queue of `size` entries starting at `base` (which should
    /// be [`VringLayout::BLOCK_ALIGN`]-aligned): the descriptor table, then
    /// the available ring, then the used ring on the next 64-byte line.
    pub fn at(base: u64, size: u16) -> Self {
        let desc_table = base;
        let avail_ring = desc_table + DESC_SIZE * u64::from(size);
        let used_ring = (avail_ring + Self::avail_ring_size(size)).next_multiple_of(64);
        Self {
            size,
            desc_table,
            avail_ring,
            used_ring,
        }
    }

    /// `6 + 2 × N`: flags, idx, ring\[N\], used_event.
    pub fn avail_ring_size(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }

    /// `6 + 8 × N`: flags, idx, ring\[N\], avail_event.
    pub fn used_ring_size(size: u16) -> u64 {
        6 + USED_ELEM_SIZE * u64::from(size)
    }

    /// Address of descriptor `index`.
    pub fn desc(&self, index: u16) -> u64 {
        self.desc_table + DESC_SIZE * u64::from(index)
    }

    /// Address of `avail->flags`.
    pub fn avail_flags(&self) -> u64 {
        self.avail_ring
    }

    /// Address of `avail->idx`.
    pub fn avail_idx(&self) -> u64 {
        self.avail_ring + 2
    }

    /// Address of `avail->ring[slot % N]`.
    pub fn avail_entry(&self, slot: u16) -> u64 {
        self.avail_ring + 4 + 2 * u64::from(slot % self.size)
    }

    /// Address of `used_event` (after `avail->ring[N]`), used with
    /// VIRTIO_F_EVENT_IDX.
    pub fn used_event(&self) -> u64 {
        self.avail_ring + 4 + 2 * u64::from(self.size)
    }

    /// Address of `used->flags`.
    pub fn used_flags(&self) -> u64 {
        self.used_ring
    }

    /// Address of `used->idx`.
    pub fn used_idx(&self) -> u64 {
        self.used_ring + 2
    }

    /// Address of `used->ring[slot % N]`.
    pub fn used_entry(&self, slot: u16) -> u64 {
        self.used_ring + 4 + USED_ELEM_SIZE * u64::from(slot % self.size)
    }

    /// Address of `avail_event` (after `used->ring[N]`), used with
    /// VIRTIO_F_EVENT_IDX.
    pub fn avail_event(&self) -> u64 {
        self.used_ring + 4 + USED_ELEM_SIZE * u64::from(self.size)
    }
}

/// True when a queue size is valid for a split virtqueue: a power of two
/// no larger than [`MAX_QUEUE_SIZE`] (§2.7).
pub fn is_valid_queue_size(size: u16) -> bool {
    size.is_power_of_two() && size <= MAX_QUEUE_SIZE
}

/// `vring_need_event` (§2.7.10): with VIRTIO_F_EVENT_IDX, the other side
/// must be notified when moving an index from `old` to `new` crosses the
/// `event` index it published.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_aligned_and_do_not_overlap() {
        for size in [1u16, 2, 4, 128, 256, 1024, MAX_QUEUE_SIZE] {
            let l = VringLayout::at(0x10000, size);
            assert_eq!(l.desc_table % 16, 0);
            assert_eq!(l.avail_ring % 2, 0);
            assert_eq!(l.used_ring % 4, 0);
            assert!(l.desc(size - 1) + DESC_SIZE <= l.avail_ring);
            assert!(l.used_event() + 2 <= l.used_ring);
            assert_eq!(
                l.avail_event() + 2,
                l.used_ring + VringLayout::used_ring_size(size)
            );
            assert_eq!(
                0x10000 + VringLayout::block_size(size),
                l.used_ring + VringLayout::used_ring_size(size)
            );
        }
    }

    #[test]
    fn ring_entries_wrap() {
        let l = VringLayout::at(0, 8);
        assert_eq!(l.avail_entry(8), l.avail_entry(0));
        assert_eq!(l.used_entry(65535), l.used_entry(7));
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        // The device asked to be told when idx passes 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(5, 5, 0));
        assert!(!need_event(5, 8, 6));
        // Wrap-around.
        assert!(need_event(65535, 1, 65534));
        assert!(!need_event(0, 0, 0));
    }

    #[test]
    fn queue_sizes() {
        assert!(is_valid_queue_size(256));
        assert!(!is_valid_queue_size(0));
        assert!(!is_valid_queue_size(100));
    }
}
