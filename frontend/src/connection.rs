//! The vhost-user session: connect, negotiate, share memory, set up rings.
//!
//! The handshake follows what QEMU's vhost-user-blk does, in the order of
//! the vhost-user specification ("Starting and stopping rings"):
//!
//! 1. SET_OWNER, GET_FEATURES;
//! 2. when VHOST_USER_F_PROTOCOL_FEATURES is offered:
//!    GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES (MQ, CONFIG and, if
//!    wanted, REPLY_ACK), then GET_QUEUE_NUM when MQ was accepted;
//! 3. SET_FEATURES with the virtio features the caller acks;
//! 4. SET_MEM_TABLE with the one memfd region of [`SharedMemory`];
//! 5. per queue: SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR,
//!    SET_VRING_CALL, SET_VRING_KICK, and SET_VRING_ENABLE 1 when protocol
//!    features were negotiated (rings then start disabled). With
//!    VIRTIO_BLK_F_CTRL_VQ acked, the control queue follows the request
//!    queues (docs/PROTOCOL.md, "Virtqueues").
//!
//! With REPLY_ACK every later message asks for an acknowledgement, so a
//! backend refusing, say, the memory table fails the handshake there
//! instead of silently later.
//!
//! A backend that stops answering is an error, never a hang. The `vhost`
//! crate retries a socket read that times out (EAGAIN) forever, so a
//! socket timeout alone does not help; instead every message runs under a
//! watchdog that shuts the socket down when the answer is late, which
//! makes the pending read fail. The session is then over, as it would be
//! with QEMU.
//!
//! GET_CONFIG is sent by this module itself rather than through the
//! `vhost` crate: backends built on libvhost-user (qemu-storage-daemon)
//! refuse a read past their config struct with a bare header of size 0,
//! which the crate waits on for the payload it expected.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use icelab_protocol::{
    CONFIG_SIZE, CONFIG_SIZE_STANDARD, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CTRL_VQ, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_INLINE_ENCRYPTION,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, feature,
};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend as VhostFrontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};

use crate::blk::{BlkQueue, ConfigSpace};
use crate::error::{Error, Result};
use crate::memory::{DEFAULT_MEMORY_SIZE, SharedMemory};
use crate::queue::{Link, Queue};
use crate::vring::is_valid_queue_size;

/// Every virtio feature this frontend knows how to drive: VERSION_1, the
/// virtio-blk features of VIRTIO 1.2 §5.2.3 it understands, the draft's
/// control queue (bit 22) and inline encryption (bit 23), indirect
/// descriptors, event index, and vhost-user's protocol-features bit.
pub const FRONTEND_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_BLK_F_SIZE_MAX)
    | feature(VIRTIO_BLK_F_SEG_MAX)
    | feature(VIRTIO_BLK_F_RO)
    | feature(VIRTIO_BLK_F_BLK_SIZE)
    | feature(VIRTIO_BLK_F_FLUSH)
    | feature(VIRTIO_BLK_F_TOPOLOGY)
    | feature(VIRTIO_BLK_F_MQ)
    | feature(VIRTIO_BLK_F_DISCARD)
    | feature(VIRTIO_BLK_F_WRITE_ZEROES)
    | feature(VIRTIO_BLK_F_CTRL_VQ)
    | feature(VIRTIO_BLK_F_INLINE_ENCRYPTION)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VHOST_USER_F_PROTOCOL_FEATURES);

/// Default queue size (QEMU's vhost-user-blk default).
pub const DEFAULT_QUEUE_SIZE: u16 = 128;

/// How to set up the session.
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// Guest memory in bytes, a multiple of 4096. Default 64 MiB.
    pub memory_size: u64,
    /// Entries per virtqueue, a power of two. Default 128.
    pub queue_size: u16,
    /// Request queues to set up; `None` means all the backend reports (1
    /// when it does not negotiate MQ; less the control queue when
    /// VIRTIO_BLK_F_CTRL_VQ is acked). The control queue comes on top.
    pub num_queues: Option<u16>,
    /// Exactly the virtio features to send in SET_FEATURES, offered or not.
    /// `None` means every offered feature in [`FRONTEND_FEATURES`], minus
    /// `without_features`.
    pub features: Option<u64>,
    /// Features to leave out of the default set, e.g.
    /// `feature(VIRTIO_RING_F_EVENT_IDX)`.
    pub without_features: u64,
    /// Negotiate REPLY_ACK (when offered) and ask for an acknowledgement
    /// of every message. Default true.
    pub reply_ack: bool,
    /// Longest wait for any vhost-user answer; past it the session is
    /// shut down and the call fails. Default 10 s.
    pub socket_timeout: Duration,
    /// How long to retry connecting while the socket does not exist yet or
    /// refuses, for a backend that is still starting. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        Self {
            memory_size: DEFAULT_MEMORY_SIZE,
            queue_size: DEFAULT_QUEUE_SIZE,
            num_queues: None,
            features: None,
            without_features: 0,
            reply_ack: true,
            socket_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A negotiated vhost-user session with its guest memory and queues.
///
/// The socket stays open while the `Frontend` or any queue taken from it
/// lives; the backend sees the disconnect when the last of them is
/// dropped.
pub struct Frontend {
    session: Session,
    memory: SharedMemory,
    offered_features: u64,
    acked_features: u64,
    offered_protocol_features: VhostUserProtocolFeatures,
    acked_protocol_features: VhostUserProtocolFeatures,
    backend_queue_num: Option<u64>,
    num_queues: u16,
    /// Request queues, then the control queue when CTRL_VQ was acked.
    queues: Vec<Option<Queue>>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field(
                "offered_features",
                &format_args!("{:#x}", self.offered_features),
            )
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("protocol_features", &self.acked_protocol_features)
            .field("num_queues", &self.num_queues)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

/// The vhost-user connection plus what guards it.
struct Session {
    vhost: VhostFrontend,
    /// A second handle on the socket: the watchdog shuts it down, queues
    /// poll it for hang-up, GET_CONFIG talks through it.
    socket: Arc<UnixStream>,
    timeout: Duration,
}

impl Session {
    /// Runs one vhost-user exchange under the watchdog.
    fn call<T>(
        &mut self,
        request: &'static str,
        exchange: impl FnOnce(&mut VhostFrontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let vhost = &mut self.vhost;
        watchdog(&self.socket, self.timeout, request, || {
            exchange(vhost).map_err(|source| Error::Vhost { request, source })
        })
    }
}

/// Runs `exchange`; if it has not returned after `timeout`, shuts the
/// socket down so that its blocked read or write fails, and reports a
/// timeout.
fn watchdog<T>(
    socket: &UnixStream,
    timeout: Duration,
    request: &'static str,
    exchange: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let fired = AtomicBool::new(false);
    let (done, wait) = mpsc::channel::<()>();
    let result = std::thread::scope(|scope| {
        let fired = &fired;
        scope.spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                fired.store(true, Ordering::SeqCst);
                // Nothing to do if it fails: the socket is already gone.
                let _ = socket.shutdown(Shutdown::Both);
            }
        });
        let result = exchange();
        drop(done);
        result
    });
    if fired.load(Ordering::SeqCst) {
        return Err(Error::BackendTimeout {
            request,
            waited: timeout,
        });
    }
    result
}

/// vhost-user request code of GET_CONFIG.
const VHOST_USER_GET_CONFIG: u32 = 24;
/// Header flags: protocol version 1.
const VHOST_USER_VERSION: u32 = 0x1;
/// Header flags: this is a reply.
const VHOST_USER_REPLY: u32 = 0x4;
/// Largest config space vhost-user transfers (VHOST_USER_CONFIG_SIZE).
const MAX_CONFIG_SIZE: u32 = 256;

/// GET_CONFIG over `socket`: header (request, flags, size), then the
/// body (offset, size, flags) and `len` bytes of payload; the reply has
/// the same shape, or size 0 when the backend refuses.
fn get_config_raw(mut socket: &UnixStream, offset: u32, len: u32) -> Result<Vec<u8>> {
    let io = |source| Error::Host {
        what: "GET_CONFIG on the vhost-user socket",
        source,
    };
    let mut message = Vec::with_capacity(24 + len as usize);
    for word in [
        VHOST_USER_GET_CONFIG,
        VHOST_USER_VERSION,
        12 + len,
        offset,
        len,
        0,
    ] {
        message.extend_from_slice(&word.to_le_bytes());
    }
    message.resize(24 + len as usize, 0);
    socket.write_all(&message).map_err(io)?;

    let mut header = [0u8; 12];
    socket.read_exact(&mut header).map_err(io)?;
    let word = |bytes: &[u8], index: usize| {
        u32::from_le_bytes([
            bytes[4 * index],
            bytes[4 * index + 1],
            bytes[4 * index + 2],
            bytes[4 * index + 3],
        ])
    };
    let (request, flags, size) = (word(&header, 0), word(&header, 1), word(&header, 2));
    if request != VHOST_USER_GET_CONFIG || flags & VHOST_USER_REPLY == 0 {
        return Err(Error::BackendBug {
            what: format!("GET_CONFIG answered with request {request}, flags {flags:#x}"),
        });
    }
    if size == 0 {
        return Err(Error::BackendRefused {
            request: "GET_CONFIG",
            what: format!("{len} bytes at offset {offset}"),
        });
    }
    if size != 12 + len {
        return Err(Error::BackendBug {
            what: format!("GET_CONFIG of {len} bytes answered with a {size}-byte body"),
        });
    }
    let mut reply = vec![0u8; size as usize];
    socket.read_exact(&mut reply).map_err(io)?;
    if word(&reply, 0) != offset || word(&reply, 1) != len {
        return Err(Error::BackendBug {
            what: format!(
                "GET_CONFIG of {len} bytes at {offset} answered for {} bytes at {}",
                word(&reply, 1),
                word(&reply, 0)
            ),
        });
    }
    reply.drain(..12);
    Ok(reply)
}

impl Frontend {
    /// Connects to the backend listening on `socket`, negotiates, shares
    /// guest memory and starts every queue. The queues are then taken with
    /// [`Frontend::take_queues`].
    pub fn connect(socket: impl AsRef<Path>, options: &FrontendOptions) -> Result<Self> {
        if !is_valid_queue_size(options.queue_size) {
            return Err(Error::InvalidArgument(format!(
                "queue size {} is not a power of two up to 32768",
                options.queue_size
            )));
        }
        let memory = SharedMemory::new(options.memory_size)?;
        let stream = connect_with_retry(socket.as_ref(), options.connect_timeout)?;
        let socket = Arc::new(stream.try_clone().map_err(|source| Error::Host {
            what: "dup of the vhost-user socket",
            source,
        })?);
        let initial_queues = u64::from(options.num_queues.unwrap_or(1).max(1));
        let mut session = Session {
            vhost: VhostFrontend::from_stream(stream, initial_queues),
            socket,
            timeout: options.socket_timeout,
        };

        session.call("SET_OWNER", |v| v.set_owner())?;
        let offered_features = session.call("GET_FEATURES", |v| v.get_features())?;

        let mut offered_protocol_features = VhostUserProtocolFeatures::empty();
        let mut acked_protocol_features = VhostUserProtocolFeatures::empty();
        let mut backend_queue_num = None;
        if offered_features & feature(VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
            offered_protocol_features =
                session.call("GET_PROTOCOL_FEATURES", |v| v.get_protocol_features())?;
            let mut wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG;
            if options.reply_ack {
                wanted |= VhostUserProtocolFeatures::REPLY_ACK;
            }
            acked_protocol_features = offered_protocol_features & wanted;
            session.call("SET_PROTOCOL_FEATURES", |v| {
                v.set_protocol_features(acked_protocol_features)
            })?;
            if acked_protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                session.vhost.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if acked_protocol_features.contains(VhostUserProtocolFeatures::MQ) {
                backend_queue_num = Some(session.call("GET_QUEUE_NUM", |v| v.get_queue_num())?);
            }
        }

        let acked_features = options
            .features
            .unwrap_or(offered_features & FRONTEND_FEATURES & !options.without_features);
        let control_queues = u16::from(acked_features & feature(VIRTIO_BLK_F_CTRL_VQ) != 0);
        let num_queues = match (options.num_queues, backend_queue_num) {
            (Some(0), _) => {
                return Err(Error::InvalidArgument("zero queues requested".into()));
            }
            (Some(wanted), Some(offered)) if u64::from(wanted + control_queues) > offered => {
                return Err(Error::BackendLacks {
                    what: format!(
                        "{wanted} request queues and {control_queues} control queue \
                         (GET_QUEUE_NUM says {offered})"
                    ),
                });
            }
            (Some(wanted), _) => wanted,
            (None, Some(offered)) => u16::try_from(offered)
                .unwrap_or(u16::MAX)
                .saturating_sub(control_queues)
                .max(1),
            (None, None) => 1,
        };
        session.call("SET_FEATURES", |v| v.set_features(acked_features))?;

        let region = memory.region_info()?;
        session.call("SET_MEM_TABLE", |v| v.set_mem_table(&[region]))?;

        let link = Link {
            _session: session.vhost.clone(),
            socket: Arc::clone(&session.socket),
        };
        let event_idx = acked_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        let indirect_desc = acked_features & feature(VIRTIO_RING_F_INDIRECT_DESC) != 0;
        let protocol = acked_features & feature(VHOST_USER_F_PROTOCOL_FEATURES) != 0;
        let mut queues = Vec::with_capacity(usize::from(num_queues + control_queues));
        for index in 0..num_queues + control_queues {
            let queue = Queue::new(
                index,
                options.queue_size,
                memory.clone(),
                event_idx,
                indirect_desc,
                link.clone(),
            )?;
            start_queue(&mut session, &memory, &queue, protocol)?;
            queues.push(Some(queue));
        }

        Ok(Self {
            session,
            memory,
            offered_features,
            acked_features,
            offered_protocol_features,
            acked_protocol_features,
            backend_queue_num,
            num_queues,
            queues,
        })
    }

    /// The guest memory shared with the backend.
    pub fn memory(&self) -> &SharedMemory {
        &self.memory
    }

    /// Virtio features the backend offered (GET_FEATURES).
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Virtio features sent in SET_FEATURES.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// True when feature `bit` was acked.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & feature(bit) != 0
    }

    /// Protocol features the backend offered.
    pub fn offered_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.offered_protocol_features
    }

    /// Protocol features sent in SET_PROTOCOL_FEATURES.
    pub fn acked_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.acked_protocol_features
    }

    /// What GET_QUEUE_NUM answered, when MQ was negotiated.
    pub fn backend_queue_num(&self) -> Option<u64> {
        self.backend_queue_num
    }

    /// Number of request queues set up (the control queue not counted).
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Index of the control queue, when VIRTIO_BLK_F_CTRL_VQ was acked.
    pub fn control_queue_index(&self) -> Option<u16> {
        self.has_feature(VIRTIO_BLK_F_CTRL_VQ)
            .then(|| icelab_protocol::control_queue_index(self.num_queues))
    }

    /// Reads `len` bytes of the device config space at `offset`
    /// (GET_CONFIG; needs the CONFIG protocol feature). A backend that
    /// refuses (e.g. a read past its config struct) gives
    /// [`Error::BackendRefused`] and the session stays usable.
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        if !self
            .acked_protocol_features
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::BackendLacks {
                what: "the CONFIG protocol feature".into(),
            });
        }
        if len == 0
            || offset
                .checked_add(len)
                .is_none_or(|end| end > MAX_CONFIG_SIZE)
        {
            return Err(Error::InvalidArgument(format!(
                "GET_CONFIG of {len} bytes at {offset}: vhost-user carries 1 to {MAX_CONFIG_SIZE} bytes"
            )));
        }
        let socket = Arc::clone(&self.session.socket);
        // `&mut self` guarantees no other message is in flight on the
        // socket: queues never send vhost-user messages.
        watchdog(&socket, self.session.timeout, "GET_CONFIG", || {
            get_config_raw(&socket, offset, len)
        })
    }

    /// Reads and parses the virtio-blk config space. Backends refuse
    /// reads past their own config struct, so this asks for the draft's
    /// 104 bytes when inline encryption was negotiated, else 96 (VIRTIO
    /// 1.2 with zoned fields), falling back to the shorter layouts of
    /// older backends (72, then 60 bytes).
    pub fn block_config(&mut self) -> Result<ConfigSpace> {
        let mut lengths = vec![CONFIG_SIZE_STANDARD, 72, 60];
        if self.has_feature(VIRTIO_BLK_F_INLINE_ENCRYPTION) {
            lengths.insert(0, CONFIG_SIZE);
        }
        let mut last_error = None;
        for len in lengths {
            // Lengths are the constants above, far below u32::MAX.
            match self.get_config(0, len as u32) {
                Ok(bytes) => return Ok(ConfigSpace::parse(&bytes)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::BackendLacks {
            what: "a config space".into(),
        }))
    }

    /// Takes every request queue not yet taken, in index order (not the
    /// control queue: see [`Frontend::take_control_queue`]). Each is
    /// `Send` and can be driven from its own thread.
    pub fn take_queues(&mut self) -> Vec<Queue> {
        self.queues
            .iter_mut()
            .take(usize::from(self.num_queues))
            .filter_map(Option::take)
            .collect()
    }

    /// Takes every request queue not yet taken, each wrapped in a
    /// [`BlkQueue`].
    pub fn take_blk_queues(&mut self) -> Result<Vec<BlkQueue>> {
        self.take_queues().into_iter().map(BlkQueue::new).collect()
    }

    /// Takes the control queue, if VIRTIO_BLK_F_CTRL_VQ was acked and it
    /// was not taken yet.
    pub fn take_control_queue(&mut self) -> Option<Queue> {
        self.take_queue(self.control_queue_index()?)
    }

    /// Takes queue `index`, if it exists and was not taken yet.
    pub fn take_queue(&mut self, index: u16) -> Option<Queue> {
        self.queues
            .get_mut(usize::from(index))
            .and_then(Option::take)
    }

    /// Sends messages this type does not wrap (negative tests: bad ring
    /// addresses, GET_VRING_BASE, ...) through the `vhost` crate, under the
    /// same watchdog as the handshake. `request` names the message in
    /// errors.
    pub fn vhost_request<T>(
        &mut self,
        request: &'static str,
        exchange: impl FnOnce(&mut VhostFrontend) -> vhost::Result<T>,
    ) -> Result<T> {
        self.session.call(request, exchange)
    }

    /// True while the backend keeps its end of the socket open.
    pub fn backend_alive(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&*self.session.socket),
            events: libc::POLLRDHUP,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one initialised pollfd that
        // outlives the call; a zero timeout makes the call non-blocking.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        ready == 0 || fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) == 0
    }
}

/// Connects, retrying while the backend has not created or is not yet
/// listening on the socket.
fn connect_with_retry(path: &Path, patience: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + patience;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(Error::Connect {
                    path: PathBuf::from(path),
                    source,
                });
            }
        }
    }
}

/// Tells the backend where queue `queue` lives and starts it.
fn start_queue(
    session: &mut Session,
    memory: &SharedMemory,
    queue: &Queue,
    protocol_features: bool,
) -> Result<()> {
    let index = usize::from(queue.index());
    let layout = queue.layout();
    session.call("SET_VRING_NUM", |v| v.set_vring_num(index, layout.size))?;
    session.call("SET_VRING_BASE", |v| v.set_vring_base(index, 0))?;
    let config = VringConfigData {
        queue_max_size: layout.size,
        queue_size: layout.size,
        flags: 0,
        desc_table_addr: memory.user_address(layout.desc_table)?,
        used_ring_addr: memory.user_address(layout.used_ring)?,
        avail_ring_addr: memory.user_address(layout.avail_ring)?,
        log_addr: None,
    };
    session.call("SET_VRING_ADDR", |v| v.set_vring_addr(index, &config))?;
    session.call("SET_VRING_CALL", |v| {
        v.set_vring_call(index, queue.call_fd())
    })?;
    session.call("SET_VRING_KICK", |v| {
        v.set_vring_kick(index, queue.kick_fd())
    })?;
    if protocol_features {
        session.call("SET_VRING_ENABLE", |v| v.set_vring_enable(index, true))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_with_silent_peer(timeout: Duration) -> (Session, UnixStream) {
        let (ours, peer) = UnixStream::pair().expect("socketpair");
        let socket = Arc::new(ours.try_clone().expect("dup"));
        (
            Session {
                vhost: VhostFrontend::from_stream(ours, 1),
                socket,
                timeout,
            },
            peer,
        )
    }

    #[test]
    fn a_silent_backend_is_a_timeout_not_a_hang() {
        let (mut session, _peer) = session_with_silent_peer(Duration::from_millis(200));
        let started = Instant::now();
        let error = session
            .call("GET_FEATURES", |v| v.get_features())
            .expect_err("no answer");
        assert!(
            matches!(
                error,
                Error::BackendTimeout {
                    request: "GET_FEATURES",
                    ..
                }
            ),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn get_config_reads_answers_and_refusals() {
        let (ours, mut peer) = UnixStream::pair().expect("socketpair");
        let backend = std::thread::spawn(move || {
            let mut request = [0u8; 24 + 8];
            // First request: refuse with a bare header of size 0, the way
            // libvhost-user does.
            peer.read_exact(&mut request).expect("request");
            let mut reply = Vec::new();
            for word in [
                VHOST_USER_GET_CONFIG,
                VHOST_USER_VERSION | VHOST_USER_REPLY,
                0,
            ] {
                reply.extend_from_slice(&word.to_le_bytes());
            }
            peer.write_all(&reply).expect("refusal");
            // Second: answer 8 bytes at offset 0.
            peer.read_exact(&mut request).expect("request");
            let mut reply = Vec::new();
            for word in [
                VHOST_USER_GET_CONFIG,
                VHOST_USER_VERSION | VHOST_USER_REPLY,
                20,
                0,
                8,
                0,
            ] {
                reply.extend_from_slice(&word.to_le_bytes());
            }
            reply.extend_from_slice(&2048u64.to_le_bytes());
            peer.write_all(&reply).expect("answer");
            request
        });
        let refused = get_config_raw(&ours, 0, 8);
        assert!(
            matches!(refused, Err(Error::BackendRefused { .. })),
            "{refused:?}"
        );
        assert_eq!(
            get_config_raw(&ours, 0, 8).expect("answer"),
            2048u64.to_le_bytes()
        );
        let request = backend.join().expect("fake backend");
        assert_eq!(&request[0..4], &VHOST_USER_GET_CONFIG.to_le_bytes());
        assert_eq!(
            &request[8..12],
            &20u32.to_le_bytes(),
            "header size: body and payload"
        );
        assert_eq!(&request[16..20], &8u32.to_le_bytes(), "body size field");
    }

    #[test]
    fn connecting_to_nothing_names_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.sock");
        let options = FrontendOptions {
            connect_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let error = Frontend::connect(&path, &options).expect_err("nobody listens");
        assert!(matches!(error, Error::Connect { .. }));
        assert!(error.to_string().contains("absent.sock"), "{error}");
    }

    #[test]
    fn invalid_options_are_the_callers_fault() {
        let bad_queue = FrontendOptions {
            queue_size: 100,
            ..Default::default()
        };
        assert!(matches!(
            Frontend::connect("/nonexistent", &bad_queue),
            Err(Error::InvalidArgument(_))
        ));
        let bad_memory = FrontendOptions {
            memory_size: 1000,
            ..Default::default()
        };
        assert!(matches!(
            Frontend::connect("/nonexistent", &bad_memory),
            Err(Error::InvalidArgument(_))
        ));
    }
}
