//! The device secret: the key manager's root, playing the SoC's fused
//! hardware key. Every long-term wrapped key is sealed under a key derived
//! from it, so a long-term blob outlives a restart of the engine exactly
//! when the secret does.
//!
//! `icelab serve --key-manager-state PATH` keeps it in a state file,
//! created with mode 0600 on first use and read on later starts; without
//! the option each process draws a random one (its long-term blobs are
//! useless to the next process). The secret lives in the key arena
//! ([`super::secure`]) and is never printed, logged or traced.
//!
//! The state file is 48 bytes: the 16-byte header [`STATE_HEADER`], then
//! the 32-byte secret. It is created atomically (written to a temporary
//! file of mode 0600 next to it, synced, then hard-linked into place, so
//! two processes racing to create it end up with the same secret and a
//! crash never leaves half a file), and refused when its size or header
//! is wrong or group or others may access it.

use super::secure::{SecureBox, SecureMemoryError};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Size of the device secret.
pub const DEVICE_SECRET_SIZE: usize = 32;

/// First 16 bytes of a state file: what it is, and its format version.
pub const STATE_HEADER: [u8; 16] = *b"icelab-keymgr-1\n";

/// Size of a state file.
pub const STATE_FILE_SIZE: usize = STATE_HEADER.len() + DEVICE_SECRET_SIZE;

/// The device secret, in the key arena.
pub struct DeviceSecret {
    secret: SecureBox<[u8; DEVICE_SECRET_SIZE]>,
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret(..)")
    }
}

/// Where a device secret came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Drawn for this process only (no state file).
    Random,
    /// Drawn now and written to a new state file.
    Created,
    /// Read from an existing state file.
    Read,
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("cannot read the key manager state file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file cannot be created.
    #[error("cannot create the key manager state file {}", .path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Wrong size.
    #[error(
        "the key manager state file {} holds {len} bytes, not {STATE_FILE_SIZE}: it is not an \
         icelab key manager state (remove it to start over; every long-term wrapped key made \
         with it is then lost)",
        .path.display()
    )]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// Wrong header.
    #[error(
        "the key manager state file {} does not start with icelab's header (format 1): it is \
         not an icelab key manager state",
        .path.display()
    )]
    Header {
        /// The file.
        path: PathBuf,
    },
    /// Group or others may access the file.
    #[error(
        "the key manager state file {} has mode {mode:04o}: it holds the device secret, so \
         only its owner may read it (chmod 600 {})",
        .path.display(),
        .path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No key memory.
    #[error("cannot hold the device secret")]
    Memory(#[from] SecureMemoryError),
}

impl DeviceSecret {
    /// A random secret for this process only.
    pub fn random() -> Result<Self, SecureMemoryError> {
        let mut bytes = Zeroizing::new([0u8; DEVICE_SECRET_SIZE]);
        rand::fill(&mut bytes[..]);
        Self::from_bytes(&bytes)
    }

    /// The secret in the state file at `path`, which is created (with a
    /// random secret, mode 0600) when it does not exist. The caller should
    /// scrub the stack ([`super::scrub_stack`]).
    pub fn load_or_create(path: &Path) -> Result<(Self, Origin), StateError> {
        match File::open(path) {
            Ok(file) => Ok((Self::read(path, file)?, Origin::Read)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Self::create(path),
            Err(source) => Err(StateError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The secret bytes (for deriving the wrapping keys).
    pub(crate) fn bytes(&self) -> &[u8; DEVICE_SECRET_SIZE] {
        &self.secret
    }

    fn from_bytes(bytes: &[u8; DEVICE_SECRET_SIZE]) -> Result<Self, SecureMemoryError> {
        Ok(Self {
            secret: SecureBox::new(*bytes)?,
        })
    }

    fn read(path: &Path, mut file: File) -> Result<Self, StateError> {
        let read_error = |source| StateError::Read {
            path: path.to_owned(),
            source,
        };
        let metadata = file.metadata().map_err(read_error)?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(StateError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        if metadata.len() != STATE_FILE_SIZE as u64 {
            return Err(StateError::Size {
                path: path.to_owned(),
                len: metadata.len(),
            });
        }
        let mut contents = Zeroizing::new([0u8; STATE_FILE_SIZE]);
        file.read_exact(&mut contents[..]).map_err(read_error)?;
        if contents[..STATE_HEADER.len()] != STATE_HEADER {
            return Err(StateError::Header {
                path: path.to_owned(),
            });
        }
        let mut secret = Zeroizing::new([0u8; DEVICE_SECRET_SIZE]);
        secret.copy_from_slice(&contents[STATE_HEADER.len()..]);
        Ok(Self::from_bytes(&secret)?)
    }

    /// Writes a new state file; if another process created one meanwhile,
    /// uses that one.
    fn create(path: &Path) -> Result<(Self, Origin), StateError> {
        let create_error = |source| StateError::Create {
            path: path.to_owned(),
            source,
        };
        let mut contents = Zeroizing::new([0u8; STATE_FILE_SIZE]);
        contents[..STATE_HEADER.len()].copy_from_slice(&STATE_HEADER);
        rand::fill(&mut contents[STATE_HEADER.len()..]);
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let temporary = PathBuf::from(temporary);
        // Left by a process of the same id that died mid-way: ours to drop.
        let _ = std::fs::remove_file(&temporary);
        let written = write_new(&temporary, &contents[..]).and_then(|()| {
            let linked = std::fs::hard_link(&temporary, path);
            let _ = std::fs::remove_file(&temporary);
            linked
        });
        match written {
            Ok(()) => {
                sync_parent(path);
                let mut secret = Zeroizing::new([0u8; DEVICE_SECRET_SIZE]);
                secret.copy_from_slice(&contents[STATE_HEADER.len()..]);
                Ok((Self::from_bytes(&secret)?, Origin::Created))
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let file = File::open(path).map_err(|source| StateError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Ok((Self::read(path, file)?, Origin::Read))
            }
            Err(error) => Err(create_error(error)),
        }
    }
}

/// Creates `path` (which must not exist) with mode 0600 holding `bytes`,
/// synced to disk.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // Exactly 0600 whatever the umask.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Best effort: the new directory entry reaches the disk.
fn sync_parent(path: &Path) {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("km.state");
        let (first, origin) = DeviceSecret::load_or_create(&path).expect("create");
        assert_eq!(origin, Origin::Created);
        let metadata = std::fs::metadata(&path).expect("state file");
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o600);
        assert_eq!(metadata.len(), STATE_FILE_SIZE as u64);
        let (second, origin) = DeviceSecret::load_or_create(&path).expect("read");
        assert_eq!(origin, Origin::Read);
        assert_eq!(first.bytes(), second.bytes());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
        assert!(!format!("{first:?}").contains(&format!("{}", first.bytes()[0])));
        let other = DeviceSecret::random().expect("random");
        assert_ne!(other.bytes(), first.bytes());
    }

    #[test]
    fn a_bad_state_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        };
        let mut good = STATE_HEADER.to_vec();
        good.extend_from_slice(&[7; DEVICE_SECRET_SIZE]);
        let short = write("short", &good[..40], 0o600);
        let header = write("header", &[b'x'; STATE_FILE_SIZE], 0o600);
        let open = write("open", &good, 0o644);
        let message = |path: &Path| {
            let error = DeviceSecret::load_or_create(path).expect_err("refused");
            format!("{error}")
        };
        assert!(message(&short).contains("holds 40 bytes"));
        assert!(message(&header).contains("header"));
        let text = message(&open);
        assert!(
            text.contains("mode 0644") && text.contains("chmod 600"),
            "{text}"
        );
        let fine = write("fine", &good, 0o600);
        let (secret, origin) = DeviceSecret::load_or_create(&fine).expect("read");
        assert_eq!(origin, Origin::Read);
        assert_eq!(secret.bytes(), &[7; DEVICE_SECRET_SIZE]);
        let missing_dir = dir.path().join("no/such/dir/km.state");
        assert!(matches!(
            DeviceSecret::load_or_create(&missing_dir),
            Err(StateError::Create { .. })
        ));
    }
}
