// SPDX-License-Identifier: GPL-2.0
/*
 * icelab virtio-blk driver: inline encryption.
 *
 * When ICEVBLK_F_INLINE_ENCRYPTION (the draft's bit 23) and
 * ICEVBLK_F_CTRL_VQ (bit 22) are both negotiated, the device is an inline
 * crypto engine with keyslots, as a UFS or eMMC host controller would be,
 * managed through its control virtqueue.  This file tells blk-crypto what
 * the engine can do, empties its keyslots at probe, programs and evicts
 * them on blk-crypto's behalf, and turns a request's crypto context into
 * the draft's crypto_msg.  When the engine loses its keys (it restarted),
 * it programs them again and resends the requests the engine failed.
 *
 * The key types blk-crypto gets are those of the config's key_types:
 * raw keys, and hardware-wrapped keys, for which the engine is its own
 * key manager (import, generate, prepare, derive the software secret;
 * see "Hardware-wrapped keys" below).  A device offering only
 * hardware-wrapped keys leaves raw keys to blk-crypto-fallback.
 */
#include "icevblk.h"

#include <linux/blk-crypto.h>
#include <linux/minmax.h>
#include <linux/string.h>
#include <linux/virtio_config.h>

static_assert(BLK_CRYPTO_DUN_ARRAY_SIZE == ICEVBLK_DUN_WORDS);

static struct icevblk *icevblk_from_profile(struct blk_crypto_profile *profile)
{
	return container_of(profile, struct icevblk, crypto_profile);
}

/*
 * Fills @desc for @key in @slot.  Evicting does not send the key: the
 * device empties the slot whatever it holds.
 */
static int icevblk_fill_key_desc(struct icevblk_key_desc *desc,
				 const struct blk_crypto_key *key,
				 unsigned int slot, bool with_key)
{
	const struct blk_crypto_config *cfg = &key->crypto_cfg;
	u32 key_type;

	if (cfg->crypto_mode != BLK_ENCRYPTION_MODE_AES_256_XTS)
		return -EOPNOTSUPP;
	switch (cfg->key_type) {
	case BLK_CRYPTO_KEY_TYPE_RAW:
		key_type = ICEVBLK_KEY_TYPE_RAW;
		break;
	case BLK_CRYPTO_KEY_TYPE_HW_WRAPPED:
		key_type = ICEVBLK_KEY_TYPE_HW_WRAPPED;
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (key->size > sizeof(desc->bytes))
		return -EINVAL;

	memset(desc, 0, sizeof(*desc));
	desc->slot = cpu_to_le32(slot);
	if (with_key)
		memcpy(desc->bytes, key->bytes, key->size);
	desc->key_size = cpu_to_le32(key->size);
	desc->crypto_mode = cpu_to_le32(ICEVBLK_MODE_AES_256_XTS);
	desc->key_type = cpu_to_le32(key_type);
	desc->data_unit_size_bits = cpu_to_le32(key->data_unit_size_bits);
	desc->dun_bytes = cpu_to_le32(cfg->dun_bytes);
	return 0;
}

static int icevblk_keyslot_cmd(struct blk_crypto_profile *profile,
			       const struct blk_crypto_key *key,
			       unsigned int slot, u32 type)
{
	struct icevblk *vblk = icevblk_from_profile(profile);
	bool program = type == ICEVBLK_T_KEYSLOT_PROGRAM;
	struct icevblk_key_desc desc;
	int err;

	err = icevblk_fill_key_desc(&desc, key, slot, program);
	if (!err)
		err = icevblk_ctrl_keyslot(vblk, type, &desc);
	memzero_explicit(&desc, sizeof(desc));

	/* A device that is gone holds no keys. */
	if (!program && err == -ENODEV)
		return 0;
	if (err)
		dev_warn_ratelimited(&vblk->vdev->dev,
				     "keyslot %u: %s failed: %d\n", slot,
				     program ? "program" : "evict", err);
	return err;
}

static int icevblk_keyslot_program(struct blk_crypto_profile *profile,
				   const struct blk_crypto_key *key,
				   unsigned int slot)
{
	return icevblk_keyslot_cmd(profile, key, slot,
				   ICEVBLK_T_KEYSLOT_PROGRAM);
}

static int icevblk_keyslot_evict(struct blk_crypto_profile *profile,
				 const struct blk_crypto_key *key,
				 unsigned int slot)
{
	return icevblk_keyslot_cmd(profile, key, slot,
				   ICEVBLK_T_KEYSLOT_EVICT);
}

/*
 * Hardware-wrapped keys.  The engine keeps the keys that encrypt data to
 * itself; the kernel only ever holds wrapped keys, opaque bytes whose
 * size is the device's: long-term wrapped ones (IMPORT_KEY, GENERATE_KEY),
 * which userspace stores, and ephemerally-wrapped ones (PREPARE_KEY),
 * which fscrypt hands to blk-crypto and which keyslots are programmed
 * with (key_type ICEVBLK_KEY_TYPE_HW_WRAPPED in the key_desc).
 *
 * The device answers IOERR to a key it refuses: malformed, of the wrong
 * kind, sealed by another device or (ephemerally-wrapped) before its
 * last reset, or altered.  blk-crypto wants -EBADMSG for an invalid
 * wrapped key (derive_sw_secret, prepare_key) and the ioctls' -EINVAL
 * for a raw key that cannot be imported; UNSUPP stays -EOPNOTSUPP.
 */
static_assert(BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE <= ICEVBLK_MAX_KEY_BYTES);
static_assert(BLK_CRYPTO_SW_SECRET_SIZE == ICEVBLK_SW_SECRET_BYTES);

/* @err of a command that sent a key, with -EIO turned into @bad_key. */
static int icevblk_key_errno(int err, int bad_key)
{
	return err == -EIO ? bad_key : err;
}

/*
 * Sends @type (GENERATE_KEY with no @key, IMPORT_KEY or PREPARE_KEY),
 * whose answer is a wrapped key, and copies that into @out.  Returns its
 * size, @bad_key when the device refuses @key, or another -errno.
 */
static int icevblk_wrapped_key_cmd(struct blk_crypto_profile *profile,
				   u32 type, const u8 *key, size_t key_size,
				   int bad_key,
				   u8 out[BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE])
{
	struct icevblk *vblk = icevblk_from_profile(profile);
	struct icevblk_key_blob blob;
	u32 size;
	int ret;

	if (key_size > ICEVBLK_MAX_KEY_BYTES)
		return bad_key;
	ret = icevblk_ctrl_wrapped_key(vblk, type, key, key_size, &blob,
				       sizeof(blob));
	if (ret)
		return icevblk_key_errno(ret, bad_key);

	size = le32_to_cpu(blob.key_size);
	if (size && size <= BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE) {
		memcpy(out, blob.key, size);
		ret = size;
	} else {
		dev_warn_ratelimited(&vblk->vdev->dev,
				     "command %u answered a wrapped key of %u bytes\n",
				     type, size);
		ret = -EIO;
	}
	memzero_explicit(&blob, sizeof(blob));
	return ret;
}

static int icevblk_derive_sw_secret(struct blk_crypto_profile *profile,
				    const u8 *eph_key, size_t eph_key_size,
				    u8 sw_secret[BLK_CRYPTO_SW_SECRET_SIZE])
{
	struct icevblk *vblk = icevblk_from_profile(profile);
	int err;

	if (eph_key_size > ICEVBLK_MAX_KEY_BYTES)
		return -EBADMSG;
	err = icevblk_ctrl_wrapped_key(vblk, ICEVBLK_T_DERIVE_SW_SECRET,
				       eph_key, eph_key_size, sw_secret,
				       BLK_CRYPTO_SW_SECRET_SIZE);
	return icevblk_key_errno(err, -EBADMSG);
}

static int icevblk_import_key(struct blk_crypto_profile *profile,
			      const u8 *raw_key, size_t raw_key_size,
			      u8 lt_key[BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE])
{
	return icevblk_wrapped_key_cmd(profile, ICEVBLK_T_IMPORT_KEY, raw_key,
				       raw_key_size, -EINVAL, lt_key);
}

static int icevblk_generate_key(struct blk_crypto_profile *profile,
				u8 lt_key[BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE])
{
	return icevblk_wrapped_key_cmd(profile, ICEVBLK_T_GENERATE_KEY, NULL, 0,
				       -EIO, lt_key);
}

static int icevblk_prepare_key(struct blk_crypto_profile *profile,
			       const u8 *lt_key, size_t lt_key_size,
			       u8 eph_key[BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE])
{
	return icevblk_wrapped_key_cmd(profile, ICEVBLK_T_PREPARE_KEY, lt_key,
				       lt_key_size, -EBADMSG, eph_key);
}

static const struct blk_crypto_ll_ops icevblk_crypto_ops = {
	.keyslot_program	= icevblk_keyslot_program,
	.keyslot_evict		= icevblk_keyslot_evict,
	.derive_sw_secret	= icevblk_derive_sw_secret,
	.import_key		= icevblk_import_key,
	.generate_key		= icevblk_generate_key,
	.prepare_key		= icevblk_prepare_key,
};

/*
 * Empties every keyslot, so that no key a previous user of the device
 * programmed (an earlier boot, or an earlier probe) survives into this
 * one; blk-crypto starts out believing that every slot is empty.
 * Evicting needs nothing but the slot index.
 */
static int icevblk_evict_all(struct icevblk *vblk, unsigned int slots)
{
	const u32 type = ICEVBLK_T_KEYSLOT_EVICT;
	struct icevblk_key_desc desc;
	unsigned int slot;
	int err;

	for (slot = 0; slot < slots; slot++) {
		memset(&desc, 0, sizeof(desc));
		desc.slot = cpu_to_le32(slot);
		err = icevblk_ctrl_keyslot(vblk, type, &desc);
		if (err) {
			dev_warn(&vblk->vdev->dev, "clearing keyslot %u failed: %d; not using inline encryption\n",
				 slot, err);
			return err;
		}
	}
	return 0;
}

/*
 * Reads the engine's capabilities.  Returns false, after saying why, when
 * the device offers nothing blk-crypto can use natively.
 */
static bool icevblk_crypto_caps(struct icevblk *vblk, unsigned int *slots,
				unsigned int *dun_bytes, u32 *xts_units,
				unsigned int *key_types)
{
	struct virtio_device *vdev = vblk->vdev;
	u32 modes[ICEVBLK_NR_MODES];
	u8 offered;
	int err;

	*slots = virtio_cread16(vdev, ICEVBLK_CFG_MAX_SLOTS);
	*dun_bytes = virtio_cread8(vdev, ICEVBLK_CFG_MAX_DUN_BYTES);
	offered = virtio_cread8(vdev, ICEVBLK_CFG_KEY_TYPES);

	if (!*slots || !*dun_bytes) {
		dev_warn(&vdev->dev, "inline encryption offered with %u keyslots and %u DUN bytes; not using it\n",
			 *slots, *dun_bytes);
		return false;
	}
	*key_types = 0;
	if (offered & ICEVBLK_KEY_TYPES_RAW)
		*key_types |= BLK_CRYPTO_KEY_TYPE_RAW;
	if (offered & ICEVBLK_KEY_TYPES_HW_WRAPPED)
		*key_types |= BLK_CRYPTO_KEY_TYPE_HW_WRAPPED;
	if (!*key_types) {
		dev_warn(&vdev->dev, "inline encryption offers no raw and no hardware-wrapped keys (key_types %#x); not using it\n",
			 offered);
		return false;
	}
	/* blk-crypto carries at most a 32-byte DUN. */
	*dun_bytes = min_t(unsigned int, *dun_bytes, BLK_CRYPTO_MAX_IV_SIZE);

	err = icevblk_ctrl_get_crypto_modes(vblk, modes);
	if (err) {
		dev_warn(&vdev->dev, "GET_CRYPTO_MODES failed: %d; not using inline encryption\n",
			 err);
		return false;
	}
	*xts_units = modes[ICEVBLK_MODE_AES_256_XTS];
	if (!*xts_units) {
		dev_warn(&vdev->dev, "inline encryption offers no AES-256-XTS data unit size; not using it\n");
		return false;
	}
	return true;
}

/* For the log: the blk-crypto key types in @key_types. */
static const char *icevblk_key_types_name(unsigned int key_types)
{
	switch (key_types) {
	case BLK_CRYPTO_KEY_TYPE_RAW:
		return "raw keys";
	case BLK_CRYPTO_KEY_TYPE_HW_WRAPPED:
		return "hardware-wrapped keys";
	default:
		return "raw and hardware-wrapped keys";
	}
}

/**
 * icevblk_crypto_setup() - give blk-crypto the device's inline crypto engine
 * @vblk: the device, with its virtqueues ready and its disk allocated but
 *	not yet added
 *
 * Reads max_slots, max_dun_bytes and key_types from the config space,
 * asks the device for its modes[] (GET_CRYPTO_MODES), sets up a crypto
 * profile with the key types the device offers (raw, hardware-wrapped),
 * evicts every keyslot (KEYSLOT_EVICT) and registers the profile on the
 * disk's queue.  It must run before the disk is added, so that the
 * queue's crypto sysfs directory is created with it.
 *
 * A device without both features, whose capabilities blk-crypto cannot
 * use, or whose keyslots cannot be emptied, leaves the disk without a
 * profile: not an error, blk-crypto then uses its fallback.
 *
 * Context: Process context, may sleep.  The device must be DRIVER_OK.
 * Return: 0 on success or when inline encryption is not used, -ENOMEM
 * when the profile cannot be allocated.
 */
int icevblk_crypto_setup(struct icevblk *vblk)
{
	struct blk_crypto_profile *profile = &vblk->crypto_profile;
	struct virtio_device *vdev = vblk->vdev;
	unsigned int slots, dun_bytes, key_types;
	u32 xts_units;
	int err;

	/* Both bits or nothing: the draft's key management needs the queue. */
	if (!virtio_has_feature(vdev, ICEVBLK_F_INLINE_ENCRYPTION)) {
		dev_info(&vdev->dev, "no inline encryption: the device has no inline crypto engine\n");
		return 0;
	}
	if (!icevblk_crypto_negotiated(vdev)) {
		dev_info(&vdev->dev, "no inline encryption: the device has no control virtqueue (VIRTIO_BLK_F_CTRL_VQ)\n");
		return 0;
	}
	if (!icevblk_crypto_caps(vblk, &slots, &dun_bytes, &xts_units,
				 &key_types))
		return 0;

	err = blk_crypto_profile_init(profile, slots);
	if (err)
		return err;
	profile->ll_ops = icevblk_crypto_ops;
	profile->max_dun_bytes_supported = dun_bytes;
	profile->key_types_supported = key_types;
	profile->modes_supported[BLK_ENCRYPTION_MODE_AES_256_XTS] = xts_units;

	if (icevblk_evict_all(vblk, slots))
		goto out_destroy_profile;
	if (!blk_crypto_register(profile, vblk->disk->queue))
		goto out_destroy_profile;
	vblk->crypto_enabled = true;
	dev_info(&vdev->dev, "inline encryption: %u keyslots, %u DUN bytes, AES-256-XTS data units %#x, %s\n",
		 slots, dun_bytes, xts_units, icevblk_key_types_name(key_types));
	return 0;

out_destroy_profile:
	blk_crypto_profile_destroy(profile);
	return 0;
}

/**
 * icevblk_crypto_destroy() - free the crypto profile
 * @vblk: the device
 *
 * Context: Process context.  The disk's queue must no longer issue I/O.
 */
void icevblk_crypto_destroy(struct icevblk *vblk)
{
	if (vblk->crypto_enabled)
		blk_crypto_profile_destroy(&vblk->crypto_profile);
	vblk->crypto_enabled = false;
}

/**
 * icevblk_crypto_prep_rq() - turn a request's crypto context into a crypto_msg
 * @vblk: the device
 * @rq: the block request
 * @vbr: its driver data, with the outhdr already filled in
 *
 * blk-crypto has already given every request that carries a crypto
 * context a keyslot programmed with its key.  Such a READ becomes
 * CRYPTO_IN and such a WRITE CRYPTO_OUT, with the keyslot index and the
 * DUN of the request's first data unit.
 *
 * Context: Any context (called from ->queue_rq).
 * Return: BLK_STS_OK, or BLK_STS_IOERR for a crypto context on a request
 * the draft cannot encrypt or one that has no keyslot.
 */
blk_status_t icevblk_crypto_prep_rq(struct icevblk *vblk, struct request *rq,
				    struct icevblk_req *vbr)
{
	const struct bio_crypt_ctx *bc = rq->crypt_ctx;
	u32 type;
	int i;

	vbr->has_crypto = false;
	if (!bc)
		return BLK_STS_OK;
	if (WARN_ON_ONCE(!rq->crypt_keyslot))
		return BLK_STS_IOERR;

	switch (req_op(rq)) {
	case REQ_OP_READ:
		type = ICEVBLK_T_CRYPTO_IN;
		break;
	case REQ_OP_WRITE:
		type = ICEVBLK_T_CRYPTO_OUT;
		break;
	default:
		WARN_ON_ONCE(1);
		return BLK_STS_IOERR;
	}

	vbr->crypto_msg.slot =
		cpu_to_le32(blk_crypto_keyslot_index(rq->crypt_keyslot));
	vbr->crypto_msg.reserved = 0;
	for (i = 0; i < ICEVBLK_DUN_WORDS; i++)
		vbr->crypto_msg.dun[i] = cpu_to_le64(bc->bc_dun[i]);
	vbr->out_hdr.type = cpu_to_virtio32(vblk->vdev, type);
	vbr->has_crypto = true;
	return BLK_STS_OK;
}

/*
 * Keys lost by the engine.  An inline crypto engine forgets its keys when
 * it restarts: here, when the device process is killed and started again
 * while the guest runs, and QEMU reconnects to it.  QEMU then sends a
 * config change interrupt, and the device fails every CRYPTO_IN/OUT on a
 * keyslot it no longer holds (IOERR).  Both lead here: the keyslots are
 * programmed again from blk-crypto's own record of them, and a crypto
 * request the device failed is sent again, a bounded number of times,
 * instead of failing the I/O.  The requests the old device left
 * unanswered are resent by the transport itself (the rings are rewound to
 * the last answered request); some of them may reach the new device
 * before the keys do, and end up here.
 */
#define ICEVBLK_CRYPTO_RETRIES 3

/**
 * icevblk_crypto_reprogram_work() - program every keyslot again, resend
 * @work: vblk->reprogram_work
 *
 * Context: Process context (a work item).  Takes the crypto profile's
 * lock through blk_crypto_reprogram_all_keys().
 */
void icevblk_crypto_reprogram_work(struct work_struct *work)
{
	struct icevblk *vblk = container_of(work, struct icevblk,
					    reprogram_work);
	struct request *rq, *next;
	unsigned long flags;
	LIST_HEAD(parked);
	unsigned int count = 0;

	spin_lock_irqsave(&vblk->retry_lock, flags);
	list_splice_init(&vblk->retry_list, &parked);
	spin_unlock_irqrestore(&vblk->retry_lock, flags);

	if (vblk->crypto_enabled)
		blk_crypto_reprogram_all_keys(&vblk->crypto_profile);

	list_for_each_entry_safe(rq, next, &parked, queuelist) {
		list_del_init(&rq->queuelist);
		blk_mq_requeue_request(rq, false);
		count++;
	}
	if (count)
		blk_mq_kick_requeue_list(vblk->disk->queue);
	dev_info_ratelimited(&vblk->vdev->dev,
			     "keyslots programmed again; %u crypto request(s) sent again\n",
			     count);
}

/**
 * icevblk_crypto_retry_rq() - keep a failed crypto request for a retry
 * @vblk: the device
 * @rq: a request the device has answered, its data already unmapped
 * @vbr: its driver data
 *
 * Context: Any context (called from ->complete).
 * Return: true when @rq was a crypto request the device failed and it
 * waits for icevblk_crypto_reprogram_work() to send it again: the caller
 * must not end it.  False otherwise.
 */
bool icevblk_crypto_retry_rq(struct icevblk *vblk, struct request *rq,
			     struct icevblk_req *vbr)
{
	unsigned long flags;

	if (!vblk->crypto_enabled || !vbr->has_crypto ||
	    vbr->status != VIRTIO_BLK_S_IOERR ||
	    vbr->crypto_retries >= ICEVBLK_CRYPTO_RETRIES)
		return false;
	vbr->crypto_retries++;
	spin_lock_irqsave(&vblk->retry_lock, flags);
	list_add_tail(&rq->queuelist, &vblk->retry_list);
	spin_unlock_irqrestore(&vblk->retry_lock, flags);
	schedule_work(&vblk->reprogram_work);
	return true;
}

/**
 * icevblk_crypto_stop() - no more retries: the device is going away
 * @vblk: the device, its control commands already failing with -ENODEV
 *
 * Waits for icevblk_crypto_reprogram_work() and fails the requests still
 * waiting for a retry.
 *
 * Context: Process context, may sleep.
 */
void icevblk_crypto_stop(struct icevblk *vblk)
{
	struct request *rq, *next;
	unsigned long flags;
	LIST_HEAD(parked);

	cancel_work_sync(&vblk->reprogram_work);
	spin_lock_irqsave(&vblk->retry_lock, flags);
	list_splice_init(&vblk->retry_list, &parked);
	spin_unlock_irqrestore(&vblk->retry_lock, flags);
	list_for_each_entry_safe(rq, next, &parked, queuelist) {
		list_del_init(&rq->queuelist);
		blk_mq_end_request(rq, BLK_STS_IOERR);
	}
}
