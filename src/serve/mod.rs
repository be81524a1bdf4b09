//! `icelab serve`: the emulator as a vhost-user-blk backend process.

mod args;

pub use args::{ServeArgs, ServeConfig};

use anyhow::Context;
use icelab_contract::device::DefaultKeyInfo;
use icelab_emulator::device::{BlockDevice, DeviceConfig, GuestMemory, Image, ImageOptions};
use icelab_emulator::engine::device_secret::Origin;
use icelab_emulator::engine::stats::{DeviceInfo, StatsFile};
use icelab_emulator::engine::wrapped_key::KeyIdText;
use icelab_emulator::engine::{DeviceSecret, Engine, Trace};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::path::Path;
use std::sync::Arc;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryMmap;

/// Runs `icelab serve` until the frontend disconnects (or forever with
/// `--persist`, until SIGINT/SIGTERM).
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig::try_from(args)?;
    // Before any key can arrive: no core dumps of this process, key memory
    // locked and left out of dumps (README, "Key memory").
    let hardening = icelab_emulator::engine::harden_process()
        .context("cannot harden the process for holding keys")?;
    tracing::info!(%hardening, "key memory hardening");
    let image = Image::open_with(
        &config.image,
        &ImageOptions {
            create_size: config.create_size,
            read_only: config.read_only,
            preallocate: config.preallocate,
            no_mmap: config.no_mmap,
        },
    )?;
    tracing::info!(
        mapped = !config.no_mmap && image.mapping().is_some(),
        writes_through_mapping = image.writes_through_mapping(),
        "image data path"
    );
    let trace = config
        .trace
        .as_deref()
        .map(|path| {
            Trace::with_limit(path, config.trace_max_bytes)
                .with_context(|| format!("cannot create the trace file {}", path.display()))
        })
        .transpose()?;
    if let Some(fault) = config.fault {
        tracing::warn!(%fault, "the engine is deliberately faulty: the image will not hold what the policy demands");
    }
    let mut engine = Engine::new(config.capabilities, trace)
        .with_fault(config.fault)
        .with_usage_limit(config.key_usage_limit);
    if let Some(path) = &config.default_key {
        engine = with_default_key(engine, path, config.block_size)?;
        // The key passed through the frames below this one.
        icelab_emulator::engine::scrub_stack();
    }
    engine = with_key_manager_state(engine, config.key_manager_state.as_deref())?;
    icelab_emulator::engine::scrub_stack();
    let engine = Arc::new(engine);
    let mem = GuestMemory::new(GuestMemoryMmap::new());
    let device_config = DeviceConfig {
        num_queues: config.queues,
        queue_size: config.queue_size,
        blk_size: config.block_size,
        serial: config.serial.clone(),
    };
    let device = Arc::new(BlockDevice::new(device_config, image, engine, mem.clone()));
    let report = Arc::new(Report {
        config: config.clone(),
        device: device.clone(),
        writing: std::sync::Mutex::new(()),
    });
    watch_signals(report.clone())?;

    tracing::info!(
        image = %config.image.display(),
        socket = %config.socket.display(),
        capacity = device.image().capacity(),
        queues = config.queues,
        profile = %config.profile,
        inline_encryption = config.capabilities.is_some(),
        "listening"
    );
    // One listening socket for the whole life of the process: with
    // --persist, a frontend that connects while the previous session is
    // ending waits in this socket's backlog and is served next, instead of
    // being reset with a socket that is being replaced.
    let mut listener = Listener::new(&config.socket, true).map_err(|error| {
        anyhow::anyhow!(
            "cannot listen on {}: {error}; is another icelab serve using it?",
            config.socket.display()
        )
    })?;
    loop {
        let mut daemon = VhostUserDaemon::new("icelab".into(), device.clone(), mem.clone())
            .map_err(|error| anyhow::anyhow!("cannot start the vhost-user daemon: {error}"))?;
        let served = serve_one(&mut daemon, &mut listener);
        device.engine().reset();
        match served {
            Ok(()) => tracing::info!("frontend disconnected"),
            Err(error) => tracing::warn!("connection ended: {error}"),
        }
        if !config.persist {
            break;
        }
    }
    report.finish()
}

/// `engine` with the default key read from `path` (the caller scrubs the
/// stack this used).
#[inline(never)]
fn with_default_key(engine: Engine, path: &Path, block_size: u32) -> anyhow::Result<Engine> {
    let key = args::read_default_key(path)?;
    engine
        .with_default_key(&key, block_size)
        .map_err(|error| anyhow::anyhow!("cannot hold the default key: {error}"))
}

/// `engine` with its key manager rooted in the state file at `path`
/// (created when absent); logs where the device secret came from, never
/// the secret (the caller scrubs the stack this used).
#[inline(never)]
fn with_key_manager_state(engine: Engine, path: Option<&Path>) -> anyhow::Result<Engine> {
    let (engine, origin) = match path {
        Some(path) => {
            let (secret, origin) = DeviceSecret::load_or_create(path)?;
            let engine = engine
                .with_device_secret(&secret)
                .map_err(|error| anyhow::anyhow!("cannot set up the key manager: {error}"))?;
            (engine, origin)
        }
        None => (engine, Origin::Random),
    };
    if let Some(manager) = engine.key_manager() {
        let device_id = KeyIdText(manager.device_id());
        match (origin, path) {
            (Origin::Created, Some(path)) => tracing::info!(
                %device_id,
                "key manager: new device secret written to {} (mode 0600)",
                path.display()
            ),
            (Origin::Read, Some(path)) => tracing::info!(
                %device_id,
                "key manager: device secret read from {}",
                path.display()
            ),
            _ => tracing::info!(
                %device_id,
                "key manager: random device secret for this process (long-term wrapped keys \
                 die with it; --key-manager-state PATH keeps one)"
            ),
        }
    }
    Ok(engine)
}

/// Serves one frontend connection from `listener` until it ends, then stops
/// the daemon's queue threads. A frontend that disconnects (or sends half
/// a message as it dies) ends the session normally.
fn serve_one(
    daemon: &mut VhostUserDaemon<Arc<BlockDevice>>,
    listener: &mut Listener,
) -> Result<(), vhost_user_backend::Error> {
    let result = daemon.start(listener).and_then(|()| {
        tracing::info!("frontend connected");
        daemon.wait()
    });
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    match result {
        Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        other => other,
    }
}

/// Writes the stats file and cleans up at exit.
struct Report {
    config: ServeConfig,
    device: Arc<BlockDevice>,
    /// Held while the stats file is written: the signal thread (SIGUSR1,
    /// SIGTERM) and the main thread (the frontend left) may both write it,
    /// through the same temporary file.
    writing: std::sync::Mutex<()>,
}

impl Report {
    fn write_stats(&self) -> anyhow::Result<()> {
        let Some(path) = &self.config.stats else {
            return Ok(());
        };
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let engine = self.device.engine();
        let caps = engine.capabilities();
        let document = StatsFile {
            device: DeviceInfo {
                image: self.config.image.clone(),
                capacity_bytes: self.device.image().capacity(),
                queues: self.config.queues,
                read_only: self.config.read_only,
                profile: self.config.profile.name().to_owned(),
                inline_encryption: caps.is_some(),
                fault: engine.fault().map(|f| f.name().to_owned()),
                keyslots: caps.map(|c| c.slots),
                max_dun_bytes: caps.map(|c| c.max_dun_bytes),
                data_unit_sizes: caps.map(|c| c.data_unit_sizes.sizes().collect()),
                default_key: engine.default_key().map(|key| DefaultKeyInfo {
                    fingerprint: key.fingerprint.to_string(),
                    data_unit_size: key.data_unit_size,
                }),
                key_usage_limit: engine.usage_limit(),
                key_types: caps.map(|c| c.key_types.names()),
            },
            stats: engine.counters(),
        };
        write_atomically(path, &document.to_json()?)
            .with_context(|| format!("cannot write the stats file {}", path.display()))
    }

    fn finish(&self) -> anyhow::Result<()> {
        let flushed = self
            .device
            .image()
            .flush()
            .context("cannot flush the image at exit");
        let _ = std::fs::remove_file(&self.config.socket);
        self.write_stats()?;
        flushed
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// SIGUSR1 writes the stats; SIGINT and SIGTERM write them and exit 0.
fn watch_signals(report: Arc<Report>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGUSR1 {
                    if let Err(error) = report.write_stats() {
                        tracing::error!("{error:#}");
                    }
                    continue;
                }
                tracing::info!(signal, "shutting down");
                let status = match report.finish() {
                    Ok(()) => 0,
                    Err(error) => {
                        tracing::error!("{error:#}");
                        1
                    }
                };
                std::process::exit(status);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
