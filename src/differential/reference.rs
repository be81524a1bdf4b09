//! The reference: icelab's own device, in this process, behind a
//! vhost-user socket of its own, with the capabilities the device under
//! test advertises. The differential run talks to it through the same
//! native frontend as to the device under test, so both see byte-identical
//! requests.

use anyhow::{Context, bail};
use icelab_emulator::device::{BlockDevice, DeviceConfig, GuestMemory, Image};
use icelab_emulator::engine::Engine;
use icelab_emulator::engine::capabilities::{Capabilities, DataUnitSizes, KeyTypes};
use icelab_protocol::BlockConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryMmap;

/// A reference device serving one connection on its socket.
pub struct Reference {
    /// Its vhost-user socket.
    pub socket: PathBuf,
    /// Its image file.
    pub image: PathBuf,
    thread: Option<JoinHandle<()>>,
}

/// The engine capabilities of a device that advertises `config` and
/// answers GET_CRYPTO_MODES with `data_unit_mask`; an error when the
/// reference cannot model them.
pub fn capabilities(
    config: &BlockConfig,
    data_unit_mask: u32,
) -> anyhow::Result<Option<Capabilities>> {
    let Some(crypto) = config.crypto else {
        return Ok(None);
    };
    let caps = Capabilities {
        slots: crypto.max_slots,
        max_dun_bytes: crypto.max_dun_bytes,
        data_unit_sizes: DataUnitSizes(data_unit_mask),
        key_types: KeyTypes(crypto.key_types),
    };
    caps.validate().map_err(|error| {
        anyhow::anyhow!(
            "the reference cannot model the device's capabilities ({error}); the \
             differential mode needs a device within icelab's engine model"
        )
    })?;
    Ok(Some(caps))
}

impl Reference {
    /// Starts a reference device in `dir` with `caps`, a fresh image of
    /// `capacity` bytes and logical block size `blk_size`; it serves one
    /// frontend connection on a thread.
    pub fn start(
        dir: &Path,
        caps: Option<Capabilities>,
        capacity: u64,
        blk_size: u32,
    ) -> anyhow::Result<Self> {
        if capacity == 0 {
            bail!("the device under test reports a capacity of 0 sectors");
        }
        let socket = dir.join("reference.sock");
        let image_path = dir.join("reference.img");
        let image = Image::open(&image_path, Some(capacity), false).with_context(|| {
            format!("cannot create the reference image {}", image_path.display())
        })?;
        let engine = Arc::new(Engine::new(caps, None));
        let mem = GuestMemory::new(GuestMemoryMmap::new());
        let config = DeviceConfig {
            num_queues: 1,
            queue_size: 1024,
            blk_size,
            serial: "icelab-reference".into(),
        };
        let device = Arc::new(BlockDevice::new(config, image, engine, mem.clone()));
        let mut listener = Listener::new(&socket, true)
            .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", socket.display()))?;
        let mut daemon = VhostUserDaemon::new("icelab-reference".into(), device, mem)
            .map_err(|error| anyhow::anyhow!("cannot start the reference device: {error}"))?;
        let thread = std::thread::Builder::new()
            .name("reference".into())
            .spawn(move || {
                let served = daemon.start(&mut listener).and_then(|()| daemon.wait());
                if let Err(error) = served {
                    tracing::debug!("reference device: {error}");
                }
                for handler in daemon.get_epoll_handlers() {
                    handler.send_exit_event();
                }
            })
            .context("cannot start the reference device's thread")?;
        Ok(Self {
            socket,
            image: image_path,
            thread: Some(thread),
        })
    }

    /// Waits for the device's thread once its frontend has disconnected.
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
