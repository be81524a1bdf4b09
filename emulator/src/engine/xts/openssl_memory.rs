//! OpenSSL's key schedules in the key arena (locked, out of core dumps,
//! zeroed when freed), like the engine's own (`secure::SecureBox`).
//!
//! OpenSSL allocates a cipher context's schedule itself, with `malloc`.
//! `CRYPTO_set_mem_functions` replaces its allocator, but only before its
//! first allocation, and for every allocation: so [`install`] runs first
//! thing (from `harden_process` at the device's start, and before any
//! OpenSSL call of the engine), and the hooks below send an allocation to
//! the arena only while the calling thread is inside [`key_memory`] (key
//! setup and context copies), to `malloc` otherwise. Each block starts
//! with a header saying where it came from, so a free, on any thread, goes
//! back to the right place; an arena slot is zeroed on its way back.
//!
//! If OpenSSL already allocated before [`install`] (a process that used it
//! for something else first), the hooks cannot be set: the schedules then
//! stay on the C heap, still cleansed when freed, and a warning says so.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::ptr::{NonNull, null_mut};
use std::sync::OnceLock;

use crate::engine::secure::{SLOT_BYTES, return_slot, take_slot};

/// Bytes before each block: where it came from, and its size. 16 keeps
/// the blocks as aligned as `malloc`'s (and the arena's slots are 64-byte
/// aligned).
const HEADER: usize = 16;
/// Header tag of a block from `malloc`.
const FROM_HEAP: u64 = 0x6865_6170_6963_6531;
/// Header tag of a block in an arena slot.
const FROM_ARENA: u64 = 0x6172_656e_6169_6365;

thread_local! {
    /// Set while this thread allocates key schedules ([`key_memory`]).
    static KEYS: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C" {
    fn CRYPTO_set_mem_functions(
        malloc: Option<unsafe extern "C" fn(usize, *const c_char, c_int) -> *mut c_void>,
        realloc: Option<
            unsafe extern "C" fn(*mut c_void, usize, *const c_char, c_int) -> *mut c_void,
        >,
        free: Option<unsafe extern "C" fn(*mut c_void, *const c_char, c_int)>,
    ) -> c_int;
}

/// Sets OpenSSL's allocator to the hooks below, once per process; whether
/// they are in place. Must run before anything else calls OpenSSL.
pub fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: three functions with OpenSSL's signatures, valid for the
        // whole process; OpenSSL refuses (0) once it has allocated.
        let installed = unsafe {
            CRYPTO_set_mem_functions(Some(hook_malloc), Some(hook_realloc), Some(hook_free))
        } == 1;
        if !installed {
            tracing::warn!(
                "OpenSSL allocated before the engine could route its key schedules to the \
                 locked key arena: they stay on the C heap (cleansed when freed)"
            );
        }
        installed
    })
}

/// Runs `work` with this thread's OpenSSL allocations going to the arena.
pub(super) fn key_memory<R>(work: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEYS.with(|keys| keys.set(self.0));
        }
    }
    let _restore = Restore(KEYS.with(|keys| keys.replace(true)));
    work()
}

/// Whether this thread is inside [`key_memory`] (false while its
/// thread-locals are being torn down).
fn for_keys() -> bool {
    KEYS.try_with(Cell::get).unwrap_or(false)
}

/// A block of `size` bytes: in an arena slot when `arena` and it fits (and
/// the arena can grow), else from `malloc`. NULL when out of memory.
fn allocate(size: usize, arena: bool) -> *mut c_void {
    let Some(total) = size.checked_add(HEADER) else {
        return null_mut();
    };
    let (base, tag) = match arena.then(take_slot).filter(|_| total <= SLOT_BYTES) {
        Some(Ok(slot)) => (slot.as_ptr(), FROM_ARENA),
        Some(Err(_)) | None => {
            // SAFETY: plain malloc; checked for NULL below.
            let base = unsafe { libc::malloc(total) }.cast::<u8>();
            if base.is_null() {
                return null_mut();
            }
            (base, FROM_HEAP)
        }
    };
    // SAFETY: `base` has at least `total > HEADER` bytes, 16-byte aligned.
    unsafe {
        base.cast::<u64>().write(tag);
        base.add(8).cast::<u64>().write(size as u64);
        base.add(HEADER).cast()
    }
}

/// The header of a block from [`allocate`]: base, tag, size.
///
/// # Safety
/// `block` came from [`allocate`] and was not freed.
unsafe fn header(block: *mut c_void) -> (*mut u8, u64, usize) {
    // SAFETY: the caller's promise: the header is just before `block`.
    unsafe {
        let base = block.cast::<u8>().sub(HEADER);
        let tag = base.cast::<u64>().read();
        let size = base.add(8).cast::<u64>().read() as usize;
        (base, tag, size)
    }
}

/// Frees a block from [`allocate`] (NULL: nothing).
///
/// # Safety
/// `block` is NULL or came from [`allocate`] and was not freed.
unsafe fn release(block: *mut c_void) {
    if block.is_null() {
        return;
    }
    // SAFETY: the caller's promise.
    let (base, tag, _) = unsafe { header(block) };
    match (tag, NonNull::new(base)) {
        // SAFETY: an arena block's base is the slot `take_slot` gave.
        (FROM_ARENA, Some(slot)) => unsafe { return_slot(slot) },
        // SAFETY: a heap block's base is what `malloc` gave.
        (FROM_HEAP, _) => unsafe { libc::free(base.cast()) },
        // Not ours: memory is corrupt, or OpenSSL freed what it did not
        // allocate through us. Going on could hand out live memory.
        _ => std::process::abort(),
    }
}

unsafe extern "C" fn hook_malloc(size: usize, _file: *const c_char, _line: c_int) -> *mut c_void {
    allocate(size, for_keys())
}

unsafe extern "C" fn hook_realloc(
    block: *mut c_void,
    size: usize,
    _file: *const c_char,
    _line: c_int,
) -> *mut c_void {
    if block.is_null() {
        return allocate(size, for_keys());
    }
    if size == 0 {
        // SAFETY: OpenSSL passes a block it got from these hooks.
        unsafe { release(block) };
        return null_mut();
    }
    // SAFETY: as above.
    let (_, tag, old_size) = unsafe { header(block) };
    // A block stays where it was: key memory in the arena (if it fits).
    let moved = allocate(size, tag == FROM_ARENA);
    if !moved.is_null() {
        // SAFETY: both blocks hold at least `min(old_size, size)` bytes
        // and are distinct; the old one is freed after the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(block.cast::<u8>(), moved.cast(), old_size.min(size));
            release(block);
        }
    }
    moved
}

unsafe extern "C" fn hook_free(block: *mut c_void, _file: *const c_char, _line: c_int) {
    // SAFETY: OpenSSL frees only what it allocated, through these hooks
    // (they were set before its first allocation).
    unsafe { release(block) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_go_where_asked_and_come_back_zeroed() {
        let heap = allocate(100, false);
        let arena = allocate(100, true);
        let large = allocate(SLOT_BYTES, true);
        // SAFETY: all three just allocated, freed once each below.
        unsafe {
            assert_eq!(header(heap).1, FROM_HEAP);
            assert_eq!(header(arena).1, FROM_ARENA);
            assert_eq!(header(large).1, FROM_HEAP, "too large for a slot");
            assert_eq!(arena as usize % 16, 0);
            arena.cast::<u8>().write_bytes(0x5a, 100);
            let grown = hook_realloc(arena, 200, std::ptr::null(), 0);
            assert_eq!(header(grown).1, FROM_ARENA);
            assert!(
                std::slice::from_raw_parts(grown.cast::<u8>(), 100)
                    .iter()
                    .all(|&b| b == 0x5a)
            );
            release(heap);
            release(grown);
            release(large);
        }
    }

    #[test]
    fn key_memory_is_per_thread_and_restored() {
        assert!(!for_keys());
        key_memory(|| {
            assert!(for_keys());
            std::thread::spawn(|| assert!(!for_keys())).join().unwrap();
        });
        assert!(!for_keys());
    }
}
