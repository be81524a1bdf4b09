//! OpenSSL's AES-256-XTS in process: the library built into icelab
//! (`openssl-src`, the same code as the engine's OpenSSL backend), driven
//! the way `openssl speed -evp` drives it: one context, the IV set once,
//! then one `EVP_CipherUpdate` per data unit. That is OpenSSL's own
//! figure. The engine also sets the DUN as IV for every data unit (and
//! borrows a per-thread context): [`Evp::update_at`] does the same, to
//! show what part of the difference that is.

use anyhow::Context;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

/// The version line of the OpenSSL built in (`OpenSSL 3.6.3 ...`).
pub fn version() -> &'static str {
    openssl::version::version()
}

/// An encryption context under `key` with a zero IV, and the update call.
pub struct Evp {
    ctx: CipherCtx,
}

impl Evp {
    pub fn new(key: &[u8; 64]) -> anyhow::Result<Self> {
        let mut ctx = CipherCtx::new().context("OpenSSL allocates a cipher context")?;
        ctx.encrypt_init(Some(Cipher::aes_256_xts()), Some(key), Some(&[0u8; 16]))
            .context("OpenSSL takes the AES-256-XTS key")?;
        Ok(Self { ctx })
    }

    /// Encrypts `data` in place as the data unit `dun`: the IV set, then
    /// the update (what the engine does per unit).
    pub fn update_at(&mut self, data: &mut [u8], dun: u128) -> anyhow::Result<()> {
        self.ctx
            .encrypt_init(None, None, Some(&dun.to_le_bytes()))
            .context("EVP_CipherInit_ex with the IV")?;
        self.update(data)
    }

    /// Encrypts `data` in place, as one data unit under the IV set once.
    pub fn update(&mut self, data: &mut [u8]) -> anyhow::Result<()> {
        self.ctx
            .cipher_update_inplace(data, data.len())
            .context("EVP_CipherUpdate")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_emulator::engine::xts::{Direction, XtsKey};

    /// With the IV set once, every call is data unit 0: the engine gives
    /// the same for DUN 0.
    #[test]
    fn equals_the_engine_at_dun_zero() {
        let key: [u8; 64] = core::array::from_fn(|i| i as u8);
        let mut evp = Evp::new(&key).unwrap();
        let mut data = vec![0x11u8; 4096];
        evp.update(&mut data).unwrap();
        let mut engine = vec![0x11u8; 4096];
        XtsKey::new(&key).crypt(Direction::Encrypt, &mut engine, 4096, 0);
        assert_eq!(data, engine);
        let mut at = vec![0x11u8; 4096];
        evp.update_at(&mut at, 9).unwrap();
        let mut engine = vec![0x11u8; 4096];
        XtsKey::new(&key).crypt(Direction::Encrypt, &mut engine, 4096, 9);
        assert_eq!(at, engine);
        assert!(version().starts_with("OpenSSL 3."), "{}", version());
    }
}
