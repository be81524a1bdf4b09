/* SPDX-License-Identifier: GPL-2.0 */
/*
 * icelab virtio-blk driver with inline encryption: shared definitions.
 *
 * Include this header first in every source file of the module: it sets
 * the module's one log prefix.
 */
#ifndef ICEVBLK_H
#define ICEVBLK_H

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-crypto-profile.h>
#include <linux/blk-mq.h>
#include <linux/completion.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
#include <linux/spinlock.h>
#include <linux/virtio.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "icevblk_proto.h"

/**
 * struct icevblk_vq - one virtqueue
 * @vq: the virtqueue
 * @lock: serializes adding to and harvesting from @vq
 * @name: name given to the transport ("req.N", or "control")
 */
struct icevblk_vq {
	struct virtqueue *vq;
	spinlock_t lock;	/* adding to and harvesting from @vq */
	char name[16];
} ____cacheline_aligned_in_smp;

/**
 * struct icevblk_ctrl - buffers of the device's one control command
 * @out_hdr: request header (device-readable)
 * @payload: the command's payload (device-readable)
 * @payload.key_desc: KEYSLOT_PROGRAM/EVICT payload
 * @payload.key_blob: DERIVE_SW_SECRET, IMPORT_KEY and PREPARE_KEY payload
 * @answer: the command's answer (device-writable)
 * @answer.modes: GET_CRYPTO_MODES answer
 * @answer.id: GET_ID answer
 * @answer.key_blob: GENERATE_KEY, IMPORT_KEY and PREPARE_KEY answer
 * @answer.sw_secret: DERIVE_SW_SECRET answer
 * @status: status byte (device-writable)
 * @done: completed by the virtqueue callback
 *
 * Control commands are the requests that are not block I/O: GET_ID on
 * the first request virtqueue, and GET_CRYPTO_MODES, the keyslot
 * commands and the hardware-wrapped key commands on the control
 * virtqueue.  They bypass blk-mq (see icevblk_ctrl.c for why), one at a
 * time, so one set of buffers per device is enough.  Allocated with
 * kmalloc, never on the stack, because the device reads and writes it
 * directly.  Key material in @payload and @answer is wiped as soon as the
 * device has answered.
 */
struct icevblk_ctrl {
	struct virtio_blk_outhdr out_hdr;
	union {
		struct icevblk_key_desc key_desc;
		struct icevblk_key_blob key_blob;
	} payload;
	union {
		__le32 modes[ICEVBLK_NR_MODES];
		u8 id[VIRTIO_BLK_ID_BYTES];
		struct icevblk_key_blob key_blob;
		u8 sw_secret[ICEVBLK_SW_SECRET_BYTES];
	} answer;
	u8 status;
	struct completion done;
};

/**
 * struct icevblk - one virtio-blk device
 * @vdev: the virtio device; its priv points back here
 * @disk: the block device
 * @tag_set: blk-mq tags, one hardware queue per request virtqueue in use
 * @index: disk index, for the name vd<letters>
 * @num_vqs: number of request virtqueues
 * @num_hw_queues: number of them blk-mq uses (at most one per CPU); the
 *	others exist only so that the control virtqueue gets its index
 * @vqs: the request virtqueues
 * @ctrl_vq: the control virtqueue; its @vq is NULL unless inline
 *	encryption (which needs both ICEVBLK_F_CTRL_VQ and
 *	ICEVBLK_F_INLINE_ENCRYPTION) was negotiated
 * @ctrl_lock: serializes control commands and guards @ctrl_dead
 * @ctrl_dead: set at removal; control commands then fail with -ENODEV
 * @ctrl: control command buffers (protected by @ctrl_lock)
 * @ctrl_room: woken when the device returns buffers on the first
 *	request virtqueue, for a GET_ID waiting for ring space
 * @crypto_enabled: @crypto_profile is initialised and registered
 * @crypto_profile: the inline encryption profile given to blk-crypto
 * @reprogram_work: programs every keyslot again (the engine lost its
 *	keys: a config change interrupt, or a crypto request it failed),
 *	then sends the requests on @retry_list again
 * @retry_lock: guards @retry_list
 * @retry_list: crypto requests the device failed, waiting for
 *	@reprogram_work to send them again
 *
 * Once the disk has been added, the structure lives until the disk's
 * last reference goes away (icevblk_free_disk()): a filesystem that
 * outlives a surprise removal still evicts its keys through
 * @crypto_profile.
 */
struct icevblk {
	struct virtio_device *vdev;
	struct gendisk *disk;
	struct blk_mq_tag_set tag_set;
	int index;

	unsigned int num_vqs;
	unsigned int num_hw_queues;
	struct icevblk_vq *vqs;
	struct icevblk_vq ctrl_vq;

	struct mutex ctrl_lock;	/* one control command at a time */
	bool ctrl_dead;
	struct icevblk_ctrl *ctrl;
	wait_queue_head_t ctrl_room;

	bool crypto_enabled;
	struct blk_crypto_profile crypto_profile;
	struct work_struct reprogram_work;
	spinlock_t retry_lock;	/* guards retry_list */
	struct list_head retry_list;
};

/**
 * struct icevblk_req - per-request driver data (the blk-mq pdu)
 * @out_hdr: request header (device-readable)
 * @crypto_msg: keyslot and DUN (device-readable), for CRYPTO_IN/OUT only
 * @has_crypto: @crypto_msg is part of the request
 * @crypto_retries: times the request was sent again after the device
 *	failed it with its keyslots reprogrammed (see icevblk_crypto.c)
 * @status: status byte (device-writable)
 * @sg_table: data scatterlist
 * @sg: inline scatterlist entries backing @sg_table
 */
struct icevblk_req {
	struct virtio_blk_outhdr out_hdr;
	struct icevblk_crypto_msg crypto_msg;
	bool has_crypto;
	u8 crypto_retries;
	u8 status;
	struct sg_table sg_table;
	struct scatterlist sg[];
};

/**
 * icevblk_crypto_negotiated() - were both inline encryption bits negotiated?
 * @vdev: the virtio device, with its features negotiated
 *
 * The draft enables inline encryption only with the control virtqueue,
 * which carries its key management.
 *
 * Context: Any context.
 * Return: true when ICEVBLK_F_INLINE_ENCRYPTION and ICEVBLK_F_CTRL_VQ
 * were both negotiated.
 */
static inline bool icevblk_crypto_negotiated(struct virtio_device *vdev)
{
	return virtio_has_feature(vdev, ICEVBLK_F_INLINE_ENCRYPTION) &&
	       virtio_has_feature(vdev, ICEVBLK_F_CTRL_VQ);
}

/* icevblk_io.c */
extern const struct blk_mq_ops icevblk_mq_ops;
blk_status_t icevblk_status_to_blk(u8 status);
void icevblk_vq_done(struct virtqueue *vq);

/* icevblk_ctrl.c */
void icevblk_ctrl_vq_done(struct virtqueue *vq);
int icevblk_ctrl_get_id(struct icevblk *vblk, char id[VIRTIO_BLK_ID_BYTES]);
int icevblk_ctrl_get_crypto_modes(struct icevblk *vblk,
				  u32 modes[ICEVBLK_NR_MODES]);
int icevblk_ctrl_keyslot(struct icevblk *vblk, u32 type,
			 const struct icevblk_key_desc *desc);
int icevblk_ctrl_wrapped_key(struct icevblk *vblk, u32 type,
			     const u8 *key, size_t key_size,
			     void *answer, size_t answer_size);

/* icevblk_crypto.c */
#ifdef CONFIG_BLK_INLINE_ENCRYPTION
int icevblk_crypto_setup(struct icevblk *vblk);
void icevblk_crypto_destroy(struct icevblk *vblk);
blk_status_t icevblk_crypto_prep_rq(struct icevblk *vblk, struct request *rq,
				    struct icevblk_req *vbr);
void icevblk_crypto_reprogram_work(struct work_struct *work);
bool icevblk_crypto_retry_rq(struct icevblk *vblk, struct request *rq,
			     struct icevblk_req *vbr);
void icevblk_crypto_stop(struct icevblk *vblk);
#else
static inline int icevblk_crypto_setup(struct icevblk *vblk)
{
	return 0;
}

static inline void icevblk_crypto_destroy(struct icevblk *vblk)
{
}

static inline blk_status_t icevblk_crypto_prep_rq(struct icevblk *vblk,
						  struct request *rq,
						  struct icevblk_req *vbr)
{
	vbr->has_crypto = false;
	return BLK_STS_OK;
}

static inline void icevblk_crypto_reprogram_work(struct work_struct *work)
{
}

static inline bool icevblk_crypto_retry_rq(struct icevblk *vblk,
					   struct request *rq,
					   struct icevblk_req *vbr)
{
	return false;
}

static inline void icevblk_crypto_stop(struct icevblk *vblk)
{
}
#endif /* CONFIG_BLK_INLINE_ENCRYPTION */

#endif /* ICEVBLK_H */
