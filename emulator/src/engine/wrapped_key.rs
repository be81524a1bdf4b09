//! The format of icelab's hardware-wrapped keys and their sealing: a
//! 32-byte hardware key encrypted and authenticated with AES-256-GCM
//! under a wrapping key. To the guest a blob is opaque bytes (the
//! `key_blob` of requests 32..35 and the key of a hardware-wrapped
//! KEYSLOT_PROGRAM); the layout below is icelab's, documented so that a
//! vendor can compare (docs/PROTOCOL.md, "Hardware-wrapped keys").
//!
//! ```text
//! offset size
//!  0      4   magic "ICWK"
//!  4      1   format version: 1
//!  5      1   kind: 1 long-term, 2 ephemeral
//!  6      2   reserved, 0
//!  8      8   wrapping key id: the device id (long-term) or the boot id
//!             (ephemeral) of the key that sealed it
//! 16     12   nonce (random)
//! 28     32   ciphertext of the hardware key
//! 60     16   GCM tag
//! ```
//!
//! 76 bytes in all; the 16-byte header (bytes 0..16) is the GCM
//! associated data, so kind and key id cannot be changed without the tag
//! failing. Opening checks, in order: the size, the header (magic,
//! version, a known kind, reserved bytes), the kind wanted, the key id,
//! then the tag; each failure is its own [`OpenError`].

use super::hw_kdf::HW_KEY_SIZE;
use super::secure::{SecureBox, SecureMemoryError};
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use std::fmt;
use zeroize::Zeroizing;

/// Size of a wrapped key.
pub const BLOB_SIZE: usize = HEADER_SIZE + NONCE_SIZE + HW_KEY_SIZE + TAG_SIZE;
/// Size of the header (the associated data).
pub const HEADER_SIZE: usize = 16;
/// The first four bytes of every wrapped key.
pub const MAGIC: [u8; 4] = *b"ICWK";
/// The format version this engine writes and reads.
pub const VERSION: u8 = 1;
/// Size of a wrapping key.
pub const WRAPPING_KEY_SIZE: usize = 32;
const NONCE_SIZE: usize = 12;
const TAG_SIZE: usize = 16;
const NONCE_AT: usize = HEADER_SIZE;
const CIPHERTEXT_AT: usize = NONCE_AT + NONCE_SIZE;
const TAG_AT: usize = CIPHERTEXT_AT + HW_KEY_SIZE;

/// A wrapping key's id, carried in the header of every blob it seals.
pub type KeyId = [u8; 8];

/// What a wrapped key is wrapped for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sealed with the long-term wrapping key (derived from the device
    /// secret): IMPORT_KEY's and GENERATE_KEY's answer, PREPARE_KEY's
    /// input. Survives resets and, with a state file, restarts.
    LongTerm,
    /// Sealed with the ephemeral wrapping key of the current boot:
    /// PREPARE_KEY's answer, what DERIVE_SW_SECRET and KEYSLOT_PROGRAM
    /// take.
    Ephemeral,
}

impl Kind {
    const fn to_wire(self) -> u8 {
        match self {
            Self::LongTerm => 1,
            Self::Ephemeral => 2,
        }
    }

    const fn from_wire(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::LongTerm),
            2 => Some(Self::Ephemeral),
            _ => None,
        }
    }
}

impl Kind {
    /// "a long-term wrapped key", "an ephemerally-wrapped key".
    pub const fn with_article(self) -> &'static str {
        match self {
            Self::LongTerm => "a long-term wrapped key",
            Self::Ephemeral => "an ephemerally-wrapped key",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LongTerm => "long-term wrapped key",
            Self::Ephemeral => "ephemerally-wrapped key",
        })
    }
}

/// Why a blob with another key id does not open, by its kind.
const fn other_key(kind: Kind) -> &'static str {
    match kind {
        Kind::LongTerm => {
            "the long-term wrapped key was wrapped by another device (another device secret: \
             another --key-manager-state, or none)"
        }
        Kind::Ephemeral => {
            "the ephemerally-wrapped key is not of this boot of the engine (it was prepared \
             before a reset or a restart, or by another device): prepare the long-term key again"
        }
    }
}

/// Why a blob does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not [`BLOB_SIZE`] bytes.
    #[error("the wrapped key is {got} bytes; this engine's wrapped keys are {BLOB_SIZE}")]
    Size {
        /// key_size the guest sent.
        got: u32,
    },
    /// Magic, version, kind or reserved bytes are not this format's.
    #[error(
        "the blob is not one of this engine's wrapped keys (its header is not format {VERSION})"
    )]
    Header,
    /// A blob of the other kind.
    #[error("{} was given where {} is needed", .got.with_article(), .wanted.with_article())]
    WrongKind {
        /// The kind the request takes.
        wanted: Kind,
        /// The kind the blob says it is.
        got: Kind,
    },
    /// The key id is not the wrapping key's.
    #[error("{}", other_key(*.kind))]
    OtherKey {
        /// The blob's kind.
        kind: Kind,
    },
    /// The tag does not verify.
    #[error("the {kind} does not authenticate (its AES-GCM tag fails): it was altered")]
    Unauthentic {
        /// The blob's kind.
        kind: Kind,
    },
}

/// A wrapping key (in the key arena) and its id.
pub struct WrappingKey {
    key: SecureBox<[u8; WRAPPING_KEY_SIZE]>,
    id: KeyId,
    kind: Kind,
}

impl fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappingKey")
            .field("kind", &self.kind)
            .field("id", &KeyIdText(self.id))
            .finish_non_exhaustive()
    }
}

/// A key id in hex.
pub struct KeyIdText(pub KeyId);

impl fmt::Display for KeyIdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyIdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl WrappingKey {
    /// A wrapping key sealing blobs of `kind`, with id `id`. The caller
    /// wipes `key` and scrubs the stack.
    pub fn new(
        key: &[u8; WRAPPING_KEY_SIZE],
        id: KeyId,
        kind: Kind,
    ) -> Result<Self, SecureMemoryError> {
        Ok(Self {
            key: SecureBox::new(*key)?,
            id,
            kind,
        })
    }

    /// A random wrapping key with a random id.
    pub fn random(kind: Kind) -> Result<Self, SecureMemoryError> {
        let mut key = Zeroizing::new([0u8; WRAPPING_KEY_SIZE]);
        rand::fill(&mut key[..]);
        let mut id = [0u8; 8];
        rand::fill(&mut id[..]);
        Self::new(&key, id, kind)
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The kind of blob it seals.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Seals `hw_key` under a fresh random nonce. The caller scrubs the
    /// stack.
    pub fn seal(&self, hw_key: &[u8; HW_KEY_SIZE]) -> [u8; BLOB_SIZE] {
        let mut blob = [0u8; BLOB_SIZE];
        blob[..HEADER_SIZE].copy_from_slice(&header(self.kind, self.id));
        rand::fill(&mut blob[NONCE_AT..CIPHERTEXT_AT]);
        blob[CIPHERTEXT_AT..TAG_AT].copy_from_slice(hw_key);
        let (head, rest) = blob.split_at_mut(CIPHERTEXT_AT);
        let (ciphertext, tag_out) = rest.split_at_mut(HW_KEY_SIZE);
        let nonce = Nonce::try_from(&head[NONCE_AT..]).expect("12-byte nonce");
        let tag = self
            .cipher()
            .encrypt_inout_detached(&nonce, &head[..HEADER_SIZE], ciphertext.into())
            .expect("32 bytes are far below GCM's limits");
        tag_out.copy_from_slice(&tag);
        blob
    }

    /// Opens `blob` (the first `key_size` bytes of a key_blob) as a key of
    /// this wrapping key's kind. The caller scrubs the stack.
    pub fn open(&self, blob: &[u8]) -> Result<Zeroizing<[u8; HW_KEY_SIZE]>, OpenError> {
        let blob: &[u8; BLOB_SIZE] = blob.try_into().map_err(|_| OpenError::Size {
            got: u32::try_from(blob.len()).unwrap_or(u32::MAX),
        })?;
        let (kind, id) = parse_header(blob)?;
        if kind != self.kind {
            return Err(OpenError::WrongKind {
                wanted: self.kind,
                got: kind,
            });
        }
        if id != self.id {
            return Err(OpenError::OtherKey { kind });
        }
        let nonce = Nonce::try_from(&blob[NONCE_AT..CIPHERTEXT_AT]).expect("12-byte nonce");
        let tag = Tag::try_from(&blob[TAG_AT..]).expect("16-byte tag");
        let mut key = Zeroizing::new([0u8; HW_KEY_SIZE]);
        key.copy_from_slice(&blob[CIPHERTEXT_AT..TAG_AT]);
        self.cipher()
            .decrypt_inout_detached(&nonce, &blob[..HEADER_SIZE], key[..].as_mut().into(), &tag)
            .map_err(|_| OpenError::Unauthentic { kind })?;
        Ok(key)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.key).into())
    }
}

fn header(kind: Kind, id: KeyId) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = kind.to_wire();
    header[8..].copy_from_slice(&id);
    header
}

/// The kind and key id of a blob whose header is this format's.
fn parse_header(blob: &[u8; BLOB_SIZE]) -> Result<(Kind, KeyId), OpenError> {
    if blob[..4] != MAGIC || blob[4] != VERSION || blob[6..8] != [0, 0] {
        return Err(OpenError::Header);
    }
    let kind = Kind::from_wire(blob[5]).ok_or(OpenError::Header)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&blob[8..HEADER_SIZE]);
    Ok((kind, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HW_KEY: [u8; HW_KEY_SIZE] = [0x5a; HW_KEY_SIZE];

    #[test]
    fn a_sealed_key_opens_and_has_the_documented_layout() {
        let wrapping = WrappingKey::new(&[1; 32], *b"deviceid", Kind::LongTerm).expect("key");
        let blob = wrapping.seal(&HW_KEY);
        assert_eq!(blob.len(), 76);
        assert_eq!(&blob[..4], b"ICWK");
        assert_eq!(blob[4..8], [1, 1, 0, 0]);
        assert_eq!(&blob[8..16], b"deviceid");
        assert!(
            !blob.windows(8).any(|w| w == [0x5a; 8]),
            "the key is encrypted"
        );
        assert_eq!(*wrapping.open(&blob).expect("opens"), HW_KEY);
        // Independently: AES-256-GCM with the header as associated data,
        // nonce at 16, ciphertext then tag after it.
        let cipher = Aes256Gcm::new(&[1u8; 32].into());
        let nonce = Nonce::try_from(&blob[16..28]).expect("nonce");
        let tag = Tag::try_from(&blob[60..]).expect("tag");
        let mut plain = blob[28..60].to_vec();
        cipher
            .decrypt_inout_detached(&nonce, &blob[..16], plain.as_mut_slice().into(), &tag)
            .expect("decrypts");
        assert_eq!(plain, HW_KEY);
        assert_ne!(wrapping.seal(&HW_KEY), blob, "each seal has its own nonce");
    }

    #[test]
    fn every_kind_of_bad_blob_is_told_apart() {
        let long_term = WrappingKey::new(&[1; 32], *b"deviceid", Kind::LongTerm).expect("key");
        let ephemeral = WrappingKey::random(Kind::Ephemeral).expect("key");
        let foreign = WrappingKey::new(&[2; 32], *b"otherdev", Kind::LongTerm).expect("key");
        let blob = long_term.seal(&HW_KEY);
        assert_eq!(
            long_term.open(&blob[..75]),
            Err(OpenError::Size { got: 75 })
        );
        for (offset, value) in [(0, b'X'), (4, 2), (5, 3), (6, 1)] {
            let mut bad = blob;
            bad[offset] = value;
            assert_eq!(
                long_term.open(&bad),
                Err(OpenError::Header),
                "byte {offset}"
            );
        }
        assert_eq!(
            ephemeral.open(&blob),
            Err(OpenError::WrongKind {
                wanted: Kind::Ephemeral,
                got: Kind::LongTerm
            })
        );
        assert_eq!(
            foreign.open(&blob),
            Err(OpenError::OtherKey {
                kind: Kind::LongTerm
            })
        );
        for offset in [17, 40, 75] {
            let mut bad = blob;
            bad[offset] ^= 1;
            assert_eq!(
                long_term.open(&bad),
                Err(OpenError::Unauthentic {
                    kind: Kind::LongTerm
                }),
                "byte {offset}"
            );
        }
        // The same id with another key (a device secret that changed).
        let impostor = WrappingKey::new(&[3; 32], *b"deviceid", Kind::LongTerm).expect("key");
        assert_eq!(
            impostor.open(&blob),
            Err(OpenError::Unauthentic {
                kind: Kind::LongTerm
            })
        );
        assert!(!format!("{long_term:?}").contains("[1, 1"));
    }
}
