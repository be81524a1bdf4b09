//! The vhost-user-blk device that exposes the engine to a guest.

pub mod backend;
pub mod chain;
pub mod default_key;
pub mod error;
pub mod guest_io;
pub mod image;
pub mod mapped_io;
pub mod mapping;
pub mod page_set;
pub mod refusal_log;
pub mod request;
pub mod sigbus;
#[cfg(test)]
mod tests;

pub use backend::{BlockDevice, DeviceConfig, GuestMemory};
pub use error::RequestError;
pub use image::{Image, ImageError, ImageOptions, Preallocate};
