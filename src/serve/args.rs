//! `icelab serve` options and their validation (unit-tested without a
//! socket).

use anyhow::{Context, bail};
use icelab_contract::device::{KeyUsageLimit, LimitAction};
use icelab_emulator::device::Preallocate;
use icelab_emulator::engine::capabilities::{DataUnitSizes, KeyTypes};
use icelab_emulator::engine::{Capabilities, Fault, ProfileName};
use icelab_lab::size::parse_size;
use std::path::PathBuf;

/// Options of `icelab serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Backing image file (created, with its blocks allocated, when absent and --size is
    /// given).
    #[arg(long)]
    pub image: PathBuf,
    /// vhost-user socket path to listen on (replaced if it exists).
    #[arg(long)]
    pub socket: PathBuf,
    /// Size of a new image, e.g. 64M, 1G, 4096 (bytes); ignored when the image exists.
    #[arg(long)]
    pub size: Option<String>,
    /// Number of request queues, each served by its own thread.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Largest virtqueue size the device accepts.
    #[arg(long, default_value_t = 1024)]
    pub queue_size: u16,
    /// Refuse writes (the device offers VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub read_only: bool,
    /// Allocate every block of the image at start (contents are kept), so that CRYPTO_OUT
    /// encrypts straight into the image's mapping. Default for an image --size creates;
    /// an existing image written through the mapping when it is fully allocated.
    #[arg(long, conflicts_with = "sparse")]
    pub preallocate: bool,
    /// Create a new image sparse (CRYPTO_OUT then encrypts into a buffer and pwrites).
    #[arg(long)]
    pub sparse: bool,
    /// Serve through pread/pwrite only, never through a shared mapping of the image (the
    /// data path before issue 13; for comparisons).
    #[arg(long)]
    pub no_mmap: bool,
    /// Logical block size in bytes (power of two, 512 to 4096).
    #[arg(long, default_value_t = 512)]
    pub block_size: u32,
    /// GET_ID answer (at most 20 bytes).
    #[arg(long, default_value = "icelab")]
    pub serial: String,
    /// Engine profile: ufs (32 slots, 8 DUN bytes, raw and hardware-wrapped keys) or emmc
    /// (32 slots, 4 DUN bytes, raw keys).
    #[arg(long, default_value = "ufs")]
    pub profile: String,
    /// Override the profile's number of keyslots.
    #[arg(long)]
    pub slots: Option<u16>,
    /// Override the profile's max_dun_bytes (1 to 16).
    #[arg(long)]
    pub max_dun_bytes: Option<u8>,
    /// Override the supported data unit sizes, e.g. 512,4096.
    #[arg(long, value_delimiter = ',')]
    pub data_unit_sizes: Option<Vec<u32>>,
    /// Override the accepted key types: raw, wrapped or raw,wrapped (config byte 99).
    #[arg(long, value_delimiter = ',')]
    pub key_types: Option<Vec<String>>,
    /// The key manager's state file (hardware-wrapped keys): holds the device secret
    /// that long-term wrapped keys are sealed with; created (mode 0600) on first use,
    /// read on later starts. Without it each process has a random secret.
    #[arg(long, value_name = "PATH")]
    pub key_manager_state: Option<PathBuf>,
    /// Offer no inline encryption at all (a plain virtio-blk device).
    #[arg(long, conflicts_with_all = ["slots", "max_dun_bytes", "data_unit_sizes", "key_types", "key_manager_state"])]
    pub no_inline_encryption: bool,
    /// Write counters as JSON to FILE at exit and on SIGUSR1.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// Write one JSON line per keyslot event and rejected request to FILE.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Size cap of the trace file (e.g. 64M): past it one `trace-truncated`
    /// event is written and later events are only counted.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub trace_max_bytes: String,
    /// Keep serving new connections after the frontend disconnects.
    #[arg(long)]
    pub persist: bool,
    /// Make the engine deliberately wrong (dun-off-by-one, swap-key-halves, plaintext),
    /// to prove the on-disk verifier catches it; the guest cannot notice.
    #[arg(long, value_name = "FAULT")]
    pub fault: Option<String>,
    /// Device default key: a file of 64 raw bytes (AES-256-XTS). Requests
    /// without a crypto context are encrypted with it, in data units of
    /// the logical block size.
    #[arg(long, value_name = "FILE")]
    pub default_key: Option<PathBuf>,
    /// Most bytes one key may encrypt (e.g. 1T); past it the
    /// --key-usage-limit-action applies.
    #[arg(long, value_name = "SIZE")]
    pub key_usage_limit: Option<String>,
    /// What happens when a key would pass --key-usage-limit: warn (trace
    /// it once and serve) or refuse (IOERR).
    #[arg(long, value_name = "ACTION", requires = "key_usage_limit")]
    pub key_usage_limit_action: Option<String>,
}

/// A checked `icelab serve` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Image path.
    pub image: PathBuf,
    /// Socket path.
    pub socket: PathBuf,
    /// Size for a new image.
    pub create_size: Option<u64>,
    /// Request queues.
    pub queues: u16,
    /// Max queue size.
    pub queue_size: u16,
    /// Read-only device.
    pub read_only: bool,
    /// Block allocation of the image.
    pub preallocate: Preallocate,
    /// Never map the image.
    pub no_mmap: bool,
    /// Logical block size.
    pub block_size: u32,
    /// GET_ID string.
    pub serial: String,
    /// Profile name (for reports).
    pub profile: ProfileName,
    /// Engine capabilities; `None` without inline encryption.
    pub capabilities: Option<Capabilities>,
    /// Stats file.
    pub stats: Option<PathBuf>,
    /// Trace file.
    pub trace: Option<PathBuf>,
    /// Size cap of the trace file.
    pub trace_max_bytes: u64,
    /// Serve further connections.
    pub persist: bool,
    /// Deliberate engine fault.
    pub fault: Option<Fault>,
    /// The file holding the device default key (read at start).
    pub default_key: Option<PathBuf>,
    /// Limit on what one key may encrypt.
    pub key_usage_limit: Option<KeyUsageLimit>,
    /// The key manager's state file (read or created at start).
    pub key_manager_state: Option<PathBuf>,
}

impl TryFrom<ServeArgs> for ServeConfig {
    type Error = anyhow::Error;

    fn try_from(args: ServeArgs) -> anyhow::Result<Self> {
        let profile = ProfileName::from_name(&args.profile).with_context(|| {
            let names: Vec<_> = ProfileName::ALL.iter().map(|p| p.name()).collect();
            format!(
                "unknown --profile {:?}; choose one of {}",
                args.profile,
                names.join(", ")
            )
        })?;
        if args.queues == 0 || args.queues > 64 {
            bail!("--queues {} is out of range; use 1 to 64", args.queues);
        }
        if !args.queue_size.is_power_of_two() || args.queue_size < 4 {
            bail!(
                "--queue-size {} must be a power of two from 4 to 32768",
                args.queue_size
            );
        }
        if !args.block_size.is_power_of_two() || !(512..=4096).contains(&args.block_size) {
            bail!(
                "--block-size {} must be a power of two from 512 to 4096",
                args.block_size
            );
        }
        if args.serial.len() > icelab_emulator::protocol::DEVICE_ID_BYTES {
            bail!(
                "--serial {:?} is longer than the 20 bytes GET_ID returns",
                args.serial
            );
        }
        let create_size = args.size.as_deref().map(parse_size).transpose()?;
        let fault = args.fault.as_deref().map(str::parse::<Fault>).transpose()?;
        if fault.is_some() && args.no_inline_encryption {
            bail!("--fault needs an engine; drop --no-inline-encryption");
        }
        let key_usage_limit = args
            .key_usage_limit
            .as_deref()
            .map(|size| key_usage_limit(size, args.key_usage_limit_action.as_deref()))
            .transpose()?;
        let capabilities = if args.no_inline_encryption {
            None
        } else {
            let mut caps = profile.capabilities();
            if let Some(slots) = args.slots {
                caps.slots = slots;
            }
            if let Some(max_dun_bytes) = args.max_dun_bytes {
                caps.max_dun_bytes = max_dun_bytes;
            }
            if let Some(sizes) = &args.data_unit_sizes {
                caps.data_unit_sizes = parse_data_unit_sizes(sizes)?;
            }
            if let Some(types) = &args.key_types {
                caps.key_types = parse_key_types(types)?;
            }
            caps.validate()?;
            Some(caps)
        };
        let wrapped = capabilities.is_some_and(|caps| {
            caps.key_types
                .accepts(icelab_emulator::protocol::KeyType::HardwareWrapped)
        });
        if args.key_manager_state.is_some() && !wrapped {
            bail!(
                "--key-manager-state needs an engine with hardware-wrapped keys: --profile {} \
                 offers {}; add --key-types raw,wrapped",
                profile.name(),
                capabilities.map_or("none".to_owned(), |caps| caps.key_types.names().join(", "))
            );
        }
        Ok(Self {
            image: args.image,
            socket: args.socket,
            create_size,
            queues: args.queues,
            queue_size: args.queue_size,
            read_only: args.read_only,
            preallocate: if args.preallocate {
                Preallocate::Always
            } else if args.sparse {
                Preallocate::Never
            } else {
                Preallocate::NewImage
            },
            no_mmap: args.no_mmap,
            block_size: args.block_size,
            serial: args.serial,
            profile,
            capabilities,
            stats: args.stats,
            trace: args.trace,
            trace_max_bytes: parse_size(&args.trace_max_bytes)
                .map_err(|error| anyhow::anyhow!("--trace-max-bytes: {error}"))?,
            persist: args.persist,
            fault,
            default_key: args.default_key,
            key_usage_limit,
            key_manager_state: args.key_manager_state,
        })
    }
}

fn key_usage_limit(size: &str, action: Option<&str>) -> anyhow::Result<KeyUsageLimit> {
    let bytes = parse_size(size).map_err(|error| anyhow::anyhow!("--key-usage-limit: {error}"))?;
    let action = match action {
        None => LimitAction::Warn,
        Some(name) => LimitAction::from_name(name).with_context(|| {
            format!("unknown --key-usage-limit-action {name:?}; choose warn or refuse")
        })?,
    };
    Ok(KeyUsageLimit { bytes, action })
}

/// The default key in `path`: exactly 64 bytes, read into memory that is
/// wiped when dropped.
pub fn read_default_key(path: &std::path::Path) -> anyhow::Result<zeroize::Zeroizing<[u8; 64]>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the --default-key file {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read the --default-key file {}", path.display()))?
        .len();
    if len != 64 {
        bail!(
            "the --default-key file {} holds {len} bytes; a default key is 64 raw bytes \
             (AES-256-XTS), e.g. made with `head -c 64 /dev/urandom > {}`",
            path.display(),
            path.display()
        );
    }
    let mut key = zeroize::Zeroizing::new([0u8; 64]);
    file.read_exact(&mut key[..])
        .with_context(|| format!("cannot read the --default-key file {}", path.display()))?;
    Ok(key)
}

fn parse_data_unit_sizes(sizes: &[u32]) -> anyhow::Result<DataUnitSizes> {
    let mut mask = 0;
    for size in sizes {
        if !size.is_power_of_two() || *size < DataUnitSizes::MIN || *size > DataUnitSizes::MAX {
            bail!("--data-unit-sizes: {size} is not a power of two from 512 to 65536");
        }
        mask |= size;
    }
    Ok(DataUnitSizes(mask))
}

fn parse_key_types(types: &[String]) -> anyhow::Result<KeyTypes> {
    let mut mask = 0;
    for name in types {
        match name.as_str() {
            "raw" => mask |= KeyTypes::RAW.0,
            "wrapped" | "hw-wrapped" => mask |= KeyTypes::WRAPPED.0,
            other => bail!("--key-types: unknown key type {other:?}; use raw, wrapped or both"),
        }
    }
    Ok(KeyTypes(mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn config(extra: &[&str]) -> anyhow::Result<ServeConfig> {
        let mut argv = vec!["icelab", "--image", "disk.img", "--socket", "s.sock"];
        argv.extend_from_slice(extra);
        ServeConfig::try_from(Cli::try_parse_from(argv)?.args)
    }

    #[test]
    fn defaults_are_the_ufs_profile() {
        let config = config(&[]).unwrap();
        assert_eq!(config.profile, ProfileName::Ufs);
        assert_eq!(config.capabilities, Some(ProfileName::Ufs.capabilities()));
        assert_eq!(config.queues, 1);
        assert_eq!(config.create_size, None);
        assert_eq!(config.preallocate, Preallocate::NewImage);
        assert!(!config.no_mmap);
    }

    #[test]
    fn preallocate_and_sparse_choose_the_allocation() {
        let allocation = |extra: &[&str]| config(extra).unwrap().preallocate;
        assert_eq!(allocation(&["--preallocate"]), Preallocate::Always);
        assert_eq!(allocation(&["--sparse"]), Preallocate::Never);
        assert!(config(&["--preallocate", "--sparse"]).is_err());
        assert!(config(&["--no-mmap"]).unwrap().no_mmap);
    }

    #[test]
    fn overrides_apply_on_top_of_the_profile() {
        let config = config(&[
            "--profile",
            "emmc",
            "--slots",
            "2",
            "--data-unit-sizes",
            "512,4096",
            "--size",
            "64M",
        ])
        .unwrap();
        let caps = config.capabilities.unwrap();
        assert_eq!(caps.slots, 2);
        assert_eq!(caps.max_dun_bytes, 4);
        assert_eq!(caps.data_unit_sizes, DataUnitSizes(512 | 4096));
        assert_eq!(config.create_size, Some(64 << 20));
    }

    #[test]
    fn key_types_choose_raw_wrapped_or_both() {
        let types = |extra: &[&str]| config(extra).unwrap().capabilities.unwrap().key_types;
        assert_eq!(types(&[]), KeyTypes::RAW_AND_WRAPPED, "ufs offers both");
        assert_eq!(types(&["--profile", "emmc"]), KeyTypes::RAW);
        assert_eq!(types(&["--key-types", "raw"]), KeyTypes::RAW);
        assert_eq!(types(&["--key-types", "wrapped"]), KeyTypes::WRAPPED);
        assert_eq!(
            types(&["--profile", "emmc", "--key-types", "raw,wrapped"]),
            KeyTypes::RAW_AND_WRAPPED
        );
        let state = config(&["--key-manager-state", "km.state"]).unwrap();
        assert_eq!(state.key_manager_state, Some(PathBuf::from("km.state")));
        for refused in [
            &["--profile", "emmc", "--key-manager-state", "km.state"][..],
            &["--key-types", "raw", "--key-manager-state", "km.state"],
        ] {
            let error = format!("{:#}", config(refused).unwrap_err());
            assert!(
                error.contains("--key-manager-state needs an engine with hardware-wrapped keys"),
                "{error}"
            );
        }
        assert!(config(&["--no-inline-encryption", "--key-manager-state", "km"]).is_err());
    }

    #[test]
    fn the_key_usage_limit_defaults_to_warn() {
        let warn = config(&["--key-usage-limit", "1M"]).unwrap();
        assert_eq!(
            warn.key_usage_limit,
            Some(KeyUsageLimit {
                bytes: 1 << 20,
                action: LimitAction::Warn
            })
        );
        let refuse = config(&[
            "--key-usage-limit",
            "64K",
            "--key-usage-limit-action",
            "refuse",
        ])
        .unwrap();
        assert_eq!(
            refuse.key_usage_limit.map(|l| l.action),
            Some(LimitAction::Refuse)
        );
        assert!(config(&["--key-usage-limit-action", "refuse"]).is_err());
    }

    #[test]
    fn a_default_key_file_must_hold_64_bytes() {
        let dir = std::env::temp_dir().join(format!("icelab-default-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short.key");
        std::fs::write(&short, [7u8; 32]).unwrap();
        let error = read_default_key(&short).unwrap_err();
        assert!(format!("{error:#}").contains("holds 32 bytes"), "{error:#}");
        let good = dir.join("good.key");
        std::fs::write(&good, [7u8; 64]).unwrap();
        assert_eq!(*read_default_key(&good).unwrap(), [7u8; 64]);
        let missing = read_default_key(&dir.join("absent.key")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot open"),
            "{missing:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_arguments_name_the_problem() {
        let cases: [(&[&str], &str); 14] = [
            (&["--key-usage-limit", "0"], "--key-usage-limit: \"0\""),
            (&["--key-usage-limit", "lots"], "--key-usage-limit"),
            (
                &[
                    "--key-usage-limit",
                    "1M",
                    "--key-usage-limit-action",
                    "stop",
                ],
                "choose warn or refuse",
            ),
            (&["--fault", "bitflip"], "unknown --fault"),
            (&["--profile", "nvme"], "unknown --profile"),
            (&["--queues", "0"], "--queues 0"),
            (&["--queue-size", "100"], "--queue-size 100"),
            (&["--size", "lots"], "not a size"),
            (&["--size", "100"], "smaller than one"),
            (&["--slots", "0"], "at least one keyslot"),
            (&["--max-dun-bytes", "17"], "--max-dun-bytes 17"),
            (&["--data-unit-sizes", "1000"], "1000 is not a power of two"),
            (&["--key-types", "sealed"], "unknown key type \"sealed\""),
            (&["--key-types", ""], "unknown key type"),
        ];
        for (extra, expected) in cases {
            let error = config(extra).unwrap_err();
            assert!(
                format!("{error:#}").contains(expected),
                "{extra:?}: {error:#}"
            );
        }
        assert!(config(&["--no-inline-encryption", "--slots", "4"]).is_err());
        assert_eq!(
            config(&["--no-inline-encryption"]).unwrap().capabilities,
            None
        );
    }
}
