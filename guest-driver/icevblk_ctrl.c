// SPDX-License-Identifier: GPL-2.0
/*
 * icelab virtio-blk driver: control commands.
 *
 * GET_CRYPTO_MODES, the keyslot commands (KEYSLOT_PROGRAM, KEYSLOT_EVICT)
 * and the hardware-wrapped key commands (DERIVE_SW_SECRET, GENERATE_KEY,
 * IMPORT_KEY, PREPARE_KEY) go on the control virtqueue, the last one,
 * which the device reserves for them; GET_ID, a standard request, goes on
 * the first request virtqueue.  Both are put on
 * the virtqueue directly, not through blk-mq, one at a time, and the
 * caller sleeps until the device answers.
 *
 * Why not a driver-private blk-mq request (as virtio_blk does for
 * GET_ID): blk-crypto programs keyslots from blk_mq_submit_bio(), while
 * the submitting task already holds a tag and a reference on the queue's
 * usage counter.  Allocating a second request there can wait forever: on
 * the tags, if every one of them is held by a task that waits for a
 * keyslot, and on the queue, if anyone starts to freeze it (a scheduler
 * or limits change), since the freeze waits for the reference the
 * submitter holds.  The virtqueue itself has neither dependency, and the
 * control virtqueue, which block I/O never fills, always has room for
 * the one command.
 */
#include "icevblk.h"

#include <linux/sched.h>
#include <linux/string.h>
#include <linux/virtio_config.h>

/*
 * Puts the prepared control command on @ivq (the control virtqueue, or
 * the first request virtqueue for GET_ID) and waits for the answer.
 * Called with vblk->ctrl_lock held.
 */
static int icevblk_ctrl_exec(struct icevblk *vblk, struct icevblk_vq *ivq,
			     struct scatterlist **sgs, unsigned int num_out,
			     unsigned int num_in)
{
	struct icevblk_ctrl *ctrl = vblk->ctrl;
	unsigned long flags;
	bool notify;
	int err;

	lockdep_assert_held(&vblk->ctrl_lock);
	if (vblk->ctrl_dead)
		return -ENODEV;
	if (!ivq->vq)
		return -EOPNOTSUPP;

	reinit_completion(&ctrl->done);
	ctrl->status = U8_MAX;
	for (;;) {
		notify = false;
		spin_lock_irqsave(&ivq->lock, flags);
		err = virtqueue_add_sgs(ivq->vq, sgs, num_out, num_in, ctrl,
					GFP_ATOMIC);
		if (!err)
			notify = virtqueue_kick_prepare(ivq->vq);
		spin_unlock_irqrestore(&ivq->lock, flags);
		/*
		 * The control virtqueue holds nothing but this command: no
		 * room there means a ring too small ever to take it.
		 */
		if (err != -ENOSPC || ivq == &vblk->ctrl_vq)
			break;
		/*
		 * The request ring is full of block I/O: wait until the
		 * device returns some.  The timeout only re-checks, in case
		 * the wakeup raced with our test.
		 */
		wait_event_timeout(vblk->ctrl_room,
				   READ_ONCE(ivq->vq->num_free) >= num_out + num_in,
				   HZ);
	}
	if (err)
		return err;
	if (notify)
		virtqueue_notify(ivq->vq);

	/*
	 * Uninterruptible: the device owns the buffers until it answers,
	 * so there is nothing to give back early.
	 */
	wait_for_completion_io(&ctrl->done);
	return blk_status_to_errno(icevblk_status_to_blk(ctrl->status));
}

static void icevblk_ctrl_set_type(struct icevblk *vblk, u32 type)
{
	struct icevblk_ctrl *ctrl = vblk->ctrl;

	ctrl->out_hdr.type = cpu_to_virtio32(vblk->vdev, type);
	ctrl->out_hdr.ioprio = 0;
	ctrl->out_hdr.sector = 0;
}

/* A command with nothing to send and @len bytes of answer, on @ivq. */
static int icevblk_ctrl_query(struct icevblk *vblk, struct icevblk_vq *ivq,
			      u32 type, size_t len)
{
	struct icevblk_ctrl *ctrl = vblk->ctrl;
	struct scatterlist hdr, answer, status;
	struct scatterlist *sgs[] = { &hdr, &answer, &status };

	icevblk_ctrl_set_type(vblk, type);
	memset(&ctrl->answer, 0, sizeof(ctrl->answer));
	sg_init_one(&hdr, &ctrl->out_hdr, sizeof(ctrl->out_hdr));
	sg_init_one(&answer, &ctrl->answer, len);
	sg_init_one(&status, &ctrl->status, sizeof(ctrl->status));
	return icevblk_ctrl_exec(vblk, ivq, sgs, 1, 2);
}

/**
 * icevblk_ctrl_vq_done() - control virtqueue callback: wake the waiter
 * @vq: the control virtqueue
 *
 * The control virtqueue carries only the one command of vblk->ctrl, so
 * every buffer the device returns completes it.
 *
 * Context: Interrupt context.  Takes and releases the control
 * virtqueue's lock.
 */
void icevblk_ctrl_vq_done(struct virtqueue *vq)
{
	struct icevblk *vblk = vq->vdev->priv;
	struct icevblk_vq *ivq = &vblk->ctrl_vq;
	unsigned long flags;
	unsigned int len;
	void *token;

	spin_lock_irqsave(&ivq->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((token = virtqueue_get_buf(vq, &len))) {
			if (!WARN_ON_ONCE(token != vblk->ctrl))
				complete(&vblk->ctrl->done);
		}
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&ivq->lock, flags);
}

/**
 * icevblk_ctrl_get_id() - read the device's id string (GET_ID)
 * @vblk: the device
 * @id: where to store the answer; not NUL-terminated when 20 bytes long
 *
 * GET_ID is a standard request: it goes on the first request virtqueue,
 * and waits for room there when block I/O fills the ring.
 *
 * Context: Process context, may sleep.  Takes and releases
 * vblk->ctrl_lock.
 * Return: 0 on success, -EOPNOTSUPP or -EIO when the device refuses,
 * -ENODEV after removal, or another -errno from the virtqueue.
 */
int icevblk_ctrl_get_id(struct icevblk *vblk, char id[VIRTIO_BLK_ID_BYTES])
{
	int err;

	mutex_lock(&vblk->ctrl_lock);
	err = icevblk_ctrl_query(vblk, &vblk->vqs[0], VIRTIO_BLK_T_GET_ID,
				 sizeof(vblk->ctrl->answer.id));
	if (!err)
		memcpy(id, vblk->ctrl->answer.id, VIRTIO_BLK_ID_BYTES);
	mutex_unlock(&vblk->ctrl_lock);
	return err;
}

/**
 * icevblk_ctrl_get_crypto_modes() - read the device's modes[] table
 * @vblk: the device
 * @modes: where to store the table, in CPU byte order
 *
 * Sent on the control virtqueue.
 *
 * Context: Process context, may sleep.  Takes and releases
 * vblk->ctrl_lock.
 * Return: 0 on success, -EOPNOTSUPP when the device refuses or has no
 * control virtqueue, -EIO when it fails the command, -ENODEV after
 * removal, or another -errno from the virtqueue.
 */
int icevblk_ctrl_get_crypto_modes(struct icevblk *vblk,
				  u32 modes[ICEVBLK_NR_MODES])
{
	int err, i;

	mutex_lock(&vblk->ctrl_lock);
	err = icevblk_ctrl_query(vblk, &vblk->ctrl_vq,
				 ICEVBLK_T_GET_CRYPTO_MODES,
				 sizeof(vblk->ctrl->answer.modes));
	if (!err)
		for (i = 0; i < ICEVBLK_NR_MODES; i++)
			modes[i] = le32_to_cpu(vblk->ctrl->answer.modes[i]);
	mutex_unlock(&vblk->ctrl_lock);
	return err;
}

/**
 * icevblk_ctrl_keyslot() - program or evict a keyslot and wait for it
 * @vblk: the device
 * @type: ICEVBLK_T_KEYSLOT_PROGRAM or ICEVBLK_T_KEYSLOT_EVICT
 * @desc: the key descriptor to send
 *
 * Sent on the control virtqueue.  The descriptor is copied into the
 * device's command buffer, which is wiped as soon as the device has
 * answered, whatever the answer.
 *
 * Context: Process context, may sleep.  Takes and releases
 * vblk->ctrl_lock.  blk-crypto calls in with its profile lock held.
 * Return: 0 on success, -EOPNOTSUPP when the device answers UNSUPP or
 * has no control virtqueue, -EIO when it answers IOERR, -ENODEV after
 * removal, or another -errno from the virtqueue.
 */
int icevblk_ctrl_keyslot(struct icevblk *vblk, u32 type,
			 const struct icevblk_key_desc *desc)
{
	struct icevblk_ctrl *ctrl = vblk->ctrl;
	struct scatterlist hdr, payload, status;
	struct scatterlist *sgs[] = { &hdr, &payload, &status };
	int err;

	mutex_lock(&vblk->ctrl_lock);
	icevblk_ctrl_set_type(vblk, type);
	memcpy(&ctrl->payload.key_desc, desc, sizeof(ctrl->payload.key_desc));
	sg_init_one(&hdr, &ctrl->out_hdr, sizeof(ctrl->out_hdr));
	sg_init_one(&payload, &ctrl->payload.key_desc,
		    sizeof(ctrl->payload.key_desc));
	sg_init_one(&status, &ctrl->status, sizeof(ctrl->status));
	err = icevblk_ctrl_exec(vblk, &vblk->ctrl_vq, sgs, 2, 1);
	memzero_explicit(&ctrl->payload, sizeof(ctrl->payload));
	mutex_unlock(&vblk->ctrl_lock);
	return err;
}

/**
 * icevblk_ctrl_wrapped_key() - send a hardware-wrapped key command
 * @vblk: the device
 * @type: ICEVBLK_T_DERIVE_SW_SECRET, ICEVBLK_T_GENERATE_KEY,
 *	ICEVBLK_T_IMPORT_KEY or ICEVBLK_T_PREPARE_KEY
 * @key: the key to send in a key_blob, or NULL to send no payload
 *	(GENERATE_KEY)
 * @key_size: number of bytes of @key, at most ICEVBLK_MAX_KEY_BYTES
 * @answer: where to store the answer: the software secret
 *	(DERIVE_SW_SECRET) or a struct icevblk_key_blob (the others)
 * @answer_size: size of @answer; the device is given exactly this much
 *	room for its answer
 *
 * Sent on the control virtqueue.  The key and the answer pass through
 * the device's command buffers, which are wiped as soon as the device has
 * answered, whatever the answer.  @answer is written only on success.
 *
 * Context: Process context, may sleep.  Takes and releases
 * vblk->ctrl_lock.  blk-crypto calls in with its profile lock held.
 * Return: 0 on success, -EOPNOTSUPP when the device answers UNSUPP or
 * has no control virtqueue, -EIO when it answers IOERR, -EINVAL when
 * @key_size or @answer_size exceeds the command buffers, -ENODEV after
 * removal, or another -errno from the virtqueue.
 */
int icevblk_ctrl_wrapped_key(struct icevblk *vblk, u32 type,
			     const u8 *key, size_t key_size,
			     void *answer, size_t answer_size)
{
	struct icevblk_ctrl *ctrl = vblk->ctrl;
	struct icevblk_key_blob *blob = &ctrl->payload.key_blob;
	struct scatterlist hdr, payload, reply, status;
	struct scatterlist *sgs[4];
	unsigned int num_out = 0;
	int err;

	if (key_size > sizeof(blob->key) || answer_size > sizeof(ctrl->answer))
		return -EINVAL;

	mutex_lock(&vblk->ctrl_lock);
	icevblk_ctrl_set_type(vblk, type);
	sg_init_one(&hdr, &ctrl->out_hdr, sizeof(ctrl->out_hdr));
	sgs[num_out++] = &hdr;
	if (key) {
		memset(blob, 0, sizeof(*blob));
		blob->key_size = cpu_to_le32(key_size);
		memcpy(blob->key, key, key_size);
		sg_init_one(&payload, blob, sizeof(*blob));
		sgs[num_out++] = &payload;
	}
	memset(&ctrl->answer, 0, sizeof(ctrl->answer));
	sg_init_one(&reply, &ctrl->answer, answer_size);
	sg_init_one(&status, &ctrl->status, sizeof(ctrl->status));
	sgs[num_out] = &reply;
	sgs[num_out + 1] = &status;
	err = icevblk_ctrl_exec(vblk, &vblk->ctrl_vq, sgs, num_out, 2);
	if (!err)
		memcpy(answer, &ctrl->answer, answer_size);
	memzero_explicit(&ctrl->payload, sizeof(ctrl->payload));
	memzero_explicit(&ctrl->answer, sizeof(ctrl->answer));
	mutex_unlock(&vblk->ctrl_lock);
	return err;
}
