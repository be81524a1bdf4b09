//! icelab's emulator: a model of a storage controller's inline crypto
//! engine (ICE) and the vhost-user-blk device that exposes it to a guest.
//!
//! - [`protocol`]: the virtio-blk wire format with the inline-encryption
//!   extension, re-exported from the `icelab-protocol` crate;
//! - [`engine`]: keyslots, capabilities, AES-256-XTS per data unit, stats;
//! - [`device`]: the vhost-user-blk backend serving an image file.

pub mod device;
pub mod engine;
pub use icelab_protocol as protocol;
