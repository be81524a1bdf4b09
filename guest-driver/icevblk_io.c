// SPDX-License-Identifier: GPL-2.0
/*
 * icelab virtio-blk driver: the block I/O path.
 *
 * One blk-mq hardware queue per request virtqueue (the control virtqueue
 * has its own callback, in icevblk_ctrl.c).  A request becomes one
 * descriptor chain: the outhdr, for encrypted I/O a crypto_msg, the data
 * (or the discard/write-zeroes segments), then the status byte.
 */
#include "icevblk.h"

#include <linux/blkdev.h>
#include <linux/bvec.h>
#include <linux/slab.h>
#include <linux/virtio_config.h>

/**
 * icevblk_status_to_blk() - translate a device status byte
 * @status: the status byte the device wrote (VIRTIO_BLK_S_*)
 *
 * The one place where the device's answer becomes a block layer status;
 * callers that need an errno pass the result to blk_status_to_errno().
 * A value the specification does not define counts as an I/O error.
 *
 * Context: Any context.
 * Return: BLK_STS_OK for OK, BLK_STS_NOTSUPP for UNSUPP (errno
 * -EOPNOTSUPP), BLK_STS_IOERR (errno -EIO) otherwise.
 */
blk_status_t icevblk_status_to_blk(u8 status)
{
	switch (status) {
	case VIRTIO_BLK_S_OK:
		return BLK_STS_OK;
	case VIRTIO_BLK_S_UNSUPP:
		return BLK_STS_NOTSUPP;
	case VIRTIO_BLK_S_IOERR:
	default:
		return BLK_STS_IOERR;
	}
}

/*
 * Builds the segment list of a DISCARD or WRITE_ZEROES request and
 * attaches it as the request's special payload, which blk_rq_map_sg()
 * then maps like data.
 */
static blk_status_t icevblk_setup_ranges(struct request *rq, bool unmap)
{
	unsigned short segments = blk_rq_nr_discard_segments(rq);
	struct virtio_blk_discard_write_zeroes *range;
	u32 flags = unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
	unsigned short n = 0;
	struct bio *bio;

	range = kmalloc_objs(*range, segments, GFP_ATOMIC);
	if (!range)
		return BLK_STS_RESOURCE;

	/*
	 * With one segment allowed, blk-mq still merges contiguous bios
	 * into one request: describe the request, not its bios.
	 */
	if (queue_max_discard_segments(rq->q) == 1 ||
	    req_op(rq) == REQ_OP_WRITE_ZEROES) {
		range[0].sector = cpu_to_le64(blk_rq_pos(rq));
		range[0].num_sectors = cpu_to_le32(blk_rq_sectors(rq));
		range[0].flags = cpu_to_le32(flags);
		n = 1;
	} else {
		__rq_for_each_bio(bio, rq) {
			if (WARN_ON_ONCE(n == segments))
				break;
			range[n].sector = cpu_to_le64(bio->bi_iter.bi_sector);
			range[n].num_sectors =
				cpu_to_le32(bio->bi_iter.bi_size >> SECTOR_SHIFT);
			range[n].flags = cpu_to_le32(flags);
			n++;
		}
	}

	bvec_set_virt(&rq->special_vec, range, sizeof(*range) * n);
	rq->rq_flags |= RQF_SPECIAL_PAYLOAD;
	return BLK_STS_OK;
}

static void icevblk_cleanup_cmd(struct request *rq)
{
	if (rq->rq_flags & RQF_SPECIAL_PAYLOAD)
		kfree(bvec_virt(&rq->special_vec));
}

static blk_status_t icevblk_setup_cmd(struct icevblk *vblk, struct request *rq,
				      struct icevblk_req *vbr)
{
	struct virtio_device *vdev = vblk->vdev;
	sector_t sector = 0;
	blk_status_t status;
	u32 type;

	switch (req_op(rq)) {
	case REQ_OP_READ:
		type = VIRTIO_BLK_T_IN;
		sector = blk_rq_pos(rq);
		break;
	case REQ_OP_WRITE:
		type = VIRTIO_BLK_T_OUT;
		sector = blk_rq_pos(rq);
		break;
	case REQ_OP_FLUSH:
		type = VIRTIO_BLK_T_FLUSH;
		break;
	case REQ_OP_DISCARD:
		type = VIRTIO_BLK_T_DISCARD;
		break;
	case REQ_OP_WRITE_ZEROES:
		type = VIRTIO_BLK_T_WRITE_ZEROES;
		break;
	default:
		WARN_ON_ONCE(1);
		return BLK_STS_IOERR;
	}

	vbr->out_hdr.type = cpu_to_virtio32(vdev, type);
	vbr->out_hdr.ioprio = cpu_to_virtio32(vdev, req_get_ioprio(rq));
	vbr->out_hdr.sector = cpu_to_virtio64(vdev, sector);
	/* Not a status the device sends: a chain it never answers fails. */
	vbr->status = U8_MAX;

	status = icevblk_crypto_prep_rq(vblk, rq, vbr);
	if (status)
		return status;

	if (type == VIRTIO_BLK_T_DISCARD)
		return icevblk_setup_ranges(rq, false);
	if (type == VIRTIO_BLK_T_WRITE_ZEROES)
		return icevblk_setup_ranges(rq, !(rq->cmd_flags & REQ_NOUNMAP));
	return BLK_STS_OK;
}

static int icevblk_map_data(struct request *rq, struct icevblk_req *vbr)
{
	int err;

	if (!blk_rq_nr_phys_segments(rq))
		return 0;

	vbr->sg_table.sgl = vbr->sg;
	err = sg_alloc_table_chained(&vbr->sg_table,
				     blk_rq_nr_phys_segments(rq),
				     vbr->sg_table.sgl, SG_CHUNK_SIZE);
	if (err)
		return -ENOMEM;

	return blk_rq_map_sg(rq, vbr->sg_table.sgl);
}

static void icevblk_unmap_data(struct request *rq, struct icevblk_req *vbr)
{
	if (blk_rq_nr_phys_segments(rq))
		sg_free_table_chained(&vbr->sg_table, SG_CHUNK_SIZE);
}

/* Called with the virtqueue's lock held. */
static int icevblk_add_req(struct virtqueue *vq, struct icevblk_req *vbr,
			   bool writes, int nents)
{
	struct scatterlist hdr, msg, status, *sgs[4];
	unsigned int num_out = 0, num_in = 0;

	sg_init_one(&hdr, &vbr->out_hdr, sizeof(vbr->out_hdr));
	sgs[num_out++] = &hdr;
	if (vbr->has_crypto) {
		sg_init_one(&msg, &vbr->crypto_msg, sizeof(vbr->crypto_msg));
		sgs[num_out++] = &msg;
	}
	if (nents) {
		if (writes)
			sgs[num_out++] = vbr->sg_table.sgl;
		else
			sgs[num_out + num_in++] = vbr->sg_table.sgl;
	}
	sg_init_one(&status, &vbr->status, sizeof(vbr->status));
	sgs[num_out + num_in++] = &status;

	return virtqueue_add_sgs(vq, sgs, num_out, num_in, vbr, GFP_ATOMIC);
}

static blk_status_t icevblk_queue_rq(struct blk_mq_hw_ctx *hctx,
				     const struct blk_mq_queue_data *bd)
{
	struct icevblk *vblk = hctx->queue->queuedata;
	struct icevblk_vq *ivq = &vblk->vqs[hctx->queue_num];
	struct request *rq = bd->rq;
	struct icevblk_req *vbr = blk_mq_rq_to_pdu(rq);
	unsigned long flags;
	blk_status_t status;
	bool notify = false;
	int nents, err;

	/* First dispatch, not a requeue: no retry yet. */
	if (!(rq->rq_flags & RQF_DONTPREP)) {
		vbr->crypto_retries = 0;
		rq->rq_flags |= RQF_DONTPREP;
	}

	status = icevblk_setup_cmd(vblk, rq, vbr);
	if (status)
		return status;

	nents = icevblk_map_data(rq, vbr);
	if (nents < 0) {
		icevblk_cleanup_cmd(rq);
		return BLK_STS_RESOURCE;
	}

	blk_mq_start_request(rq);

	spin_lock_irqsave(&ivq->lock, flags);
	err = icevblk_add_req(ivq->vq, vbr, op_is_write(req_op(rq)), nents);
	if (err) {
		/* Let the device drain what it has; completions restart us. */
		virtqueue_kick(ivq->vq);
		if (err == -ENOSPC)
			blk_mq_stop_hw_queue(hctx);
		spin_unlock_irqrestore(&ivq->lock, flags);
		icevblk_unmap_data(rq, vbr);
		icevblk_cleanup_cmd(rq);
		if (err == -ENOSPC || err == -ENOMEM)
			return BLK_STS_DEV_RESOURCE;
		return BLK_STS_IOERR;
	}
	if (bd->last && virtqueue_kick_prepare(ivq->vq))
		notify = true;
	spin_unlock_irqrestore(&ivq->lock, flags);

	if (notify)
		virtqueue_notify(ivq->vq);
	return BLK_STS_OK;
}

static void icevblk_commit_rqs(struct blk_mq_hw_ctx *hctx)
{
	struct icevblk *vblk = hctx->queue->queuedata;
	struct icevblk_vq *ivq = &vblk->vqs[hctx->queue_num];
	unsigned long flags;
	bool notify;

	spin_lock_irqsave(&ivq->lock, flags);
	notify = virtqueue_kick_prepare(ivq->vq);
	spin_unlock_irqrestore(&ivq->lock, flags);

	if (notify)
		virtqueue_notify(ivq->vq);
}

static void icevblk_complete_rq(struct request *rq)
{
	struct icevblk_req *vbr = blk_mq_rq_to_pdu(rq);
	struct icevblk *vblk = rq->q->queuedata;

	icevblk_unmap_data(rq, vbr);
	icevblk_cleanup_cmd(rq);
	if (icevblk_crypto_retry_rq(vblk, rq, vbr))
		return;
	blk_mq_end_request(rq, icevblk_status_to_blk(vbr->status));
}

/**
 * icevblk_vq_done() - virtqueue callback: harvest the device's answers
 * @vq: the request virtqueue that has used buffers
 *
 * Block requests are handed to blk-mq for completion; a GET_ID sent by
 * icevblk_ctrl_get_id(), which is not a blk-mq request, wakes its waiter.
 *
 * Context: Interrupt context.  Takes and releases the virtqueue's lock.
 */
void icevblk_vq_done(struct virtqueue *vq)
{
	struct icevblk *vblk = vq->vdev->priv;
	struct icevblk_vq *ivq = &vblk->vqs[vq->index];
	bool rq_done = false;
	unsigned long flags;
	unsigned int len;
	void *token;

	spin_lock_irqsave(&ivq->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((token = virtqueue_get_buf(vq, &len))) {
			if (token == vblk->ctrl) {
				complete(&vblk->ctrl->done);
				continue;
			}
			blk_mq_complete_request(blk_mq_rq_from_pdu(token));
			rq_done = true;
		}
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&ivq->lock, flags);

	/* A full ring stopped the queue in icevblk_queue_rq(). */
	if (rq_done)
		blk_mq_start_stopped_hw_queues(vblk->disk->queue, true);
	if (vq->index == 0 && wq_has_sleeper(&vblk->ctrl_room))
		wake_up(&vblk->ctrl_room);
}

static void icevblk_map_queues(struct blk_mq_tag_set *set)
{
	struct icevblk *vblk = set->driver_data;

	/* Follow the interrupt affinity the transport spread for us. */
	blk_mq_map_hw_queues(&set->map[HCTX_TYPE_DEFAULT],
			     &vblk->vdev->dev, 0);
}

const struct blk_mq_ops icevblk_mq_ops = {
	.queue_rq	= icevblk_queue_rq,
	.commit_rqs	= icevblk_commit_rqs,
	.complete	= icevblk_complete_rq,
	.map_queues	= icevblk_map_queues,
};
