//! A set of page numbers, one bit each, safe to share between queues:
//! which pages of the image mapping have been made writable once
//! ([`super::mapping::Mapping::populate_write`]), so that later writes to
//! them skip the `madvise` call and its page-table walk.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

const BITS: usize = u64::BITS as usize;

/// Page numbers `0..pages`, all absent at first.
#[derive(Debug)]
pub struct PageSet {
    words: Box<[AtomicU64]>,
    pages: usize,
}

impl PageSet {
    /// An empty set of `pages` pages (one bit each: 32 KiB per GiB of
    /// 4 KiB pages). The bits are zeroed memory from the allocator
    /// (`calloc`), so a large image's set costs address space, not
    /// memory, until its pages are written.
    pub fn new(pages: usize) -> Self {
        let zeroed: Box<[u64]> = vec![0u64; pages.div_ceil(BITS)].into_boxed_slice();
        let len = zeroed.len();
        let raw = Box::into_raw(zeroed).cast::<AtomicU64>();
        // SAFETY: `AtomicU64` has the size and alignment of `u64` (its
        // documented guarantee), so the allocation holds `len` of them,
        // each a valid zero; the box is rebuilt with the same layout.
        let words = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(raw, len)) };
        Self { words, pages }
    }

    /// True when every page of `first..first + count` is in the set (an
    /// empty range is; pages past the end never are).
    pub fn contains_all(&self, first: usize, count: usize) -> bool {
        let Some(end) = self.end(first, count) else {
            return false;
        };
        let mut all = true;
        self.for_each_word(first, end, |word, mask| {
            all &= word.load(Relaxed) & mask == mask;
        });
        all
    }

    /// Adds `first..first + count` (clipped to the set).
    pub fn insert(&self, first: usize, count: usize) {
        let end = first.saturating_add(count).min(self.pages);
        self.for_each_word(first, end, |word, mask| {
            word.fetch_or(mask, Relaxed);
        });
    }

    /// Removes `first..first + count` (clipped to the set).
    pub fn remove(&self, first: usize, count: usize) {
        let end = first.saturating_add(count).min(self.pages);
        self.for_each_word(first, end, |word, mask| {
            word.fetch_and(!mask, Relaxed);
        });
    }

    /// `first + count`, when inside the set.
    fn end(&self, first: usize, count: usize) -> Option<usize> {
        first.checked_add(count).filter(|&end| end <= self.pages)
    }

    /// Calls `visit` with each word that holds pages of `first..end` and
    /// the mask of those pages in it.
    fn for_each_word(&self, first: usize, end: usize, mut visit: impl FnMut(&AtomicU64, u64)) {
        let mut page = first;
        while page < end {
            let bit = page % BITS;
            let span = (BITS - bit).min(end - page);
            let mask = if span == BITS {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << bit
            };
            visit(&self.words[page / BITS], mask);
            page += span;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_across_words_are_added_and_removed_exactly() {
        let set = PageSet::new(200);
        assert!(set.contains_all(0, 0));
        assert!(!set.contains_all(60, 10));
        set.insert(60, 80);
        assert!(set.contains_all(60, 80));
        assert!(set.contains_all(64, 64), "a whole word");
        assert!(!set.contains_all(59, 2), "one page before the range");
        assert!(!set.contains_all(139, 2), "one page after the range");
        set.remove(100, 1);
        assert!(!set.contains_all(60, 80));
        assert!(set.contains_all(60, 40));
        assert!(set.contains_all(101, 39));
    }

    /// A set for a 16 TiB image of 4 KiB pages (512 MiB of bits) is
    /// address space only until used.
    #[test]
    fn a_huge_set_is_not_touched_until_used() {
        let rss = || {
            std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .expect("statm")
                * 4096
        };
        let before = rss();
        let set = PageSet::new(1 << 32);
        set.insert((1 << 32) - 2, 2);
        assert!(set.contains_all((1 << 32) - 2, 2));
        assert!(!set.contains_all(0, 1));
        assert!(rss() < before + (64 << 20), "the set was touched whole");
    }

    #[test]
    fn pages_past_the_end_are_never_contained_and_are_clipped() {
        let set = PageSet::new(70);
        set.insert(65, 100);
        assert!(set.contains_all(65, 5));
        assert!(!set.contains_all(65, 6));
        assert!(!set.contains_all(usize::MAX, 2));
        set.remove(0, usize::MAX);
        assert!(!set.contains_all(65, 1));
    }
}
