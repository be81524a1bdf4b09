//! The virtio-blk configuration space as read with GET_CONFIG: the
//! protocol crate's [`BlockConfig`], parsed by the same code that the
//! device encodes with (`docs/PROTOCOL.md`, "Configuration space").

pub use icelab_protocol::{BlockConfig as ConfigSpace, CryptoCapabilities as CryptoConfig};
