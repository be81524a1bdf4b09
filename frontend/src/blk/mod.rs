//! virtio-blk on top of the queue driver (VIRTIO 1.2 §5.2, plus the
//! draft's inline-encryption requests).
//!
//! - [`config`]: the config space read with GET_CONFIG;
//! - [`request`]: typed request builders and completions;
//! - [`driver`]: [`BlkQueue`], pipelined submit and reap with latencies.

pub mod config;
pub mod driver;
pub mod request;

pub use config::{ConfigSpace, CryptoConfig};
pub use driver::BlkQueue;
pub use request::{Completion, PreparedRequest, Request, STATUS_NOT_WRITTEN, Tag, key_blob};
