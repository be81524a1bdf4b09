//! The inline crypto engine model, independent of any transport.
//!
//! Vocabulary follows the kernel's blk-crypto: a *crypto profile*
//! ([`Capabilities`]) says what the engine supports; a *keyslot* holds a
//! programmed key; each request names a keyslot and the *DUN* (data unit
//! number) of its first *data unit*. Engines that accept hardware-wrapped
//! keys have a *key manager* ([`key_manager`]): the keys it programs are
//! derived inside from wrapped blobs ([`hw_kdf`], [`wrapped_key`]).

pub mod capabilities;
pub mod device_secret;
pub mod error;
pub mod fault;
pub mod fingerprint;
pub mod hw_kdf;
pub mod key_manager;
pub mod keyslots;
pub mod secure;
pub mod stats;
pub mod trace;
pub mod usage;
pub mod wrapped_key;
pub mod xts;

pub use capabilities::{Capabilities, KeyTypes, ProfileName};
pub use device_secret::DeviceSecret;
pub use error::EngineError;
pub use fault::{Fault, UnknownFault};
pub use fingerprint::{Fingerprint, Fingerprinter};
pub use key_manager::{KeyManager, KeyManagerError};
pub use keyslots::{Engine, ProgrammedKey};
pub use secure::{HardeningReport, SecureMemoryError, harden_process, scrub_stack};
pub use stats::Stats;
pub use trace::Trace;
