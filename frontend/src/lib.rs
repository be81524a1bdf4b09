//! A native vhost-user frontend: drives a vhost-user-blk backend over its
//! unix socket with no VM, for integration tests and benchmarks.
//!
//! The frontend plays both QEMU (the vhost-user session: features, memory
//! table, rings) and the guest driver (split virtqueues in memfd-backed
//! guest memory, virtio-blk requests). Modules, one job each:
//!
//! - [`memory`]: guest memory shared with the backend, and its allocator;
//! - [`vring`]: split virtqueue layout (VIRTIO 1.2 §2.7);
//! - [`chain`]: descriptor chains, well-formed or deliberately not;
//! - [`connection`]: the vhost-user handshake, [`Frontend`];
//! - [`queue`]: the driver of one virtqueue, [`Queue`];
//! - [`blk`]: virtio-blk requests and [`BlkQueue`];
//! - [`error`]: the one error type.
//!
//! ```no_run
//! use std::time::Duration;
//! use icelab_frontend::{BlkQueue, Frontend, FrontendOptions, Request};
//!
//! # fn main() -> icelab_frontend::Result<()> {
//! let mut frontend = Frontend::connect("/tmp/icelab.sock", &FrontendOptions::default())?;
//! let capacity = frontend.block_config()?.capacity_sectors;
//! let mut queue = BlkQueue::new(frontend.take_queues().remove(0))?;
//! let timeout = Duration::from_secs(5);
//! queue.submit_and_wait(&Request::write(0, vec![0xab; 4096]), timeout)?.ok()?;
//! let read = queue.submit_and_wait(&Request::read(0, 4096), timeout)?.ok()?;
//! assert_eq!(read.data, vec![0xab; 4096]);
//! # let _ = capacity;
//! # Ok(())
//! # }
//! ```

mod allocator;
pub mod blk;
pub mod chain;
pub mod connection;
pub mod error;
pub mod memory;
pub mod queue;
pub mod vring;

pub use blk::{BlkQueue, Completion, ConfigSpace, Request, Tag};
pub use chain::{RawDescriptor, RawNext, Segment};
pub use connection::{FRONTEND_FEATURES, Frontend, FrontendOptions};
pub use error::{Error, Result};
pub use memory::{GuestBuffer, SharedMemory};
pub use queue::{Queue, QueueStats, UsedElement};
