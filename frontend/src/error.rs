//! The frontend's one error type.
//!
//! Every message says what failed and whose fault it is: the backend (it
//! broke the vhost-user or virtio contract, or did not answer in time),
//! the caller (it asked for something impossible), or the host (a system
//! call failed).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias for the frontend.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while driving a vhost-user-blk backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend's socket could not be reached.
    #[error("cannot connect to the vhost-user backend at {path} (is the backend running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// A vhost-user message failed: the backend refused it (REPLY_ACK with
    /// a non-zero status), answered malformed, did not answer within the
    /// socket timeout, or closed the socket.
    #[error("vhost-user {request} failed (backend refused it, answered badly or went away)")]
    Vhost {
        /// The request, as named by the vhost-user specification.
        request: &'static str,
        /// Cause.
        #[source]
        source: vhost::Error,
    },

    /// The backend did not answer a vhost-user message in time; the
    /// frontend shut the session down.
    #[error("backend did not answer vhost-user {request} within {waited:?}; session shut down")]
    BackendTimeout {
        /// The request, as named by the vhost-user specification.
        request: &'static str,
        /// How long the frontend waited.
        waited: Duration,
    },

    /// The backend declined a request the protocol lets it decline.
    #[error("backend refused vhost-user {request} ({what})")]
    BackendRefused {
        /// The request.
        request: &'static str,
        /// What was asked.
        what: String,
    },

    /// The backend lacks something the frontend cannot do without.
    #[error("backend does not offer {what}")]
    BackendLacks {
        /// What is missing.
        what: String,
    },

    /// The backend answered something the specification does not allow.
    #[error("backend bug: {what}")]
    BackendBug {
        /// What the backend did.
        what: String,
    },

    /// The backend closed its end of the vhost-user socket.
    #[error("queue {queue}: the backend closed the vhost-user socket (did it crash?)")]
    Disconnected {
        /// Queue that noticed.
        queue: u16,
    },

    /// No used element arrived in time.
    #[error(
        "queue {queue}: backend completed nothing within {waited:?} ({in_flight} chain(s) in flight)"
    )]
    Timeout {
        /// Queue index.
        queue: u16,
        /// How long the frontend waited.
        waited: Duration,
        /// Chains the backend still owes.
        in_flight: usize,
    },

    /// A request completed with a status other than OK (see
    /// [`crate::blk::Completion::ok`]).
    #[error("{request} completed with status {status} (expected OK 0)")]
    RequestFailed {
        /// The request type.
        request: icelab_protocol::RequestType,
        /// The raw status byte (0xff: the device never wrote it).
        status: u8,
    },

    /// The caller asked for something the frontend cannot do.
    #[error("invalid use of the frontend: {0}")]
    InvalidArgument(String),

    /// Not enough free descriptors for a chain.
    #[error(
        "queue {queue}: chain needs {needed} descriptor(s), only {free} free (caller exceeded the queue depth)"
    )]
    QueueFull {
        /// Queue index.
        queue: u16,
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },

    /// The guest memory allocator has no room left.
    #[error(
        "frontend guest memory exhausted: {requested} bytes requested, {free} free in total (raise FrontendOptions::memory_size)"
    )]
    OutOfGuestMemory {
        /// Bytes asked for.
        requested: u64,
        /// Free bytes in total (possibly fragmented).
        free: u64,
    },

    /// Reading or writing the frontend's own guest memory failed.
    #[error("frontend guest memory access at {addr:#x}+{len} failed")]
    GuestMemory {
        /// Guest physical address.
        addr: u64,
        /// Length of the access.
        len: usize,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },

    /// Creating or mapping the memfd for guest memory failed.
    #[error("cannot create the frontend's guest memory ({what})")]
    MemorySetup {
        /// What step failed.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// A host system call failed (eventfd, poll, socket options).
    #[error("host system call failed: {what}")]
    Host {
        /// What the frontend was doing.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}
