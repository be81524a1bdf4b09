//! A SIGBUS in an image mapping becomes a fault count, not a dead device.
//!
//! Touching a page of a shared file mapping that the file no longer covers
//! (the image was truncated under the device), or whose page the kernel
//! cannot read or allocate (a disk error, ENOSPC writing into a hole),
//! raises SIGBUS on the touching thread, whichever it is (a request
//! thread, or a rayon worker of the engine). Unwinding out of a signal
//! handler is not possible in Rust, so the handler repairs instead: it
//! maps an anonymous zero page over the faulting page (`MAP_FIXED`),
//! counts the fault on the mapping's [`Slot`] and returns; the faulting
//! load or store then runs again on the zero page and the copy finishes
//! with garbage. The request that watched the count ([`Slot::faults`]
//! before and after) turns that into IOERR; the device stops using the
//! mapping (its pages are no longer the file's) and serves through
//! `pread`/`pwrite` from then on.
//!
//! A SIGBUS anywhere else goes to the handler that was installed before
//! (Rust's runtime installs one for stack overflows) or, without one, kills
//! the process as it would have.
//!
//! Async-signal safety: the handler reads atomics, calls `mmap`, `sigaction`
//! and `raise` (direct system calls on Linux; POSIX does not list `mmap`
//! as async-signal-safe, but glibc's and musl's wrappers take no locks)
//! and saves and restores `errno`.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many mappings can be registered at once (one per open image; the
/// tests open a few in parallel).
const SLOTS: usize = 256;

/// One registered mapping: its address range and the SIGBUSes it took.
#[derive(Debug)]
pub struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    faults: AtomicU64,
}

impl Slot {
    /// SIGBUSes the handler repaired in this mapping since it was
    /// registered. The thread that faulted sees its own increment; another
    /// thread sees it once it synchronises with the faulting one (rayon's
    /// join does).
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::SeqCst)
    }
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faults: AtomicU64::new(0),
    }
}; SLOTS];

/// The SIGBUS disposition before ours, and the page size, set once by
/// [`install`] before the handler can run.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// A registered mapping range; unregisters on drop.
#[derive(Debug)]
pub struct Registration {
    slot: &'static Slot,
}

impl Registration {
    /// The fault count of this mapping.
    pub fn slot(&self) -> &'static Slot {
        self.slot
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slot.len.store(0, Ordering::SeqCst);
        self.slot.start.store(0, Ordering::SeqCst);
    }
}

/// Installs the handler (once per process) and registers `len` bytes from
/// `start` (page-aligned, a mapping the caller owns and unmaps only after
/// dropping the registration). `None` when all slots are taken.
pub fn register(start: usize, len: usize) -> io::Result<Option<Registration>> {
    install()?;
    for slot in &TABLE {
        if slot
            .start
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            slot.faults.store(0, Ordering::SeqCst);
            slot.len.store(len, Ordering::SeqCst);
            return Ok(Some(Registration { slot }));
        }
    }
    Ok(None)
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

fn install() -> io::Result<()> {
    let result = INSTALLED.get_or_init(|| {
        PAGE_SIZE.store(page_size(), Ordering::SeqCst);
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, no
        // flags, empty mask) for sigaction to overwrite.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current disposition into a valid struct.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let _ = PREVIOUS.set(previous);
        // SAFETY: as above.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `action` is fully initialised (empty mask from zeroed,
        // which sigemptyset would also give) and its handler is an
        // `extern "C"` function of the SA_SIGINFO signature.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local; its location is valid for the thread.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // si_addr is the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    let repaired = find(addr).is_some_and(|slot| {
        if replace_page(addr) {
            slot.faults.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    if !repaired {
        chain(signal, info, context);
    }
}

/// The registered mapping that holds `addr`.
fn find(addr: usize) -> Option<&'static Slot> {
    TABLE.iter().find(|slot| {
        let start = slot.start.load(Ordering::SeqCst);
        let len = slot.len.load(Ordering::SeqCst);
        start != 0 && addr >= start && addr - start < len
    })
}

/// Maps a private zero page over the page holding `addr`.
fn replace_page(addr: usize) -> bool {
    let page = PAGE_SIZE.load(Ordering::SeqCst);
    if page == 0 {
        return false;
    }
    let base = addr & !(page - 1);
    // SAFETY: the page lies inside a registered image mapping, which no
    // Rust value owns but the `Mapping` (which unmaps the whole range,
    // this page included, on drop); replacing it changes only what its
    // bytes read as, which the fault count tells the request about.
    let mapped = unsafe {
        libc::mmap(
            base as *mut libc::c_void,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    mapped != libc::MAP_FAILED
}

/// Hands a SIGBUS that is not ours to the disposition before ours.
fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.get();
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if let Some(previous) = previous
        && handler != libc::SIG_DFL
        && handler != libc::SIG_IGN
    {
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous handler was installed with SA_SIGINFO,
            // so it has this signature.
            let call: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            call(signal, info, context);
        } else {
            // SAFETY: a plain handler takes the signal number.
            let call: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            call(signal);
        }
        return;
    }
    // The default action: terminate (with a core dump). Raised while the
    // handler blocks SIGBUS, it is delivered when the handler returns.
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs SIG_DFL and raises the signal; both are
    // async-signal-safe.
    unsafe {
        libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_found_by_address_and_freed_on_drop() {
        let registration = register(0x7000_0000_0000, 0x3000)
            .unwrap()
            .expect("a free slot");
        let slot = registration.slot();
        assert!(std::ptr::eq(find(0x7000_0000_2fff).unwrap(), slot));
        assert!(find(0x7000_0000_3000).is_none());
        assert!(find(0x6fff_ffff_ffff).is_none());
        drop(registration);
        assert!(find(0x7000_0000_0000).is_none());
    }
}
