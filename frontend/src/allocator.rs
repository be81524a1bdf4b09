//! A first-fit allocator of guest physical address ranges.
//!
//! The frontend plays the guest's role: it owns guest memory and hands out
//! ranges of it for rings, indirect tables and request buffers. Requests
//! come and go at queue depth 32 or so, so a free list kept sorted by
//! address with coalescing on free is plenty. The allocator only does
//! arithmetic; it never touches memory.

use std::collections::BTreeMap;

/// Free ranges of `[0, size)`, keyed by start address.
#[derive(Debug)]
pub(crate) struct Allocator {
    /// start -> length of each free range; ranges never touch.
    free: BTreeMap<u64, u64>,
    /// Sum of the free lengths.
    free_bytes: u64,
}

/// Every allocation is rounded up to this many bytes, so that freed
/// ranges stay reasonably aligned and coalesce well.
pub(crate) const GRANULE: u64 = 64;

impl Allocator {
    /// An allocator over `[base, base + size)`.
    pub(crate) fn new(base: u64, size: u64) -> Self {
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(base, size);
        }
        Self {
            free,
            free_bytes: size,
        }
    }

    /// Free bytes in total.
    pub(crate) fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Rounds a request up to the granule.
    pub(crate) fn rounded(len: u64) -> Option<u64> {
        len.max(1).checked_next_multiple_of(GRANULE)
    }

    /// Takes `len` bytes aligned to `align` (a power of two), first fit.
    /// Returns the start address, or `None` when no free range fits.
    pub(crate) fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two());
        let len = Self::rounded(len)?;
        let align = align.max(GRANULE);
        let (start, free_len, addr) = self.free.iter().find_map(|(&start, &free_len)| {
            let addr = start.checked_next_multiple_of(align)?;
            let end = addr.checked_add(len)?;
            (end <= start + free_len).then_some((start, free_len, addr))
        })?;
        self.free.remove(&start);
        if addr > start {
            self.free.insert(start, addr - start);
        }
        let tail = start + free_len - (addr + len);
        if tail > 0 {
            self.free.insert(addr + len, tail);
        }
        self.free_bytes -= len;
        Some(addr)
    }

    /// Returns a range obtained from [`Allocator::alloc`] with the same
    /// `len`. Neighbouring free ranges are merged.
    pub(crate) fn free(&mut self, addr: u64, len: u64) {
        let Some(len) = Self::rounded(len) else {
            return;
        };
        let mut start = addr;
        let mut end = addr + len;
        if let Some((&prev, &prev_len)) = self.free.range(..addr).next_back() {
            debug_assert!(prev + prev_len <= addr, "double free at {addr:#x}");
            if prev + prev_len == addr {
                self.free.remove(&prev);
                start = prev;
            }
        }
        if let Some(next_len) = self.free.remove(&end) {
            end += next_len;
        }
        self.free.insert(start, end - start);
        self.free_bytes += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_respects_alignment_and_coalesces() {
        let mut a = Allocator::new(0, 1 << 20);
        let x = a.alloc(100, 64).expect("room");
        let y = a.alloc(10, 4096).expect("room");
        assert_eq!(x, 0);
        assert_eq!(y % 4096, 0);
        assert!(y >= 128);
        a.free(x, 100);
        a.free(y, 10);
        assert_eq!(a.free_bytes(), 1 << 20);
        assert_eq!(a.free.len(), 1, "all ranges merged back");
    }

    #[test]
    fn exhaustion_is_reported_and_recovers() {
        let mut a = Allocator::new(0, 4096);
        let blocks: Vec<u64> = (0..64).map(|_| a.alloc(64, 64).expect("room")).collect();
        assert_eq!(a.alloc(1, 64), None);
        for b in &blocks {
            a.free(*b, 64);
        }
        assert_eq!(a.alloc(4096, 4096), Some(0));
    }

    #[test]
    fn freeing_in_any_order_merges_everything() {
        let mut a = Allocator::new(4096, 64 * 10);
        let blocks: Vec<u64> = (0..10).map(|_| a.alloc(64, 64).expect("room")).collect();
        for index in [3, 1, 7, 0, 9, 2, 8, 4, 6, 5] {
            a.free(blocks[index], 64);
        }
        assert_eq!(a.free.len(), 1);
        assert_eq!(a.free.get(&4096), Some(&640));
    }
}
