//! The manifest: what the guest knows and the host cannot read from the
//! image. Its types are the contract's ([`icelab_contract::manifest`]):
//! the guest writes them, the host merges them, the verifier reads them.
//! The schema is documented in verifier/README.md.

pub use icelab_contract::manifest::*;
