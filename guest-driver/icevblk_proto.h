/* SPDX-License-Identifier: GPL-2.0 */
/*
 * icelab virtio-blk inline encryption: the wire protocol.
 *
 * Follows the newest public draft of inline encryption for virtio-blk,
 * "variant B" (v4).  docs/PROTOCOL.md in the icelab repository is
 * icelab's definition of it, including the choices the draft leaves open
 * (the framing of control commands, the index of the control queue).
 * Every constant and layout of the draft lives in this one header, so
 * that a later draft is a one-file change; the standard virtio-blk parts
 * come from <uapi/linux/virtio_blk.h>.
 *
 * All draft integers are little-endian.  The names carry the module's
 * prefix so that they cannot collide with definitions a later kernel may
 * add for the same draft.
 */
#ifndef ICEVBLK_PROTO_H
#define ICEVBLK_PROTO_H

#include <linux/build_bug.h>
#include <linux/types.h>

/*
 * Feature bits.  Inline encryption is enabled only when both are
 * negotiated: the control virtqueue carries its key management.
 */
#define ICEVBLK_F_CTRL_VQ		22
#define ICEVBLK_F_INLINE_ENCRYPTION	23

/*
 * The control virtqueue is the last virtqueue: its index is the number of
 * request queues (config num_queues with VIRTIO_BLK_F_MQ, else 1), which
 * config num_queues keeps counting alone.  Control commands (types 29 to
 * 35) are framed like requests: outhdr (sector 0, ioprio 0), the
 * device-readable payload, the device-writable answer, the status byte.
 * The device accepts them only on the control queue, and block I/O,
 * CRYPTO_IN/OUT and the standard requests only on request queues; on the
 * wrong queue it answers UNSUPP.
 */

/*
 * Config space fields, appended after the zoned characteristics.  Read
 * only when ICEVBLK_F_INLINE_ENCRYPTION has been negotiated.
 */
#define ICEVBLK_CFG_MAX_SLOTS		96	/* le16: number of keyslots */
#define ICEVBLK_CFG_MAX_DUN_BYTES	98	/* u8: largest dun_bytes */
#define ICEVBLK_CFG_KEY_TYPES		99	/* u8: ICEVBLK_KEY_TYPES_* */

/* Bits of the config's key_types. */
#define ICEVBLK_KEY_TYPES_RAW		0x01
#define ICEVBLK_KEY_TYPES_HW_WRAPPED	0x02

/* Request types, in virtio_blk_outhdr.type: request queues. */
#define ICEVBLK_T_CRYPTO_OUT		27	/* crypto_msg, data -> */
#define ICEVBLK_T_CRYPTO_IN		28	/* crypto_msg -> data */

/* Request types, in virtio_blk_outhdr.type: the control queue. */
#define ICEVBLK_T_GET_CRYPTO_MODES	29	/* -> le32 modes[2] */
#define ICEVBLK_T_KEYSLOT_PROGRAM	30	/* key_desc -> */
#define ICEVBLK_T_KEYSLOT_EVICT		31	/* key_desc -> */
/*
 * Hardware-wrapped key management, with key_blob payloads and answers.
 * The device offers them when the config's key_types has
 * ICEVBLK_KEY_TYPES_HW_WRAPPED.
 */
#define ICEVBLK_T_DERIVE_SW_SECRET	32	/* key_blob -> sw secret */
#define ICEVBLK_T_GENERATE_KEY		33	/* -> key_blob */
#define ICEVBLK_T_IMPORT_KEY		34	/* key_blob -> key_blob */
#define ICEVBLK_T_PREPARE_KEY		35	/* key_blob -> key_blob */

/*
 * Crypto modes, as numbered in the GET_CRYPTO_MODES answer and in
 * key_desc.crypto_mode.  modes[0] is reserved.  Bit i of modes[m] is set
 * when mode m supports data units of 2^i bytes, the same encoding as
 * blk_crypto_profile.modes_supported[].
 */
#define ICEVBLK_MODE_AES_256_XTS	1
#define ICEVBLK_NR_MODES		2

/* Values of key_desc.key_type. */
#define ICEVBLK_KEY_TYPE_RAW		1
#define ICEVBLK_KEY_TYPE_HW_WRAPPED	2

/* Largest key a key_desc or a key_blob carries. */
#define ICEVBLK_MAX_KEY_BYTES		128

/* Size of the software secret DERIVE_SW_SECRET answers with. */
#define ICEVBLK_SW_SECRET_BYTES		32

/* Number of 64-bit words of a DUN (a 256-bit number, dun[0] lowest). */
#define ICEVBLK_DUN_WORDS		4

/**
 * struct icevblk_crypto_msg - follows the outhdr of CRYPTO_IN and CRYPTO_OUT
 * @slot: keyslot to encrypt or decrypt with
 * @reserved: zero
 * @dun: data unit number of the first data unit, least significant first
 */
struct icevblk_crypto_msg {
	__le32 slot;
	__le32 reserved;
	__le64 dun[ICEVBLK_DUN_WORDS];
} __packed;
static_assert(sizeof(struct icevblk_crypto_msg) == 40);

/**
 * struct icevblk_key_desc - the payload of KEYSLOT_PROGRAM and KEYSLOT_EVICT
 * @slot: keyslot index
 * @bytes: key bytes; only the first @key_size are meaningful
 * @key_size: number of key bytes
 * @crypto_mode: ICEVBLK_MODE_*
 * @key_type: ICEVBLK_KEY_TYPE_*
 * @data_unit_size_bits: log2 of the data unit size in bytes
 * @dun_bytes: number of DUN bytes the slot's requests may use
 *
 * The device expects exactly this many bytes, for EVICT too, and
 * answers IOERR to any other payload size.
 */
struct icevblk_key_desc {
	__le32 slot;
	u8 bytes[ICEVBLK_MAX_KEY_BYTES];
	__le32 key_size;
	__le32 crypto_mode;
	__le32 key_type;
	__le32 data_unit_size_bits;
	__le32 dun_bytes;
} __packed;
static_assert(sizeof(struct icevblk_key_desc) == 152);

/**
 * struct icevblk_key_blob - a key of the hardware-wrapped key commands
 * @key_size: number of key bytes
 * @key: key bytes; only the first @key_size are meaningful
 *
 * The payload of DERIVE_SW_SECRET (an ephemerally-wrapped key),
 * IMPORT_KEY (a raw key) and PREPARE_KEY (a long-term wrapped key), and
 * the answer of GENERATE_KEY, IMPORT_KEY (long-term wrapped) and
 * PREPARE_KEY (ephemerally wrapped).  Wrapped keys are opaque to the
 * driver; their size is the device's.  The device expects exactly this
 * many bytes and answers IOERR to any other payload size.
 */
struct icevblk_key_blob {
	__le32 key_size;
	u8 key[ICEVBLK_MAX_KEY_BYTES];
} __packed;
static_assert(sizeof(struct icevblk_key_blob) == 132);

#endif /* ICEVBLK_PROTO_H */
