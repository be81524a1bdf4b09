//! Where key material may live, and wiping what it leaves behind.
//!
//! - [`SecureBox`]: key schedules live in a small arena of `mmap`ed pages
//!   that are `mlock`ed (never swapped), `MADV_DONTDUMP` (left out of core
//!   dumps) and `MADV_WIPEONFORK`; a slot is zeroed when its box drops.
//! - [`scrub_stack`]: the `aes` crate's VAES backends copy the round keys
//!   to the stack on every call (broadcast to vector width) and never wipe
//!   them; key expansion and the fingerprint HMAC leave temporaries too.
//!   Every engine entry point that touches a key runs its work in a
//!   non-inlined callee and then calls `scrub_stack` from the same frame,
//!   which zeroes the stack the callee used.
//! - [`harden_process`]: makes the process non-dumpable, sets up the arena
//!   (so a locking problem shows at start) and routes OpenSSL's key
//!   schedules into it.

use std::fmt;
use std::io;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::Mutex;
use thiserror::Error;

/// Bytes of stack [`scrub_stack`] zeroes below its caller's frame.
///
/// Measured by `key_paths_fit_the_scrubbed_stack_and_leave_no_key_on_it`
/// (keyslots.rs; release build, VAES-256 backend): the CRYPTO paths use
/// 8.3 KiB below `ProgrammedKey::crypt_at`/`crypt_from` (the tweak batch
/// buffers and the backend's double batch and broadcast round keys),
/// KEYSLOT_PROGRAM 2.3 KiB below `Engine::program`. VAES-512 doubles the
/// batch buffers and the broadcast keys (about 2.5 KiB more). 24 KiB keeps
/// every path within half of it, which the test asserts; zeroing it costs
/// a `memset` of 24 KiB (about 0.3 µs) per call.
pub const STACK_SCRUB_BYTES: usize = 24 * 1024;

/// Zeroes [`STACK_SCRUB_BYTES`] of stack below the caller's frame.
///
/// Call it from the frame that called the key-handling function, right
/// after that call returned: the callee's frames (and whatever they left)
/// were in the region this function's array now occupies.
#[inline(never)]
pub fn scrub_stack() {
    let mut area = [0u8; STACK_SCRUB_BYTES];
    // The zeroes must be stored although nothing reads them: `black_box`
    // is opaque to the optimizer (it may read `area`), so the stores cannot
    // be dropped as dead. The tests check the effect on the real stack.
    std::hint::black_box(&mut area);
}

/// Scrubs the stack when dropped: for a function that makes several
/// key-handling calls in a loop (one per run of guest memory) and scrubs
/// once when it returns, early returns included, instead of after each
/// call. The callees' frames were below this guard's function's frame,
/// where the scrub's array then lies.
pub struct ScrubStackOnDrop;

impl Drop for ScrubStackOnDrop {
    fn drop(&mut self) {
        scrub_stack();
    }
}

/// Size of an arena slot: one [`SecureBox`] value.
pub const SLOT_BYTES: usize = 1024;
/// Alignment of an arena slot (a cache line).
const SLOT_ALIGN: usize = 64;
/// Bytes the arena maps at a time: 32 slots, half the 64 KiB that older
/// kernels allow an unprivileged process to lock.
const CHUNK_BYTES: usize = 32 * 1024;

/// Why key memory could not be set up.
#[derive(Debug, Error)]
pub enum SecureMemoryError {
    /// `mmap` of a new arena chunk failed.
    #[error("cannot map memory for key material: {0}")]
    Map(#[source] io::Error),
    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error("cannot make the process non-dumpable: {0}")]
    Dumpable(#[source] io::Error),
}

impl SecureMemoryError {
    /// The OS error number, if the failure came with one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Map(error) | Self::Dumpable(error) => error.raw_os_error(),
        }
    }
}

/// A free arena slot's address.
struct FreeSlot(NonNull<u8>);

// SAFETY: a free slot is plain memory owned by the arena, which hands it
// to exactly one `SecureBox` at a time; any thread may do so.
unsafe impl Send for FreeSlot {}

struct Arena {
    free: Vec<FreeSlot>,
    chunks: usize,
    locked_chunks: usize,
    warned: bool,
}

static ARENA: Mutex<Arena> = Mutex::new(Arena {
    free: Vec::new(),
    chunks: 0,
    locked_chunks: 0,
    warned: false,
});

/// The arena: a poisoned lock is used as is, it holds only a free list.
fn arena() -> std::sync::MutexGuard<'static, Arena> {
    ARENA
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Arena {
    fn take(&mut self) -> Result<NonNull<u8>, SecureMemoryError> {
        if self.free.is_empty() {
            self.grow()?;
        }
        self.free
            .pop()
            .map(|slot| slot.0)
            .ok_or_else(|| SecureMemoryError::Map(io::Error::other("arena has no free slot")))
    }

    /// Maps, advises and locks one more chunk and adds its slots.
    fn grow(&mut self) -> Result<(), SecureMemoryError> {
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched and the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(SecureMemoryError::Map(io::Error::last_os_error()));
        }
        // SAFETY (all three calls): advice and locking on the chunk just
        // mapped, whole pages, owned by the arena for the process lifetime.
        // Out of core dumps even if something makes the process dumpable.
        if unsafe { libc::madvise(base, CHUNK_BYTES, libc::MADV_DONTDUMP) } != 0 {
            tracing::warn!(
                "madvise(MADV_DONTDUMP) on key memory failed: {}; keys could appear in core dumps",
                io::Error::last_os_error()
            );
        }
        // A forked child gets zero pages here instead of the keys (Linux
        // 4.14+; nothing to do on older kernels).
        let _ = unsafe { libc::madvise(base, CHUNK_BYTES, libc::MADV_WIPEONFORK) };
        if unsafe { libc::mlock(base, CHUNK_BYTES) } == 0 {
            self.locked_chunks += 1;
        } else if !self.warned {
            self.warned = true;
            let error = io::Error::last_os_error();
            tracing::warn!(
                "cannot mlock {CHUNK_BYTES} bytes of key memory ({error}): \
                 RLIMIT_MEMLOCK is {}; keys may be swapped out. Raise the limit \
                 (`ulimit -l 1024`, systemd LimitMEMLOCK=1M, or run with CAP_IPC_LOCK)",
                memlock_limit().map_or("unknown".to_owned(), |limit| limit.to_string())
            );
        }
        self.chunks += 1;
        let base = base.cast::<u8>();
        for index in (0..CHUNK_BYTES / SLOT_BYTES).rev() {
            // SAFETY: inside the chunk just mapped.
            let slot = unsafe { base.add(index * SLOT_BYTES) };
            if let Some(slot) = NonNull::new(slot) {
                self.free.push(FreeSlot(slot));
            }
        }
        Ok(())
    }
}

/// RLIMIT_MEMLOCK's soft limit in bytes (`None`: unlimited or unknown).
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// A raw arena slot of [`SLOT_BYTES`] bytes, aligned to a cache line, for
/// key material that is not a Rust value: OpenSSL's key schedules (see
/// `xts::openssl_memory`). Give it back with [`return_slot`].
pub(crate) fn take_slot() -> Result<NonNull<u8>, SecureMemoryError> {
    arena().take()
}

/// Zeroes a slot from [`take_slot`] and returns it to the arena.
///
/// # Safety
/// `slot` came from [`take_slot`], was not returned since, and nothing
/// uses it any more.
pub(crate) unsafe fn return_slot(slot: NonNull<u8>) {
    // SAFETY: the caller hands over a whole slot it owned.
    let bytes = unsafe { std::slice::from_raw_parts_mut(slot.as_ptr(), SLOT_BYTES) };
    zeroize::Zeroize::zeroize(bytes);
    arena().free.push(FreeSlot(slot));
}

/// A value in the key arena: locked, out of core dumps, zeroed on drop.
pub struct SecureBox<T> {
    ptr: NonNull<T>,
}

// SAFETY: a `SecureBox` owns its `T` exactly like a `Box` does.
unsafe impl<T: Send> Send for SecureBox<T> {}
// SAFETY: as above; `&SecureBox<T>` only gives `&T`.
unsafe impl<T: Sync> Sync for SecureBox<T> {}

impl<T> SecureBox<T> {
    /// Moves `value` into the arena. The caller should scrub the stack it
    /// built `value` on ([`scrub_stack`]).
    pub fn new(value: T) -> Result<Self, SecureMemoryError> {
        const {
            assert!(size_of::<T>() <= SLOT_BYTES && align_of::<T>() <= SLOT_ALIGN);
        }
        let slot = arena().take()?;
        let ptr = slot.cast::<T>();
        // SAFETY: the slot is SLOT_BYTES long, SLOT_ALIGN-aligned (chunks
        // are page-aligned, slots a multiple of SLOT_ALIGN apart), which
        // the assertion above says fits a `T`, and no one else uses it.
        unsafe { ptr.as_ptr().write(value) };
        Ok(Self { ptr })
    }
}

impl<T> std::ops::Deref for SecureBox<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `ptr` holds a valid `T` from `new` until `drop`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Drop for SecureBox<T> {
    fn drop(&mut self) {
        let slot = self.ptr.cast::<u8>();
        // SAFETY: `ptr` holds a valid `T` that nothing uses any more; after
        // dropping it the slot is plain bytes we own until it is returned.
        unsafe {
            self.ptr.as_ptr().drop_in_place();
            let bytes = std::slice::from_raw_parts_mut(slot.as_ptr(), SLOT_BYTES);
            // Whatever `T`'s own drop did, padding included: volatile
            // stores, so they happen although the slot is not read again.
            zeroize::Zeroize::zeroize(bytes);
        }
        arena().free.push(FreeSlot(slot));
    }
}

/// What [`harden_process`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardeningReport {
    /// The process is non-dumpable: no core dumps, no ptrace attach or
    /// /proc/PID/mem for the same user without CAP_SYS_PTRACE.
    pub non_dumpable: bool,
    /// The key arena's pages are locked in RAM.
    pub key_memory_locked: bool,
    /// RLIMIT_MEMLOCK in bytes, `None` when unlimited.
    pub memlock_limit: Option<u64>,
    /// OpenSSL allocates key schedules in the key arena (it had not
    /// allocated anything before; see `xts::openssl_memory`).
    pub openssl_keys_in_arena: bool,
}

impl fmt::Display for HardeningReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "non-dumpable: {}, key memory locked: {} (RLIMIT_MEMLOCK {}), out of core dumps: yes, OpenSSL's key schedules in it: {}",
            if self.non_dumpable { "yes" } else { "no" },
            if self.key_memory_locked { "yes" } else { "no" },
            self.memlock_limit
                .map_or("unlimited".to_owned(), |limit| limit.to_string()),
            if self.openssl_keys_in_arena {
                "yes"
            } else {
                "no"
            },
        )
    }
}

/// Hardens the process for holding keys: `prctl(PR_SET_DUMPABLE, 0)` (no
/// core dumps; other processes of the same user can no longer ptrace it or
/// read /proc/PID/mem, root with CAP_SYS_PTRACE still can) and maps the key
/// arena, warning once if it cannot be locked. Call once at start, before
/// any key is programmed.
pub fn harden_process() -> Result<HardeningReport, SecureMemoryError> {
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(SecureMemoryError::Dumpable(io::Error::last_os_error()));
    }
    // Before anything calls OpenSSL: its key schedules go to the arena.
    let openssl_keys_in_arena = super::xts::openssl_memory::install();
    let mut arena = arena();
    if arena.chunks == 0 {
        arena.grow()?;
    }
    Ok(HardeningReport {
        openssl_keys_in_arena,
        non_dumpable: true,
        key_memory_locked: arena.locked_chunks == arena.chunks,
        memlock_limit: memlock_limit(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    /// Fills `STACK_SCRUB_BYTES` below the caller's frame with `0xa5` and
    /// returns the address range it painted.
    #[inline(never)]
    fn paint() -> (usize, usize) {
        let mut area = [0xa5u8; STACK_SCRUB_BYTES];
        std::hint::black_box(&mut area);
        let start = area.as_ptr() as usize;
        (start, start + STACK_SCRUB_BYTES)
    }

    /// Reads this thread's dead stack through /proc/self/mem: a system
    /// call, so reading it is well defined. File and buffer are set up
    /// before painting; only the `pread` call itself runs in the painted
    /// area, at its shallow end (a few hundred bytes).
    struct OwnMemory {
        mem: File,
        bytes: Vec<u8>,
    }

    impl OwnMemory {
        fn new() -> Self {
            Self {
                mem: File::open("/proc/self/mem").expect("open /proc/self/mem"),
                bytes: vec![0u8; STACK_SCRUB_BYTES],
            }
        }

        fn read(&mut self, range: (usize, usize)) -> &[u8] {
            let bytes = &mut self.bytes[..range.1 - range.0];
            self.mem
                .read_exact_at(bytes, range.0 as u64)
                .expect("read own memory");
            bytes
        }
    }

    /// Bytes of stack `work` used below the caller's frame (the deepest
    /// painted byte it changed), measured in the same frame as the call.
    #[inline(never)]
    pub(crate) fn stack_use(work: &mut dyn FnMut()) -> usize {
        let mut memory = OwnMemory::new();
        let range = paint();
        work();
        let after = memory.read(range);
        let deepest = after.iter().position(|&b| b != 0xa5).unwrap_or(after.len());
        after.len() - deepest
    }

    /// How often `needles` occur in the `STACK_SCRUB_BYTES` below the
    /// caller's frame after `work` ran (called from the same frame).
    #[inline(never)]
    pub(crate) fn left_on_stack(work: &mut dyn FnMut(), needles: &[&[u8]]) -> usize {
        let mut memory = OwnMemory::new();
        let range = paint();
        work();
        let after = memory.read(range);
        needles
            .iter()
            .map(|needle| after.windows(needle.len()).filter(|w| w == needle).count())
            .sum()
    }

    #[test]
    fn scrub_stack_zeroes_what_a_callee_left() {
        #[inline(never)]
        fn leave_secret() {
            let mut secret = [0x5cu8; 4096];
            std::hint::black_box(&mut secret);
        }
        let needle = [0x5cu8; 64];
        assert!(left_on_stack(&mut || leave_secret(), &[&needle]) > 0);
        let scrubbed = left_on_stack(
            &mut || {
                leave_secret();
                scrub_stack();
            },
            &[&needle],
        );
        assert_eq!(scrubbed, 0);
    }

    #[test]
    fn harden_process_makes_the_process_non_dumpable() {
        let report = harden_process().unwrap();
        // SAFETY: PR_GET_DUMPABLE takes no pointer.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        assert!(report.non_dumpable);
        let root = memlock_limit().is_none()
            || std::fs::read_to_string("/proc/self/status")
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
        if root {
            assert!(report.key_memory_locked, "{report}");
        }
        // Restore, so the rest of this test process can be debugged.
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }

    #[test]
    fn boxes_reuse_zeroed_slots() {
        let mut memory = OwnMemory::new();
        // Other tests allocate from the same arena meanwhile: the freed
        // slot is read while holding the arena, and only while it is
        // still free (a few tries, in case another test took it first).
        let checked = (0..100).any(|_| {
            let first = SecureBox::new([0x77u8; 512]).unwrap();
            let address = &*first as *const [u8; 512] as usize;
            assert_eq!(address % SLOT_ALIGN, 0);
            drop(first);
            let arena = arena();
            if !arena
                .free
                .iter()
                .any(|slot| slot.0.as_ptr() as usize == address)
            {
                return false;
            }
            // Read the freed slot through /proc/self/mem: zero.
            let bytes = memory.read((address, address + SLOT_BYTES));
            drop(arena);
            assert!(bytes.iter().all(|&b| b == 0), "freed slot not zeroed");
            true
        });
        assert!(
            checked,
            "the freed slot was taken by another test 100 times"
        );
        let boxes: Vec<_> = (0..100)
            .map(|i| SecureBox::new([i as u8; 900]).unwrap())
            .collect();
        for (i, value) in boxes.iter().enumerate() {
            assert!(value.iter().all(|&b| b == i as u8));
        }
    }
}
