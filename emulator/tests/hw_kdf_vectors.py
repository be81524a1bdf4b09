#!/usr/bin/env python3
"""Independent known answers for the emulator's hardware KDF
(emulator/src/engine/hw_kdf.rs).

The KDF is NIST SP 800-108 "KDF in Counter Mode" with AES-256-CMAC as the
PRF, keyed by the 32-byte raw (hardware) key, with the label and contexts
of xfstests' src/fscrypt-crypt-util.c (hw_kdf(),
derive_inline_encryption_key(), derive_sw_secret(); the contexts as fixed
by "fscrypt-crypt-util: fix KDF contexts for SM8650", 2025-01-18). This
script writes the definition down again from that source, on top of the
`cryptography` package's CMAC (OpenSSL), and checks that CMAC first
against NIST SP 800-38B's AES-256 examples and the `openssl mac` command.

Run: python3 emulator/tests/hw_kdf_vectors.py  (output pasted into the
unit tests of hw_kdf.rs).
"""
import hashlib, os, subprocess, tempfile
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def aes_256_cmac(key, msg):
    c = cmac.CMAC(algorithms.AES(key))
    c.update(msg)
    return c.finalize()


# NIST SP 800-38B, Appendix D.3 (AES-256), examples 1 and 2.
K = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
assert aes_256_cmac(K, b"").hex() == "028962f61b7bf89efc6b551f4667d983"
assert aes_256_cmac(K, bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")).hex() == "28a7023f452e8f82bd4bf28d8c37c35c"

# SP 800-108 counter mode as fscrypt-crypt-util's hw_kdf() lays it out:
# be32(i) || label[11] || 0x00 || context || be32(output bits).
LABEL = bytes([0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20])
INLINE_CTX = b"inline encryption key" + bytes(6) + bytes([0x02, 0x43, 0x00, 0x82, 0x50, 0x00, 0x00, 0x00, 0x00])
SW_CTX = b"raw secret" + bytes(9) + bytes([0x02, 0x17, 0x00, 0x80, 0x50, 0x00, 0x00, 0x00, 0x00])
assert len(LABEL) == 11 and len(INLINE_CTX) == 36 and len(SW_CTX) == 28


def hw_kdf(key, label, ctx, n):
    assert len(key) == 32 and n % 16 == 0
    out = b""
    for i in range(1, n // 16 + 1):
        msg = i.to_bytes(4, "big") + label + b"\0" + ctx + (n * 8).to_bytes(4, "big")
        out += aes_256_cmac(key, msg)
    return out


def openssl_cmac(key, msg):
    with tempfile.NamedTemporaryFile() as f:
        f.write(msg)
        f.flush()
        out = subprocess.run(
            ["openssl", "mac", "-cipher", "AES-256-CBC", "-macopt", "hexkey:" + key.hex(), "-in", f.name, "CMAC"],
            check=True, capture_output=True, text=True).stdout.strip()
    return bytes.fromhex(out)


keys = {
    "00..1f": bytes(range(32)),
    "ff..e0": bytes(0xFF - i for i in range(32)),
    "(37i+11)&255": bytes((37 * i + 11) & 0xFF for i in range(32)),
}
for name, key in keys.items():
    first = (1).to_bytes(4, "big") + LABEL + b"\0" + SW_CTX + (256).to_bytes(4, "big")
    assert openssl_cmac(key, first) == aes_256_cmac(key, first), "openssl and cryptography disagree"
    print(f"raw key {name}:")
    print("  inline encryption key =", hw_kdf(key, LABEL, INLINE_CTX, 64).hex())
    print("  software secret       =", hw_kdf(key, LABEL, SW_CTX, 32).hex())

# The generic function with another label and context (what the key
# manager uses for its own subkeys), 48 bytes: three blocks.
print("sp800_108(00..1f, label 'icelab test', context 'ctx', 48) =",
      hw_kdf(bytes(range(32)), b"icelab test", b"ctx", 48).hex())

# AES-256-XTS of a 4096-byte data unit (pt[i] = (7i+3)&255, DUN 5) under
# the inline encryption key of raw key 00..1f.
ik = hw_kdf(bytes(range(32)), LABEL, INLINE_CTX, 64)
pt = bytes((i * 7 + 3) & 0xFF for i in range(4096))
e = Cipher(algorithms.AES(ik), modes.XTS((5).to_bytes(16, "little"))).encryptor()
print("xts(inline key of 00..1f, dun 5, 4096 B) sha256 =", hashlib.sha256(e.update(pt) + e.finalize()).hexdigest())
