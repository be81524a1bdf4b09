//! The OpenSSL backend of [`super::XtsKey`]: AES-256-XTS through the EVP
//! interface of the OpenSSL built into the binary (crate `openssl-src`,
//! OpenSSL 3.6). OpenSSL runs its VAES/AVX-512 XTS code (OpenSSL 3.4 and
//! later) only on CPUs with AVX-512; on others, such as the AMD Zen 3
//! machines the benchmarks run on, its 128-bit AES-NI code, which the
//! engine's own VAES backend (`vaes`) beats where the CPU has VAES
//! (`icelab bench crypto` compares them). It is the default where the VAES
//! backend cannot run.
//!
//! One EVP context per direction holds the key schedule (a decryption
//! context needs the inverse schedule of K1, so a context cannot switch
//! direction without the key). A context carries the IV between calls, so
//! threads cannot share one: each thread borrows a working copy from its
//! own slot ([`Contexts`]), made from the template on first use. Per data
//! unit the IV (the DUN) is set with `EVP_CipherInit_ex` without key or
//! cipher, which keeps the schedule, and `EVP_CipherUpdate` does the unit.
//!
//! Key hygiene: the contexts (and so the schedules) OpenSSL allocates for
//! a key go to the locked key arena (`openssl_memory`); OpenSSL cleanses
//! each on `EVP_CIPHER_CTX_free`, and the arena zeroes the slot again.
//! Dropping an [`EvpXts`] frees every copy. `tests/key_memory.rs` scans the
//! running device for them. The raw key is read where the caller keeps it
//! (zeroized there), never copied here. The XTS assembly keeps round keys
//! in registers and leaves only tweaks on the stack, so requests need no
//! stack scrub (`key_paths_fit_the_scrubbed_stack_and_leave_no_key_on_it`).

use foreign_types::ForeignType;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::{CipherCtx, CipherCtxRef};
use openssl::error::ErrorStack;
use openssl_sys as ffi;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use thiserror::Error;

use super::Direction;
use super::openssl_memory::{self, key_memory};
use super::prefetch::Prefetcher;
use std::sync::{Mutex, OnceLock};

/// Working contexts per direction: threads beyond this share slots (and
/// may then copy a context more than once).
const SLOTS: usize = 16;

/// Why OpenSSL would not take a key.
#[derive(Debug, Error)]
pub(super) enum EvpError {
    /// Context allocation or key setup failed; for XTS, OpenSSL refuses to
    /// encrypt under a key whose halves are equal.
    #[error("OpenSSL refused the AES-256-XTS key: {0}")]
    Key(#[source] ErrorStack),
}

/// An AES-256-XTS key in OpenSSL contexts, one set per direction.
pub(super) struct EvpXts {
    encrypt: Contexts,
    decrypt: Contexts,
}

impl EvpXts {
    /// Expands `key` (K1 || K2) into an encryption and a decryption context.
    /// OpenSSL reads the key from where it is; no copy is made here.
    pub(super) fn new(key: &[u8; 64]) -> Result<Self, EvpError> {
        warm_up();
        let (encrypt, decrypt) = key_memory(|| -> Result<_, ErrorStack> {
            let cipher = Cipher::aes_256_xts();
            let mut encrypt = CipherCtx::new()?;
            encrypt.encrypt_init(Some(cipher), Some(key), None)?;
            let mut decrypt = CipherCtx::new()?;
            decrypt.decrypt_init(Some(cipher), Some(key), None)?;
            Ok((encrypt, decrypt))
        })
        .map_err(EvpError::Key)?;
        Ok(Self {
            encrypt: Contexts::new(encrypt),
            decrypt: Contexts::new(decrypt),
        })
    }

    /// Encrypts or decrypts consecutive data units of `data_unit_size`
    /// bytes, the first with DUN `first_dun`: in place when `source` is
    /// `None`, else from `source` (same length) into `data`. The input is
    /// prefetched `prefetch_ahead` bytes ahead of the unit being worked on
    /// (0: no prefetch).
    ///
    /// # Panics
    /// If OpenSSL fails a call it accepted the key for (only a data unit
    /// over 2^20 blocks, which the engine never offers, would).
    pub(super) fn crypt_pieces(
        &self,
        direction: Direction,
        source: Option<&[u8]>,
        data: &mut [u8],
        data_unit_size: usize,
        first_dun: u128,
        prefetch_ahead: usize,
    ) {
        let contexts = match direction {
            Direction::Encrypt => &self.encrypt,
            Direction::Decrypt => &self.decrypt,
        };
        let lease = contexts.lease();
        let ctx = lease.ctx;
        let unit_len = i32::try_from(data_unit_size).expect("data unit size fits an int");
        let len = data.len();
        let output = data.as_mut_ptr();
        // In place, input and output are one pointer (derived from the
        // mutable borrow, so reading through it is sound).
        let input = source.map_or(output.cast_const(), <[u8]>::as_ptr);
        let mut prefetcher = Prefetcher::new(input, len, prefetch_ahead);
        let mut dun = first_dun;
        let mut offset = 0;
        while offset < len {
            prefetcher.ahead_of(offset + data_unit_size);
            let iv = dun.to_le_bytes();
            let mut written = 0;
            // SAFETY: `ctx` is a context of this key that only this thread
            // uses (leased); NULL cipher, engine and key keep the cipher and
            // schedule, enc -1 keeps the direction, `iv` is 16 bytes. The
            // update reads `data_unit_size` bytes at `input + offset` and
            // writes as many at `output + offset`, both inside their slices
            // (`offset + data_unit_size <= len`, the callers' length check);
            // the two are the same pointer in place, which XTS allows.
            let ok = unsafe {
                ffi::EVP_CipherInit_ex(ctx, null(), null_mut(), null(), iv.as_ptr(), -1) == 1
                    && ffi::EVP_CipherUpdate(
                        ctx,
                        output.add(offset),
                        &mut written,
                        input.add(offset),
                        unit_len,
                    ) == 1
            };
            if !ok || written != unit_len {
                panic!(
                    "OpenSSL failed AES-256-XTS on a {data_unit_size}-byte data unit: {}",
                    ErrorStack::get()
                );
            }
            dun = dun.wrapping_add(1);
            offset += data_unit_size;
        }
    }
}

/// A template context holding the key schedule, and per-thread working
/// copies of it.
struct Contexts {
    /// Only ever copied, under the lock (copying reads it).
    template: Mutex<CipherCtx>,
    /// Working copies, owned by this `Contexts` while here; a thread takes
    /// its slot's copy (swapping in NULL) for one call and puts it back.
    slots: [AtomicPtr<ffi::EVP_CIPHER_CTX>; SLOTS],
}

impl Contexts {
    fn new(template: CipherCtx) -> Self {
        Self {
            template: Mutex::new(template),
            slots: std::array::from_fn(|_| AtomicPtr::new(null_mut())),
        }
    }

    /// The calling thread's working context, a new copy if its slot is
    /// empty (first use, or another thread on the same slot holds it).
    ///
    /// # Panics
    /// If OpenSSL cannot allocate a copy.
    fn lease(&self) -> Lease<'_> {
        let slot = &self.slots[thread_slot()];
        let mut ctx = slot.swap(null_mut(), Ordering::Acquire);
        if ctx.is_null() {
            let copy = self.copy();
            ctx = copy.as_ptr();
            // Owned by the lease (and then the slot) from here on.
            std::mem::forget(copy);
        }
        Lease { slot, ctx }
    }

    fn copy(&self) -> CipherCtx {
        let template = self
            .template
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        key_memory(|| {
            let mut copy = CipherCtx::new().expect("OpenSSL allocates a cipher context");
            CipherCtxRef::copy(&mut copy, &template).expect("OpenSSL copies a cipher context");
            copy
        })
    }
}

impl Drop for Contexts {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            let ctx = std::mem::replace(slot.get_mut(), null_mut());
            if !ctx.is_null() {
                // SAFETY: a non-NULL slot owns a context made by `into_ptr`
                // and nothing else refers to it (we have `&mut self`).
                // Dropping it frees it, and OpenSSL cleanses the schedule.
                drop(unsafe { <CipherCtx as ForeignType>::from_ptr(ctx) });
            }
        }
    }
}

/// A working context borrowed from a slot; put back (or freed, if the
/// slot was refilled meanwhile) when dropped.
struct Lease<'a> {
    slot: &'a AtomicPtr<ffi::EVP_CIPHER_CTX>,
    ctx: *mut ffi::EVP_CIPHER_CTX,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let returned =
            self.slot
                .compare_exchange(null_mut(), self.ctx, Ordering::Release, Ordering::Relaxed);
        if returned.is_err() {
            // SAFETY: the lease owns `ctx` (made by `into_ptr`, taken out
            // of its slot); no one else has it.
            drop(unsafe { <CipherCtx as ForeignType>::from_ptr(self.ctx) });
        }
    }
}

/// Routes OpenSSL's allocations ([`openssl_memory::install`]) and then
/// makes it do its one-time work (loading the provider, fetching the
/// cipher) under a public key, so that those allocations land on the heap
/// and key setup allocates only the contexts in the arena. Once.
fn warm_up() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        openssl_memory::install();
        let public: [u8; 64] = std::array::from_fn(|i| i as u8);
        for encrypt in [true, false] {
            let ctx = CipherCtx::new().and_then(|mut ctx| {
                let cipher = Some(Cipher::aes_256_xts());
                match encrypt {
                    true => ctx.encrypt_init(cipher, Some(&public), Some(&[0; 16])),
                    false => ctx.decrypt_init(cipher, Some(&public), Some(&[0; 16])),
                }
                .map(|()| ctx)
            });
            if let Err(error) = ctx {
                tracing::debug!("OpenSSL warm-up: {error}");
            }
        }
    });
}

/// This thread's slot index: threads are numbered as they first use a key.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|slot| *slot)
}

/// OpenSSL's version line (`OpenSSL 3.6.3 ...`) of the library built in.
pub fn openssl_version() -> &'static str {
    openssl::version::version()
}
