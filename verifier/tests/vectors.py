#!/usr/bin/env python3
"""Independent known-answer vectors for icelab-verifier's self-tests.

Uses only Python's hashlib/hmac and the `cryptography` package (AES-XTS),
plus a from-the-paper SipHash-2-4 checked against the paper's own vector.
Run: python3 verifier/tests/vectors.py  (output pasted into src/*.rs tests).
"""
import hashlib, hmac, struct
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

def hkdf_sha512(ikm, info, n, salt=b"\0" * 64):
    prk = hmac.new(salt, ikm, hashlib.sha512).digest()
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha512).digest()
        out += t
        i += 1
    return out[:n]

def fscrypt_expand(mk, ctx, info, n):
    return hkdf_sha512(mk, b"fscrypt\0" + bytes([ctx]) + info, n)

M = 0xFFFFFFFFFFFFFFFF
def rotl(x, b): return ((x << b) | (x >> (64 - b))) & M
def siphash24(key, msg):
    k0, k1 = struct.unpack("<QQ", key)
    v0, v1, v2, v3 = k0 ^ 0x736f6d6570736575, k1 ^ 0x646f72616e646f6d, k0 ^ 0x6c7967656e657261, k1 ^ 0x7465646279746573
    def rnd(v0, v1, v2, v3):
        v0 = (v0 + v1) & M; v1 = rotl(v1, 13) ^ v0; v0 = rotl(v0, 32)
        v2 = (v2 + v3) & M; v3 = rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & M; v3 = rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & M; v1 = rotl(v1, 17) ^ v2; v2 = rotl(v2, 32)
        return v0, v1, v2, v3
    b = len(msg) << 56
    full = len(msg) // 8 * 8
    for i in range(0, full, 8):
        m = struct.unpack("<Q", msg[i:i + 8])[0]
        v3 ^= m; v0, v1, v2, v3 = rnd(*rnd(v0, v1, v2, v3)); v0 ^= m
    for i, c in enumerate(msg[full:]): b |= c << (8 * i)
    v3 ^= b; v0, v1, v2, v3 = rnd(*rnd(v0, v1, v2, v3)); v0 ^= b
    v2 ^= 0xff
    for _ in range(4): v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3

assert siphash24(bytes(range(16)), bytes(range(15))) == 0xa129ca6149be45e5  # SipHash paper, App. A

mk = bytes(range(64))
nonce = bytes(range(100, 116))
uuid = bytes.fromhex("5e9e0e69809644d2b14979c608aea629")
ino = 12
print("hkdf_sha512(ikm=00..3f, info='x', 42) =", hkdf_sha512(mk, b"x", 42).hex())
print("key_identifier =", fscrypt_expand(mk, 1, b"", 16).hex())
pf = fscrypt_expand(mk, 2, nonce, 64)
print("per_file_key =", pf.hex())
l64 = fscrypt_expand(mk, 4, bytes([1]) + uuid, 64)
print("iv_ino_lblk_64_key =", l64.hex())
l32 = fscrypt_expand(mk, 6, bytes([1]) + uuid, 64)
print("iv_ino_lblk_32_key =", l32.hex())
hk = fscrypt_expand(mk, 7, b"", 16)
print("inode_hash_key =", hk.hex())
print("hashed_ino(12) = 0x%08x" % (siphash24(hk, struct.pack("<Q", ino)) & 0xFFFFFFFF))
print("siphash24(key=00..0f, msg=00..3f) = 0x%016x" % siphash24(bytes(range(16)), bytes(range(64))))

def xts(key, dun, pt):
    e = Cipher(algorithms.AES(key), modes.XTS(dun.to_bytes(16, "little"))).encryptor()
    return e.update(pt) + e.finalize()
pt = bytes((i * 7 + 3) & 0xFF for i in range(4096))
print("xts(per_file_key, dun=5, pt[i]=(7i+3)&255, 4096) sha256 =", hashlib.sha256(xts(pf, 5, pt)).hexdigest())
print("xts(lblk64_key, dun=12<<32|3, pt[:512]) sha256 =", hashlib.sha256(xts(l64, (12 << 32) | 3, pt[:512])).hexdigest())
