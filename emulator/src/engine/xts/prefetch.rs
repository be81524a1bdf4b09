//! Software prefetch of a request's input a few KiB ahead of the cipher.
//!
//! The device's source can be an mmap of the disk image: page cache pages
//! that are in memory but not in the CPU's caches. The hardware prefetchers
//! follow a sequential read only within a 4 KiB page, so every new page
//! starts with a miss; asking for the next page(s) while the cipher works
//! on the current one hides that (benches/README.md has the measurement).

/// Bytes the input is prefetched ahead of the cipher. The VAES backend
/// streams: the first 2 KiB at the start, then each 256-byte stride's
/// lines 2 KiB ahead. Measured against the earlier scheme (a whole 4 KiB
/// unit asked for at the start of the unit before it), interleaved in one
/// process, from a cold 1 GiB source: 12% faster at 128 KiB sequential,
/// 4% at 4 KiB random; 1 and 4 KiB ahead were no better than 2.
pub const PREFETCH_AHEAD: usize = 2048;

/// Cache line size assumed for stepping through the prefetched range.
const LINE: usize = 64;

/// Prefetches a buffer front to back, each cache line once. It holds the
/// buffer's address, not a borrow: an in-place request writes the buffer
/// meanwhile, and a prefetch neither reads nor writes memory as far as the
/// program is concerned.
pub(super) struct Prefetcher {
    start: *const u8,
    len: usize,
    ahead: usize,
    /// Everything before this offset was prefetched (or is being read).
    done: usize,
}

impl Prefetcher {
    /// For the `len` bytes at `start`; `ahead` 0 turns prefetching off.
    /// Prefetches the first `ahead` bytes at once, so that a request's
    /// first data unit (a cold page on a random read) is asked for before
    /// the cipher needs it, like every later unit. (Not measured on its
    /// own: its effect was within the noise of the runs it was in.)
    pub(super) fn new(start: *const u8, len: usize, ahead: usize) -> Self {
        let mut prefetcher = Self {
            start,
            len,
            ahead,
            done: 0,
        };
        prefetcher.ahead_of(0);
        prefetcher
    }

    /// Called before working on the bytes below `position`: prefetches up
    /// to `position + ahead` (within the slice) what is not prefetched yet.
    #[inline(always)]
    pub(super) fn ahead_of(&mut self, position: usize) {
        if self.ahead == 0 {
            return;
        }
        let end = self.len.min(position.saturating_add(self.ahead));
        let start = self.done.max(position);
        if start < end {
            prefetch_range(self.start.wrapping_add(start), end - start);
        }
        self.done = self.done.max(end);
    }
}

/// The input of one request prefetched `ahead` bytes before the cipher
/// gets there, for a loop that works in fixed strides (the VAES backend):
/// the first `ahead` bytes at the start, then before each stride the
/// stride `ahead` bytes further on, up to the end of the request.
#[derive(Clone, Copy)]
pub(super) struct Stream {
    ahead: usize,
    end: *const u8,
}

impl Stream {
    /// For the `len` bytes at `input` (`ahead` 0: no prefetch): asks for
    /// the first `ahead` of them now.
    pub(super) fn start(input: *const u8, len: usize, ahead: usize) -> Self {
        prefetch_range(input, ahead.min(len));
        Self {
            ahead,
            end: input.wrapping_add(len),
        }
    }

    /// Before the `stride` bytes at `input`: prefetches the `stride` bytes
    /// `ahead` further on, if they start inside the request.
    #[inline(always)]
    pub(super) fn ahead_of(self, input: *const u8, stride: usize) {
        if self.ahead == 0 {
            return;
        }
        let at = input.wrapping_add(self.ahead);
        if at < self.end {
            prefetch_range(at, stride);
        }
    }
}

/// Asks for every cache line of the `len` bytes at `start`.
#[inline(always)]
pub fn prefetch_range(start: *const u8, len: usize) {
    for offset in (0..len).step_by(LINE) {
        prefetch_line(start.wrapping_add(offset));
    }
}

/// Asks for the cache line holding `address` (a hint: it never faults,
/// whatever the address, and changes nothing the program computes).
#[inline(always)]
fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: `prefetcht0` accesses no memory architecturally, so any
        // address is sound; SSE is part of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetches_within_the_slice_and_off_means_nothing() {
        let bytes = vec![0u8; 10_000];
        let mut on = Prefetcher::new(bytes.as_ptr(), bytes.len(), 4096);
        assert_eq!(on.done, 4096);
        on.ahead_of(512);
        assert_eq!(on.done, 512 + 4096);
        on.ahead_of(1024);
        assert_eq!(on.done, 1024 + 4096);
        on.ahead_of(9_000);
        assert_eq!(on.done, bytes.len());
        let mut off = Prefetcher::new(bytes.as_ptr(), bytes.len(), 0);
        off.ahead_of(512);
        assert_eq!(off.done, 0);
    }
}
