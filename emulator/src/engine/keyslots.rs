//! The engine: a keyslot table plus the checks of docs/PROTOCOL.md
//! ("Device rules").
//!
//! Keyslots are individually locked; a request takes a reference to the
//! programmed key under a read lock and releases the lock before any
//! crypto. Programming replaces the slot's key; the old key is wiped when
//! the last in-flight request using it finishes. A key programmed through
//! one queue is visible to requests on every queue as soon as the program
//! call returns, which is before its completion reaches the guest.
//!
//! Key memory (see [`super::secure`]): key schedules live in the locked,
//! non-dumped key arena and are zeroed there on drop; every public entry
//! point that touches key material does its work in an `#[inline(never)]`
//! callee and then scrubs the stack that callee used, which is where the
//! `aes` backends, key expansion, the fingerprint HMAC and the device's
//! copy of the key descriptor leave their temporaries.
//!
//! An engine whose `key_types` include hardware-wrapped keys has a key
//! manager ([`super::key_manager`]): requests 32..35 go to it, and a
//! KEYSLOT_PROGRAM of key type 2 unwraps its ephemerally-wrapped key and
//! programs the derived inline encryption key, to which the fault, the
//! usage ledger and the fingerprint apply as to a raw key. A reset
//! ([`Engine::reset`]) empties the keyslots and renews the ephemeral
//! wrapping key.

use super::capabilities::Capabilities;
use super::device_secret::DeviceSecret;
use super::error::EngineError;
use super::fault::Fault;
use super::fingerprint::{Fingerprint, Fingerprinter};
use super::hw_kdf::SW_SECRET_SIZE;
use super::key_manager::{KeyManager, KeyManagerError};
use super::secure::{ScrubStackOnDrop, SecureBox, scrub_stack};
use super::stats::Stats;
use super::trace::{
    EvictCause, EvictEvent, KeyMode, KeyUsageLimitEvent, ProgramEvent, Trace, TraceEvent,
};
use super::usage::{Charge, KeyUsage, Ledger};
use super::wrapped_key::{KeyIdText, OpenError};
use super::xts::{Direction, XtsKey};
use crate::protocol::{CryptoMode, CryptoMsg, Dun, KeyBlob, KeyDesc, KeyType};
use icelab_contract::device::{KeyUsageLimit, LimitAction};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

/// A key as held by a keyslot.
pub struct ProgrammedKey {
    /// In the key arena: locked, out of core dumps, zeroed on drop.
    key: SecureBox<XtsKey>,
    /// Data unit size in bytes.
    pub data_unit_size: u32,
    /// Number of DUN bytes requests may use.
    pub dun_bytes: u32,
    /// Fingerprint of the raw key (for traces).
    pub fingerprint: Fingerprint,
    /// A deliberate fault, if the engine was started with one.
    fault: Option<Fault>,
    /// What this key encrypted and decrypted (shared by every programming
    /// of the same key).
    usage: Arc<KeyUsage>,
}

impl ProgrammedKey {
    /// Encrypts or decrypts whole data units in place, the first with `dun`.
    pub fn crypt(&self, direction: Direction, data: &mut [u8], dun: &Dun) {
        self.crypt_at(direction, data, dun, 0);
    }

    /// Like [`ProgrammedKey::crypt`] for the data units of a request that
    /// start `skip` units after its first (DUN `dun`): the device crypts a
    /// request piece by piece where guest memory is not contiguous.
    pub fn crypt_at(&self, direction: Direction, data: &mut [u8], dun: &Dun, skip: u64) {
        self.crypt_at_unscrubbed(direction, data, dun, skip);
        self.scrub_if_needed();
    }

    /// [`ProgrammedKey::crypt_at`] without the stack scrub, for a caller
    /// that scrubs once after several calls (a
    /// [`super::secure::ScrubStackOnDrop`] in its frame).
    #[inline(never)]
    pub fn crypt_at_unscrubbed(&self, direction: Direction, data: &mut [u8], dun: &Dun, skip: u64) {
        let Some(first_dun) = self.first_dun(dun, skip) else {
            return;
        };
        self.key
            .crypt(direction, data, self.data_unit_size as usize, first_dun);
    }

    /// Out of place: `dest` gets the result for `source` (same length),
    /// reading each `source` byte once (see [`XtsKey::crypt_from`]).
    pub fn crypt_from(
        &self,
        direction: Direction,
        source: &[u8],
        dest: &mut [u8],
        dun: &Dun,
        skip: u64,
    ) {
        self.crypt_from_unscrubbed(direction, source, dest, dun, skip);
        self.scrub_if_needed();
    }

    /// Scrubs the stack after a crypt when the key's backend leaves key
    /// material there (the `aes` crate's does, OpenSSL's and the VAES
    /// backend's do not: a 24 KiB scrub costs more than encrypting a
    /// 512-byte unit, so it is skipped when there is nothing to wipe).
    #[inline(always)]
    fn scrub_if_needed(&self) {
        drop(self.scrub_guard());
    }

    /// A guard that scrubs the stack when dropped if this key's backend
    /// leaves key material there, for a caller that makes several
    /// `*_unscrubbed` calls: `None` (no 24 KiB `memset` per request) when
    /// there is nothing to wipe. (Not `then_some`: that would make the
    /// guard first and drop it, scrubbing, when it is not wanted.)
    pub fn scrub_guard(&self) -> Option<ScrubStackOnDrop> {
        if self.key.leaves_key_on_stack() {
            Some(ScrubStackOnDrop)
        } else {
            None
        }
    }

    /// [`ProgrammedKey::crypt_from`] without the stack scrub, for a
    /// caller that scrubs once after several calls.
    #[inline(never)]
    pub fn crypt_from_unscrubbed(
        &self,
        direction: Direction,
        source: &[u8],
        dest: &mut [u8],
        dun: &Dun,
        skip: u64,
    ) {
        let Some(first_dun) = self.first_dun(dun, skip) else {
            dest.copy_from_slice(source);
            return;
        };
        self.key.crypt_from(
            direction,
            source,
            dest,
            self.data_unit_size as usize,
            first_dun,
        );
    }

    /// The DUN of the data unit `skip` units into a request starting at
    /// `dun` (the engine checked the range fits), as the fault (if any)
    /// bends it; `None` when the fault leaves data as it is.
    fn first_dun(&self, dun: &Dun, skip: u64) -> Option<u128> {
        let dun = dun.low_u128().wrapping_add(u128::from(skip));
        match self.fault {
            None | Some(Fault::SwapKeyHalves) => Some(dun),
            Some(Fault::DunOffByOne) => Some(dun.wrapping_add(1)),
            Some(Fault::Plaintext) => None,
        }
    }
}

/// DUN bytes of the device default key: a data unit's index on the
/// device fits in 8.
pub const DEFAULT_KEY_DUN_BYTES: u32 = 8;

type Slot = RwLock<Option<Arc<ProgrammedKey>>>;

/// The inline crypto engine.
pub struct Engine {
    capabilities: Option<Capabilities>,
    slots: Box<[Slot]>,
    fingerprinter: Fingerprinter,
    stats: Stats,
    trace: Option<Trace>,
    fault: Option<Fault>,
    ledger: Ledger,
    usage_limit: Option<KeyUsageLimit>,
    default_key: Option<Arc<ProgrammedKey>>,
    /// With hardware-wrapped keys in `key_types`; `None` also when key
    /// memory could not be mapped (its requests then get `key-memory`).
    key_manager: Option<KeyManager>,
}

impl Engine {
    /// An engine with `capabilities` (`None`: the device offers no inline
    /// encryption), all keyslots empty. When they include hardware-wrapped
    /// keys, its key manager has a random device secret (see
    /// [`Engine::with_device_secret`]).
    pub fn new(capabilities: Option<Capabilities>, trace: Option<Trace>) -> Self {
        let slots = capabilities.map_or(0, |caps| caps.slots);
        let wrapped =
            capabilities.is_some_and(|caps| caps.key_types.accepts(KeyType::HardwareWrapped));
        let key_manager = wrapped.then(Self::random_key_manager).flatten();
        scrub_stack();
        Self {
            capabilities,
            slots: (0..slots).map(|_| RwLock::new(None)).collect(),
            fingerprinter: Fingerprinter::random(),
            stats: Stats::new(slots),
            trace,
            fault: None,
            ledger: Ledger::default(),
            usage_limit: None,
            default_key: None,
            key_manager,
        }
    }

    #[inline(never)]
    fn random_key_manager() -> Option<KeyManager> {
        let manager = DeviceSecret::random().and_then(|secret| KeyManager::new(&secret));
        manager
            .map_err(|error| tracing::error!("cannot set up the key manager: {error}"))
            .ok()
    }

    /// The same engine with its key manager rooted in `secret` (the device
    /// secret of `--key-manager-state`). Does nothing to an engine without
    /// hardware-wrapped keys.
    pub fn with_device_secret(mut self, secret: &DeviceSecret) -> Result<Self, EngineError> {
        if self.key_manager.is_some() {
            let manager = KeyManager::new(secret);
            scrub_stack();
            self.key_manager = Some(manager.map_err(|error| EngineError::KeyMemory {
                errno: error.raw_os_error().unwrap_or(0),
            })?);
        }
        Ok(self)
    }

    /// The key manager, if the engine accepts hardware-wrapped keys.
    pub fn key_manager(&self) -> Option<&KeyManager> {
        self.key_manager.as_ref()
    }

    /// The same engine with a limit on the bytes one key may encrypt.
    pub fn with_usage_limit(mut self, limit: Option<KeyUsageLimit>) -> Self {
        self.usage_limit = limit;
        self
    }

    /// The same engine with a device default key: AES-256-XTS with
    /// `data_unit_size`-byte data units (the logical block size), for the
    /// requests that carry no crypto context. Call after
    /// [`Engine::with_fault`]: the fault applies to it as to any key.
    pub fn with_default_key(
        mut self,
        raw: &[u8; 64],
        data_unit_size: u32,
    ) -> Result<Self, EngineError> {
        let key = self.new_key(raw, data_unit_size, DEFAULT_KEY_DUN_BYTES, true);
        scrub_stack();
        let key = key?;
        tracing::info!(fingerprint = %key.fingerprint, data_unit_size, "device default key");
        self.default_key = Some(key);
        Ok(self)
    }

    /// The device default key, if the engine has one.
    pub fn default_key(&self) -> Option<&Arc<ProgrammedKey>> {
        self.default_key.as_ref()
    }

    /// The usage limit, if any.
    pub fn usage_limit(&self) -> Option<KeyUsageLimit> {
        self.usage_limit
    }

    /// The counters now, per-key usage included (what `--stats` writes).
    pub fn counters(&self) -> icelab_contract::device::Counters {
        let mut counters = self.stats.snapshot();
        (counters.key_usage, counters.key_usage_forgotten) = self.ledger.snapshot();
        counters
    }

    /// Counts `bytes` that `key` is about to encrypt or has decrypted.
    /// With `--key-usage-limit-action refuse`, an encryption that would
    /// take the key past the limit is refused (nothing counted); the first
    /// refusal or (`warn`) crossing per key is traced.
    pub fn charge(
        &self,
        key: &ProgrammedKey,
        direction: Direction,
        bytes: u64,
    ) -> Result<(), EngineError> {
        let units = bytes / u64::from(key.data_unit_size);
        if direction == Direction::Decrypt {
            key.usage.charge_decryption(units, bytes);
            return Ok(());
        }
        let charge = key.usage.charge_encryption(units, bytes, self.usage_limit);
        let (before, first, refused) = match charge {
            Charge::Counted => return Ok(()),
            Charge::CrossedLimit { before } => (before, true, false),
            Charge::Refused { before, first } => (before, first, true),
        };
        let limit = self.usage_limit.map_or(0, |l| l.bytes);
        if first {
            let action = if refused {
                LimitAction::Refuse
            } else {
                LimitAction::Warn
            };
            tracing::warn!(
                fingerprint = %key.fingerprint,
                encrypted = before,
                request = bytes,
                limit,
                action = action.name(),
                "a key reached --key-usage-limit"
            );
            if let Some(trace) = &self.trace {
                trace.event(TraceEvent::KeyUsageLimit(KeyUsageLimitEvent {
                    fingerprint: key.fingerprint.to_string(),
                    default_key: key.usage.is_default_key(),
                    bytes_encrypted: before,
                    request_bytes: bytes,
                    limit,
                    action,
                }));
            }
        }
        if refused {
            return Err(EngineError::KeyUsageLimit {
                fingerprint: key.fingerprint,
                encrypted: before,
                request: bytes,
                limit,
            });
        }
        Ok(())
    }

    /// A key schedule in the key arena for `raw` (a fault applied), its
    /// fingerprint and its usage entry. The caller scrubs the stack.
    #[inline(never)]
    fn new_key(
        &self,
        raw: &[u8],
        data_unit_size: u32,
        dun_bytes: u32,
        default_key: bool,
    ) -> Result<Arc<ProgrammedKey>, EngineError> {
        let mut xts_key = Zeroizing::new([0u8; 64]);
        xts_key.copy_from_slice(raw);
        if self.fault == Some(Fault::SwapKeyHalves) {
            xts_key.rotate_left(32);
        }
        let fingerprint = self.fingerprinter.fingerprint(raw);
        let schedule = SecureBox::new(XtsKey::new(&xts_key)).map_err(|error| {
            tracing::error!("cannot hold a key: {error}");
            EngineError::KeyMemory {
                errno: error.raw_os_error().unwrap_or(0),
            }
        })?;
        drop(xts_key);
        Ok(Arc::new(ProgrammedKey {
            key: schedule,
            data_unit_size,
            dun_bytes,
            fingerprint,
            fault: self.fault,
            usage: self.ledger.entry(fingerprint, default_key),
        }))
    }

    /// The same engine, deliberately wrong in the way `fault` says.
    pub fn with_fault(mut self, fault: Option<Fault>) -> Self {
        self.fault = fault;
        self
    }

    /// The deliberate fault, if any.
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// What the engine supports, if it exists at all.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The trace, if enabled.
    pub fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }

    /// KEYSLOT_PROGRAM: checks the descriptor against the capabilities and
    /// replaces whatever the slot held.
    pub fn program(&self, desc: &KeyDesc, queue: u16) -> Result<Fingerprint, EngineError> {
        let result = self.program_unscrubbed(desc, queue);
        scrub_stack();
        result
    }

    #[inline(never)]
    fn program_unscrubbed(&self, desc: &KeyDesc, queue: u16) -> Result<Fingerprint, EngineError> {
        let caps = self.capabilities.ok_or(EngineError::NoInlineEncryption)?;
        let slot = self.slot(desc.slot)?;
        let mode = CryptoMode::from_wire(desc.crypto_mode)
            .ok_or(EngineError::UnsupportedMode(desc.crypto_mode))?;
        let key_type = match KeyType::from_wire(desc.key_type) {
            Some(key_type) if caps.key_types.accepts(key_type) => key_type,
            _ => return Err(EngineError::UnsupportedKeyType(desc.key_type)),
        };
        // A raw key's size is checked here; a wrapped key's blob is the key
        // manager's to check, after the cheaper checks below.
        let raw_key = match key_type {
            KeyType::Raw => Some(
                desc.key()
                    .filter(|key| key.len() == mode.raw_key_size())
                    .ok_or(EngineError::WrongKeySize {
                        got: desc.key_size,
                        want: mode.raw_key_size(),
                    })?,
            ),
            KeyType::HardwareWrapped => None,
        };
        if !caps.data_unit_sizes.contains_bits(desc.data_unit_size_bits) {
            return Err(EngineError::UnsupportedDataUnitSize(
                desc.data_unit_size_bits,
            ));
        }
        if desc.dun_bytes == 0 {
            return Err(EngineError::ZeroDunBytes);
        }
        if desc.dun_bytes > u32::from(caps.max_dun_bytes) {
            return Err(EngineError::DunBytesTooLarge {
                got: desc.dun_bytes,
                max: caps.max_dun_bytes,
            });
        }

        let inline_key;
        let raw = match raw_key {
            Some(key) => key,
            None => {
                let manager = self.key_manager_for_request()?;
                let blob = blob_bytes(desc.key_size, desc.key());
                inline_key = self.refusal_counted(blob.and_then(|b| manager.inline_key(b)))?;
                &inline_key[..]
            }
        };
        let key = self.new_key(raw, 1 << desc.data_unit_size_bits, desc.dun_bytes, false)?;
        if raw_key.is_none() {
            self.stats.key_manager.programmed.fetch_add(1, Relaxed);
        }
        let fingerprint = key.fingerprint;
        let replaced = write(slot).replace(key);
        self.stats.slots_programmed.fetch_add(1, Relaxed);
        tracing::debug!(slot = desc.slot, %fingerprint, queue, ?key_type, "keyslot programmed");
        if let Some(trace) = &self.trace {
            trace.event(TraceEvent::Program(ProgramEvent {
                slot: desc.slot,
                queue,
                fingerprint: fingerprint.to_string(),
                mode: KeyMode::Aes256Xts,
                data_unit_size: 1u32 << desc.data_unit_size_bits,
                dun_bytes: desc.dun_bytes,
                replaced: replaced.map(|old| old.fingerprint.to_string()),
            }));
        }
        Ok(fingerprint)
    }

    /// KEYSLOT_EVICT: empties the slot (evicting an empty slot succeeds).
    /// Returns the fingerprint of the key it held.
    pub fn evict(&self, desc: &KeyDesc, queue: u16) -> Result<Option<Fingerprint>, EngineError> {
        let result = self.evict_unscrubbed(desc, queue);
        // The device's copies of the descriptor (which may carry the key)
        // were in frames below this one.
        scrub_stack();
        result
    }

    #[inline(never)]
    fn evict_unscrubbed(
        &self,
        desc: &KeyDesc,
        queue: u16,
    ) -> Result<Option<Fingerprint>, EngineError> {
        self.capabilities.ok_or(EngineError::NoInlineEncryption)?;
        let slot = self.slot(desc.slot)?;
        let evicted = write(slot).take().map(|key| key.fingerprint);
        self.stats.slots_evicted.fetch_add(1, Relaxed);
        self.trace_evict(desc.slot, evicted, Some(queue), EvictCause::Guest);
        Ok(evicted)
    }

    /// Empties every slot (device reset, new connection).
    pub fn evict_all(&self) {
        self.evict_all_unscrubbed();
        scrub_stack();
    }

    #[inline(never)]
    fn evict_all_unscrubbed(&self) {
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(key) = write(slot).take() {
                self.stats.slots_reset.fetch_add(1, Relaxed);
                self.trace_evict(index as u32, Some(key.fingerprint), None, EvictCause::Reset);
            }
        }
    }

    /// A device reset (vhost-user RESET_DEVICE, SET_FEATURES, a new
    /// connection): every keyslot is emptied and the key manager's
    /// ephemeral wrapping key renewed, so the ephemerally-wrapped keys of
    /// the previous boot are refused from now on.
    pub fn reset(&self) {
        self.evict_all();
        if let Some(manager) = &self.key_manager {
            match manager.renew_ephemeral_key() {
                Ok(()) => tracing::debug!(
                    boot_id = %KeyIdText(manager.boot_id()),
                    "ephemeral wrapping key renewed"
                ),
                Err(error) => tracing::error!(
                    "cannot renew the ephemeral wrapping key ({error}); the previous one stays"
                ),
            }
            scrub_stack();
        }
    }

    /// IMPORT_KEY: the raw hardware key in `raw` wrapped long-term.
    pub fn import_key(&self, raw: &KeyBlob) -> Result<KeyBlob, EngineError> {
        let result = self.import_key_unscrubbed(raw);
        scrub_stack();
        result
    }

    #[inline(never)]
    fn import_key_unscrubbed(&self, raw: &KeyBlob) -> Result<KeyBlob, EngineError> {
        let manager = self.key_manager_for_request()?;
        let key = raw
            .key()
            .ok_or(KeyManagerError::RawKeySize { got: raw.key_size });
        let (blob, hw_key) = self.refusal_counted(key.and_then(|key| manager.import(key)))?;
        self.stats.key_manager.imported.fetch_add(1, Relaxed);
        let fingerprint = self.fingerprinter.fingerprint(&hw_key[..]);
        tracing::debug!(%fingerprint, "hardware key imported (long-term wrapped)");
        Ok(answer_blob(&blob))
    }

    /// GENERATE_KEY: a random hardware key wrapped long-term.
    pub fn generate_key(&self) -> Result<KeyBlob, EngineError> {
        let result = self.generate_key_unscrubbed();
        scrub_stack();
        result
    }

    #[inline(never)]
    fn generate_key_unscrubbed(&self) -> Result<KeyBlob, EngineError> {
        let manager = self.key_manager_for_request()?;
        let (blob, hw_key) = manager.generate();
        self.stats.key_manager.generated.fetch_add(1, Relaxed);
        let fingerprint = self.fingerprinter.fingerprint(&hw_key[..]);
        tracing::debug!(%fingerprint, "hardware key generated (long-term wrapped)");
        Ok(answer_blob(&blob))
    }

    /// PREPARE_KEY: a long-term wrapped key wrapped again, ephemerally.
    pub fn prepare_key(&self, long_term: &KeyBlob) -> Result<KeyBlob, EngineError> {
        let result = self.prepare_key_unscrubbed(long_term);
        scrub_stack();
        result
    }

    #[inline(never)]
    fn prepare_key_unscrubbed(&self, long_term: &KeyBlob) -> Result<KeyBlob, EngineError> {
        let manager = self.key_manager_for_request()?;
        let blob = blob_bytes(long_term.key_size, long_term.key());
        let (blob, hw_key) = self.refusal_counted(blob.and_then(|b| manager.prepare(b)))?;
        self.stats.key_manager.prepared.fetch_add(1, Relaxed);
        let fingerprint = self.fingerprinter.fingerprint(&hw_key[..]);
        tracing::debug!(%fingerprint, "hardware key prepared (ephemerally wrapped)");
        Ok(answer_blob(&blob))
    }

    /// DERIVE_SW_SECRET: the software secret of an ephemerally-wrapped
    /// key.
    pub fn derive_sw_secret(
        &self,
        ephemeral: &KeyBlob,
    ) -> Result<Zeroizing<[u8; SW_SECRET_SIZE]>, EngineError> {
        let result = self.derive_sw_secret_unscrubbed(ephemeral);
        scrub_stack();
        result
    }

    #[inline(never)]
    fn derive_sw_secret_unscrubbed(
        &self,
        ephemeral: &KeyBlob,
    ) -> Result<Zeroizing<[u8; SW_SECRET_SIZE]>, EngineError> {
        let manager = self.key_manager_for_request()?;
        let blob = blob_bytes(ephemeral.key_size, ephemeral.key());
        let secret = self.refusal_counted(blob.and_then(|b| manager.derive_sw_secret(b)))?;
        self.stats.key_manager.derived.fetch_add(1, Relaxed);
        Ok(secret)
    }

    /// Why a hardware-wrapped key request (32..35) cannot be served at
    /// all, whatever its payload: no engine, or no hardware-wrapped keys
    /// in `key_types` (UNSUPP).
    pub fn check_wrapped_keys_offered(&self) -> Result<(), EngineError> {
        self.key_manager_for_request().map(|_| ())
    }

    /// The key manager, or why a hardware-wrapped key request cannot be
    /// served.
    fn key_manager_for_request(&self) -> Result<&KeyManager, EngineError> {
        let caps = self.capabilities.ok_or(EngineError::NoInlineEncryption)?;
        if !caps.key_types.accepts(KeyType::HardwareWrapped) {
            return Err(KeyManagerError::NotOffered.into());
        }
        self.key_manager.as_ref().ok_or(EngineError::KeyMemory {
            errno: libc::ENOMEM,
        })
    }

    /// `result`, counting a refusal by the key manager.
    fn refusal_counted<T>(&self, result: Result<T, KeyManagerError>) -> Result<T, EngineError> {
        result.map_err(|error| {
            self.stats.key_manager.refused.fetch_add(1, Relaxed);
            error.into()
        })
    }

    /// The checks of a CRYPTO_IN/OUT request covering `len` bytes from
    /// byte `offset` of the image. On success returns the key to use;
    /// nothing has been read or written yet.
    pub fn key_for(
        &self,
        msg: &CryptoMsg,
        offset: u64,
        len: u64,
    ) -> Result<Arc<ProgrammedKey>, EngineError> {
        self.capabilities.ok_or(EngineError::NoInlineEncryption)?;
        let key = read(self.slot(msg.slot)?)
            .clone()
            .ok_or(EngineError::SlotEmpty { slot: msg.slot })?;
        let data_unit_size = key.data_unit_size;
        let unit = u64::from(data_unit_size);
        if !offset.is_multiple_of(unit) {
            return Err(EngineError::Misaligned {
                offset,
                data_unit_size,
            });
        }
        if len == 0 || !len.is_multiple_of(unit) {
            return Err(EngineError::PartialDataUnit {
                len,
                data_unit_size,
            });
        }
        if !msg.dun.range_fits(len / unit, key.dun_bytes) {
            return Err(EngineError::DunOverflow {
                dun_bytes: key.dun_bytes,
            });
        }
        self.stats.count_slot_use(msg.slot);
        Ok(key)
    }

    fn slot(&self, index: u32) -> Result<&Slot, EngineError> {
        self.slots
            .get(index as usize)
            .ok_or(EngineError::SlotOutOfRange {
                slot: index,
                slots: self.slots.len() as u16,
            })
    }

    fn trace_evict(
        &self,
        slot: u32,
        evicted: Option<Fingerprint>,
        queue: Option<u16>,
        cause: EvictCause,
    ) {
        tracing::debug!(slot, ?cause, "keyslot evicted");
        if let Some(trace) = &self.trace {
            trace.event(TraceEvent::Evict(EvictEvent {
                slot,
                queue,
                cause,
                fingerprint: evicted.map(|fp| fp.to_string()),
            }));
        }
    }
}

/// The bytes of a blob whose `key_size` is `key_size` (`key`: `None` when
/// it exceeds the key_blob).
fn blob_bytes(key_size: u32, key: Option<&[u8]>) -> Result<&[u8], KeyManagerError> {
    key.ok_or(KeyManagerError::Blob(OpenError::Size { got: key_size }))
}

/// A wrapped key as the answer's key_blob.
fn answer_blob(blob: &[u8]) -> KeyBlob {
    KeyBlob::new(blob).expect("a wrapped key fits a key_blob")
}

/// Poisoning cannot leave a slot half-written (it holds an `Option<Arc>`),
/// so a poisoned lock is used as is.
fn read(slot: &Slot) -> std::sync::RwLockReadGuard<'_, Option<Arc<ProgrammedKey>>> {
    slot.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(slot: &Slot) -> std::sync::RwLockWriteGuard<'_, Option<Arc<ProgrammedKey>>> {
    slot.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::capabilities::ProfileName;
    use crate::engine::xts::Backend;

    fn desc(slot: u32) -> KeyDesc {
        let key: [u8; 64] = core::array::from_fn(|i| i as u8);
        KeyDesc::raw_aes_256_xts(slot, &key, 4096, 8)
    }

    fn msg(slot: u32, dun: u64) -> CryptoMsg {
        CryptoMsg {
            slot,
            reserved: 0,
            dun: Dun::from_u64(dun),
        }
    }

    fn ufs() -> Engine {
        Engine::new(Some(ProfileName::Ufs.capabilities()), None)
    }

    #[test]
    fn program_checks_every_field() {
        let engine = ufs();
        type Mutation = fn(&mut KeyDesc);
        let cases: [(Mutation, EngineError); 8] = [
            (
                |d| d.slot = 32,
                EngineError::SlotOutOfRange {
                    slot: 32,
                    slots: 32,
                },
            ),
            (|d| d.crypto_mode = 0, EngineError::UnsupportedMode(0)),
            (|d| d.crypto_mode = 2, EngineError::UnsupportedMode(2)),
            (|d| d.key_type = 3, EngineError::UnsupportedKeyType(3)),
            (
                |d| d.key_size = 32,
                EngineError::WrongKeySize { got: 32, want: 64 },
            ),
            (
                |d| d.data_unit_size_bits = 13,
                EngineError::UnsupportedDataUnitSize(13),
            ),
            (|d| d.dun_bytes = 0, EngineError::ZeroDunBytes),
            (
                |d| d.dun_bytes = 9,
                EngineError::DunBytesTooLarge { got: 9, max: 8 },
            ),
        ];
        for (mutate, expected) in cases {
            let mut bad = desc(1);
            mutate(&mut bad);
            assert_eq!(engine.program(&bad, 0), Err(expected));
        }
        let mut huge = desc(1);
        huge.key_size = u32::MAX;
        assert!(matches!(
            engine.program(&huge, 0),
            Err(EngineError::WrongKeySize { .. })
        ));
        assert_eq!(engine.stats().slots_programmed.load(Relaxed), 0);
        assert!(engine.program(&desc(31), 0).is_ok());
    }

    #[test]
    fn requests_need_a_programmed_slot_and_whole_aligned_units() {
        let engine = ufs();
        assert!(matches!(
            engine.key_for(&msg(0, 0), 0, 4096),
            Err(EngineError::SlotEmpty { slot: 0 })
        ));
        engine.program(&desc(0), 0).unwrap();
        assert!(engine.key_for(&msg(0, 0), 4096, 8192).is_ok());
        assert!(matches!(
            engine.key_for(&msg(0, 0), 512, 4096),
            Err(EngineError::Misaligned { .. })
        ));
        assert!(matches!(
            engine.key_for(&msg(0, 0), 0, 4095),
            Err(EngineError::PartialDataUnit { .. })
        ));
        assert!(matches!(
            engine.key_for(&msg(0, 0), 0, 0),
            Err(EngineError::PartialDataUnit { .. })
        ));
        assert!(engine.key_for(&msg(0, u64::MAX), 0, 4096).is_ok());
        assert!(matches!(
            engine.key_for(&msg(0, u64::MAX), 0, 8192),
            Err(EngineError::DunOverflow { .. })
        ));
        assert!(matches!(
            engine.key_for(&msg(99, 0), 0, 4096),
            Err(EngineError::SlotOutOfRange { .. })
        ));
        assert_eq!(
            engine.evict(&desc(0), 0),
            Ok(Some(engine.fingerprinter.fingerprint(&desc(0).bytes[..64])))
        );
        assert!(matches!(
            engine.key_for(&msg(0, 0), 0, 4096),
            Err(EngineError::SlotEmpty { .. })
        ));
        assert_eq!(engine.evict(&desc(0), 0), Ok(None));
    }

    #[test]
    fn emmc_limits_duns_to_32_bits() {
        let engine = Engine::new(Some(ProfileName::Emmc.capabilities()), None);
        assert_eq!(
            engine.program(&desc(0), 0),
            Err(EngineError::DunBytesTooLarge { got: 8, max: 4 })
        );
        let mut four = desc(0);
        four.dun_bytes = 4;
        engine.program(&four, 0).unwrap();
        assert!(engine.key_for(&msg(0, u32::MAX as u64), 0, 4096).is_ok());
        assert!(matches!(
            engine.key_for(&msg(0, u32::MAX as u64), 0, 8192),
            Err(EngineError::DunOverflow { .. })
        ));
    }

    #[test]
    fn no_engine_refuses_everything_as_unsupported() {
        let engine = Engine::new(None, None);
        assert_eq!(
            engine.program(&desc(0), 0),
            Err(EngineError::NoInlineEncryption)
        );
        assert_eq!(
            EngineError::NoInlineEncryption.status(),
            crate::protocol::Status::Unsupp
        );
        assert!(engine.key_for(&msg(0, 0), 0, 4096).is_err());
    }

    #[test]
    fn faults_change_the_ciphertext_but_round_trip() {
        let plain: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let encrypt = |fault| {
            let engine = ufs().with_fault(fault);
            engine.program(&desc(0), 0).unwrap();
            let key = engine.key_for(&msg(0, 5), 0, 8192).unwrap();
            let mut data = plain.clone();
            key.crypt(Direction::Encrypt, &mut data, &Dun::from_u64(5));
            let mut back = data.clone();
            key.crypt(Direction::Decrypt, &mut back, &Dun::from_u64(5));
            assert_eq!(back, plain, "{fault:?} must round-trip");
            data
        };
        let correct = encrypt(None);
        assert_ne!(correct, plain);
        assert_eq!(encrypt(Some(Fault::Plaintext)), plain);
        let shifted = encrypt(Some(Fault::DunOffByOne));
        assert_ne!(shifted, correct);
        assert_eq!(
            shifted[..4096],
            correct[4096..],
            "DUN+1 for unit 0 is unit 1's DUN"
        );
        assert_ne!(encrypt(Some(Fault::SwapKeyHalves)), correct);
    }

    /// The stack depth `scrub_stack` covers is measured here: every key
    /// path (program, evict, in place and out of place, one unit, a batch,
    /// a split request) must stay within half of it. And what the cipher
    /// leaves on the stack is gone after the entry points: the `aes`
    /// crate's VAES backends leave broadcast round keys (beginning with the
    /// raw key halves), which the entry points scrub; OpenSSL's XTS and
    /// the engine's VAES code leave none, so the entry points skip the
    /// scrub for their keys. Each backend in turn (where the CPU has it);
    /// a key with equal halves asked of OpenSSL takes the `aes` crate
    /// backend (OpenSSL refuses it), the VAES backend takes it.
    #[test]
    fn key_paths_fit_the_scrubbed_stack_and_leave_no_key_on_it() {
        use crate::engine::xts::tests::NEW_BACKEND;
        let distinct: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xc3);
        let mut equal = distinct;
        equal.copy_within(..32, 32);
        let cases = [
            (distinct, Backend::OpenSsl, Backend::OpenSsl),
            (equal, Backend::OpenSsl, Backend::AesCrate),
            (distinct, Backend::Vaes, Backend::Vaes),
            (equal, Backend::Vaes, Backend::Vaes),
        ];
        for (raw, asked, backend) in cases {
            if !backend.is_available() {
                continue;
            }
            NEW_BACKEND.set(asked);
            key_paths_leave_no_key(&raw, backend);
        }
        NEW_BACKEND.set(Backend::Vaes);
    }

    fn key_paths_leave_no_key(raw: &[u8; 64], backend: Backend) {
        use crate::engine::secure::STACK_SCRUB_BYTES;
        use crate::engine::secure::tests::{left_on_stack, stack_use};
        assert_eq!(XtsKey::new(raw).backend(), backend);
        let desc = KeyDesc::raw_aes_256_xts(0, raw, 4096, 8);
        let needles: Vec<&[u8]> = raw.chunks_exact(16).collect();
        let engine = ufs();
        let mut depths = vec![(
            "program".to_owned(),
            stack_use(&mut || {
                engine.program_unscrubbed(&desc, 0).unwrap();
            }),
        )];
        assert_eq!(
            left_on_stack(
                &mut || {
                    engine.program(&desc, 0).unwrap();
                },
                &needles
            ),
            0,
            "program"
        );
        let key = engine.key_for(&msg(0, 0), 0, 4096).unwrap();
        let source = vec![0x3cu8; 2 << 20];
        let mut data = source.clone();
        for len in [4096, 64 << 10, 2 << 20] {
            for direction in [Direction::Encrypt, Direction::Decrypt] {
                let dun = Dun::from_u64(7);
                let data = &mut data[..len];
                let mut in_place = || key.crypt_at_unscrubbed(direction, data, &dun, 0);
                depths.push((format!("{len} {direction:?}"), stack_use(&mut in_place)));
                let mut in_place = || key.crypt_at(direction, data, &dun, 0);
                let left = left_on_stack(&mut in_place, &needles);
                assert_eq!(left, 0, "{backend:?} {len} {direction:?} in place");
                let source = &source[..len];
                let mut from = || key.crypt_from_unscrubbed(direction, source, data, &dun, 0);
                depths.push((format!("{len} {direction:?} from"), stack_use(&mut from)));
                let mut from = || key.crypt_from(direction, source, data, &dun, 0);
                let left = left_on_stack(&mut from, &needles);
                assert_eq!(left, 0, "{backend:?} {len} {direction:?} out of place");
            }
        }
        // Unscrubbed: the `aes` crate's backends leave the key (the
        // positive control of the checks above), OpenSSL's must not (or
        // skipping the scrub for it is wrong).
        let mut unscrubbed = || {
            for direction in [Direction::Encrypt, Direction::Decrypt] {
                key.crypt_at_unscrubbed(direction, &mut data[..4096], &Dun::from_u64(1), 0);
                key.crypt_from_unscrubbed(
                    direction,
                    &source[..4096],
                    &mut data[..4096],
                    &Dun::from_u64(1),
                    0,
                );
            }
        };
        let left_unscrubbed = left_on_stack(&mut unscrubbed, &needles);
        // The device's request paths scrub through this guard: only (and
        // always) for a backend that leaves key bytes.
        assert_eq!(
            key.scrub_guard().is_some(),
            left_unscrubbed > 0,
            "{backend:?}: scrub guard"
        );
        drop(key);
        depths.push((
            "evict".to_owned(),
            stack_use(&mut || {
                engine.evict_unscrubbed(&desc, 0).unwrap();
            }),
        ));
        eprintln!(
            "{backend:?}: stack use below the entry point: {depths:?}; unscrubbed leftovers {left_unscrubbed}"
        );
        match backend {
            Backend::AesCrate => assert!(
                left_unscrubbed > 0,
                "the aes crate leaves nothing: the check proves nothing"
            ),
            Backend::OpenSsl | Backend::Vaes => {
                assert_eq!(left_unscrubbed, 0, "{backend:?} left key bytes")
            }
        }
        for (path, depth) in depths {
            assert!(
                depth * 2 <= STACK_SCRUB_BYTES,
                "{backend:?} {path} uses {depth} bytes of stack"
            );
        }
    }

    /// A KEYSLOT_PROGRAM of an ephemerally-wrapped key programs the
    /// KDF's inline encryption key (faults apply to it), and a reset makes
    /// the blob stale.
    #[test]
    fn a_wrapped_key_programs_its_inline_key_until_a_reset() {
        use crate::engine::hw_kdf;
        use crate::engine::key_manager::KeyManagerError;
        use crate::engine::wrapped_key::{Kind, OpenError};
        use icelab_contract::device::reject_kind;
        let raw: [u8; 32] = core::array::from_fn(|i| i as u8 ^ 0x3c);
        let wrapped_desc = |engine: &Engine| {
            let long_term = engine
                .import_key(&KeyBlob::new(&raw).unwrap())
                .expect("import");
            let ephemeral = engine.prepare_key(&long_term).expect("prepare");
            let mut desc = KeyDesc::raw_aes_256_xts(0, &[0; 64], 4096, 8);
            desc.key_type = KeyType::HardwareWrapped.to_wire();
            desc.key_size = ephemeral.key_size;
            desc.bytes = ephemeral.bytes;
            (desc, long_term, ephemeral)
        };
        let inline = hw_kdf::inline_encryption_key(&raw);
        let plain = vec![0x42u8; 4096];
        let encrypt = |fault| {
            let engine = ufs().with_fault(fault);
            let (desc, _, _) = wrapped_desc(&engine);
            engine.program(&desc, 0).expect("program a wrapped key");
            let key = engine.key_for(&msg(0, 9), 0, 4096).unwrap();
            let mut data = plain.clone();
            key.crypt(Direction::Encrypt, &mut data, &Dun::from_u64(9));
            data
        };
        let reference = |key: &[u8; 64], dun| {
            let mut data = plain.clone();
            XtsKey::new(key).crypt(Direction::Encrypt, &mut data, 4096, dun);
            data
        };
        assert_eq!(encrypt(None), reference(&inline, 9));
        assert_eq!(encrypt(Some(Fault::DunOffByOne)), reference(&inline, 10));
        let mut swapped = *inline;
        swapped.rotate_left(32);
        assert_eq!(encrypt(Some(Fault::SwapKeyHalves)), reference(&swapped, 9));
        assert_eq!(encrypt(Some(Fault::Plaintext)), plain);

        let engine = ufs();
        let (desc, long_term, ephemeral) = wrapped_desc(&engine);
        assert_eq!(
            engine.derive_sw_secret(&ephemeral).expect("derive"),
            hw_kdf::software_secret(&raw)
        );
        let mut long_term_desc = desc.clone();
        long_term_desc.bytes = long_term.bytes;
        let refused = engine.program(&long_term_desc, 0).unwrap_err();
        assert_eq!(refused.kind(), reject_kind::WRAPPED_KEY_WRONG_KIND);
        assert_eq!(
            refused,
            EngineError::KeyManager(KeyManagerError::Blob(OpenError::WrongKind {
                wanted: Kind::Ephemeral,
                got: Kind::LongTerm
            }))
        );
        engine.program(&desc, 0).expect("program");
        engine.reset();
        assert!(matches!(
            engine.key_for(&msg(0, 0), 0, 4096),
            Err(EngineError::SlotEmpty { .. })
        ));
        let stale = engine.program(&desc, 0).unwrap_err();
        assert_eq!(stale.kind(), reject_kind::WRAPPED_KEY_STALE);
        assert_eq!(stale.status(), crate::protocol::Status::IoErr);
        assert_eq!(
            engine.derive_sw_secret(&ephemeral).unwrap_err().kind(),
            reject_kind::WRAPPED_KEY_STALE
        );
        // The long-term blob prepares again after the reset.
        let fresh = engine.prepare_key(&long_term).expect("prepare again");
        assert_ne!(fresh, ephemeral);
        let counters = engine.counters().key_manager;
        assert_eq!(
            (counters.imported, counters.prepared, counters.derived),
            (1, 2, 1)
        );
        assert_eq!((counters.programmed, counters.refused), (1, 3));

        let raw_only = Engine::new(Some(ProfileName::Emmc.capabilities()), None);
        assert_eq!(
            raw_only.generate_key().unwrap_err(),
            EngineError::KeyManager(KeyManagerError::NotOffered)
        );
        assert_eq!(
            raw_only.program(&desc, 0),
            Err(EngineError::UnsupportedKeyType(2))
        );
    }

    /// The key manager's paths leave neither the hardware key nor the
    /// inline encryption key on the stack.
    #[test]
    fn wrapped_key_paths_leave_no_key_on_the_stack() {
        use crate::engine::hw_kdf;
        use crate::engine::secure::tests::left_on_stack;
        let raw: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(29) ^ 0x96);
        let inline = hw_kdf::inline_encryption_key(&raw);
        let mut needles: Vec<&[u8]> = raw.chunks_exact(16).collect();
        needles.extend(inline.chunks_exact(16));
        let engine = ufs();
        let raw_blob = KeyBlob::new(&raw).unwrap();
        let long_term = engine.import_key(&raw_blob).unwrap();
        let ephemeral = engine.prepare_key(&long_term).unwrap();
        let mut desc = KeyDesc::raw_aes_256_xts(0, &[0; 64], 4096, 8);
        desc.key_type = KeyType::HardwareWrapped.to_wire();
        desc.key_size = ephemeral.key_size;
        desc.bytes = ephemeral.bytes;
        type Run<'a> = Box<dyn FnMut() + 'a>;
        let mut runs: Vec<(&str, Run<'_>)> = vec![
            ("import", Box::new(|| drop(engine.import_key(&raw_blob)))),
            ("prepare", Box::new(|| drop(engine.prepare_key(&long_term)))),
            (
                "derive",
                Box::new(|| drop(engine.derive_sw_secret(&ephemeral))),
            ),
            (
                "program",
                Box::new(|| {
                    engine.program(&desc, 0).expect("program");
                }),
            ),
            ("generate", Box::new(|| drop(engine.generate_key()))),
        ];
        for (name, run) in &mut runs {
            assert_eq!(left_on_stack(run.as_mut(), &needles), 0, "{name}");
        }
    }

    #[test]
    fn reprogramming_replaces_the_key() {
        let engine = ufs();
        engine.program(&desc(0), 0).unwrap();
        let before = engine.key_for(&msg(0, 0), 0, 4096).unwrap().fingerprint;
        let mut other = desc(0);
        other.bytes[0] ^= 1;
        engine.program(&other, 1).unwrap();
        let after = engine.key_for(&msg(0, 0), 0, 4096).unwrap().fingerprint;
        assert_ne!(before, after);
        engine.evict_all();
        assert!(engine.key_for(&msg(0, 0), 0, 4096).is_err());
    }
}
