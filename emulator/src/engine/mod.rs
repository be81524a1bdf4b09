//! The inline crypto engine model, independent of any transport.
//!
//! Vocabulary follows the kernel's blk-crypto: a *crypto profile*
//! ([`Capabilities`]) says what the engine supports; a *keyslot* holds a
//! programmed key; each request names a keyslot and the *DUN* (data unit
//! number) of its first *data unit*.

pub mod capabilities;
pub mod error;
pub mod fault;
pub mod fingerprint;
pub mod hw_kdf;
pub mod keyslots;
pub mod secure;
pub mod stats;
pub mod trace;
pub mod usage;
pub mod xts;

pub use capabilities::{Capabilities, KeyTypes, ProfileName};
pub use error::EngineError;
pub use fault::{Fault, UnknownFault};
pub use fingerprint::{Fingerprint, Fingerprinter};
pub use keyslots::{Engine, ProgrammedKey};
pub use secure::{HardeningReport, SecureMemoryError, harden_process, scrub_stack};
pub use stats::Stats;
pub use trace::Trace;
