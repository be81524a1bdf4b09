// SPDX-License-Identifier: GPL-2.0
/*
 * icelab virtio-blk driver: device discovery and the disk.
 *
 * A virtio-blk driver (VIRTIO 1.2 section 5.2) for blk-mq that also
 * drives the draft's inline crypto engine.  It binds to every virtio
 * block device, so the stock virtio_blk module must not be loaded at the
 * same time.
 */
#include "icevblk.h"

#include <linux/blkdev.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/overflow.h>
#include <linux/slab.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>

/* Descriptors a request takes besides its data: outhdr, crypto_msg, status. */
#define ICEVBLK_HDR_DESCS	3
/* Keeps a discard request's segment list within one page. */
#define ICEVBLK_MAX_DISCARD_SEGS \
	(PAGE_SIZE / sizeof(struct virtio_blk_discard_write_zeroes))

static DEFINE_IDA(icevblk_index_ida);

/* vda, vdb, ..., vdz, vdaa, ...: the names the stock driver would use. */
static void icevblk_set_disk_name(struct gendisk *disk, int index)
{
	char suffix[8];
	int pos = sizeof(suffix) - 1;

	suffix[pos] = '\0';
	do {
		suffix[--pos] = 'a' + index % 26;
		index = index / 26 - 1;
	} while (index >= 0 && pos > 0);
	snprintf(disk->disk_name, DISK_NAME_LEN, "vd%s", &suffix[pos]);
}

static struct icevblk *icevblk_alloc(struct virtio_device *vdev)
{
	struct icevblk *vblk;

	vblk = kzalloc_obj(*vblk);
	if (!vblk)
		return NULL;
	vblk->ctrl = kzalloc_obj(*vblk->ctrl);
	if (!vblk->ctrl)
		goto out_free_vblk;
	vblk->index = ida_alloc_max(&icevblk_index_ida, 26 * 27 - 1,
				    GFP_KERNEL);
	if (vblk->index < 0)
		goto out_free_ctrl;

	vblk->vdev = vdev;
	spin_lock_init(&vblk->ctrl_vq.lock);
	mutex_init(&vblk->ctrl_lock);
	init_completion(&vblk->ctrl->done);
	init_waitqueue_head(&vblk->ctrl_room);
	INIT_WORK(&vblk->reprogram_work, icevblk_crypto_reprogram_work);
	spin_lock_init(&vblk->retry_lock);
	INIT_LIST_HEAD(&vblk->retry_list);
	vdev->priv = vblk;
	return vblk;

out_free_ctrl:
	kfree(vblk->ctrl);
out_free_vblk:
	kfree(vblk);
	return NULL;
}

/* Frees what icevblk_alloc() allocated, and the virtqueue array. */
static void icevblk_free(struct icevblk *vblk)
{
	ida_free(&icevblk_index_ida, vblk->index);
	mutex_destroy(&vblk->ctrl_lock);
	kfree(vblk->vqs);
	kfree(vblk->ctrl);
	kfree(vblk);
}

/*
 * The request virtqueues, one per CPU at most, and with inline encryption
 * the control virtqueue after all of the device's request queues.  The
 * control queue's index is the device's number of request queues, so
 * when that is more than the CPUs, the surplus request queues are set up
 * too, and left idle.
 */
static int icevblk_init_vqs(struct icevblk *vblk)
{
	struct virtio_device *vdev = vblk->vdev;
	bool has_ctrl = icevblk_crypto_negotiated(vdev);
	struct virtqueue_info *vqs_info;
	struct irq_affinity desc = { };
	unsigned int num_vqs, total, i;
	struct virtqueue **vqs;
	u16 num_queues;
	int err;

	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_MQ,
				   struct virtio_blk_config, num_queues,
				   &num_queues);
	if (err)
		num_queues = 1;
	if (!num_queues) {
		dev_err(&vdev->dev, "device offers MQ with 0 queues\n");
		return -EINVAL;
	}
	vblk->num_hw_queues = min_t(unsigned int, nr_cpu_ids, num_queues);
	num_vqs = has_ctrl ? num_queues : vblk->num_hw_queues;
	total = num_vqs + has_ctrl;

	vblk->vqs = kzalloc_objs(*vblk->vqs, num_vqs);
	vqs_info = kzalloc_objs(*vqs_info, total);
	vqs = kzalloc_objs(*vqs, total);
	if (!vblk->vqs || !vqs_info || !vqs) {
		err = -ENOMEM;
		goto out_free;
	}

	for (i = 0; i < num_vqs; i++) {
		snprintf(vblk->vqs[i].name, sizeof(vblk->vqs[i].name),
			 "req.%u", i);
		vqs_info[i].name = vblk->vqs[i].name;
		vqs_info[i].callback = icevblk_vq_done;
		spin_lock_init(&vblk->vqs[i].lock);
	}
	if (has_ctrl) {
		strscpy(vblk->ctrl_vq.name, "control");
		vqs_info[num_vqs].name = vblk->ctrl_vq.name;
		vqs_info[num_vqs].callback = icevblk_ctrl_vq_done;
	}
	/*
	 * Only the interrupts of the request queues blk-mq uses are spread
	 * over the CPUs: not the idle ones', nor the control queue's.
	 */
	desc.post_vectors = total - vblk->num_hw_queues;

	err = virtio_find_vqs(vdev, total, vqs, vqs_info, &desc);
	if (err) {
		dev_err(&vdev->dev, "cannot set up %u request virtqueues%s: %d\n",
			num_vqs, has_ctrl ? " and the control virtqueue" : "",
			err);
		goto out_free;
	}

	for (i = 0; i < num_vqs; i++)
		vblk->vqs[i].vq = vqs[i];
	if (has_ctrl)
		vblk->ctrl_vq.vq = vqs[num_vqs];
	vblk->num_vqs = num_vqs;

out_free:
	kfree(vqs);
	kfree(vqs_info);
	if (err) {
		kfree(vblk->vqs);
		vblk->vqs = NULL;
	}
	return err;
}

static int icevblk_init_tag_set(struct icevblk *vblk)
{
	struct blk_mq_tag_set *set = &vblk->tag_set;
	unsigned int ring = virtqueue_get_vring_size(vblk->vqs[0].vq);

	set->ops = &icevblk_mq_ops;
	set->nr_hw_queues = vblk->num_hw_queues;
	set->nr_maps = 1;
	/*
	 * No ring entry is kept back: keyslot commands have their own
	 * virtqueue, and GET_ID waits for room on a full request ring.
	 */
	set->queue_depth = clamp_t(unsigned int, ring, 1, BLK_MQ_MAX_DEPTH);
	set->numa_node = NUMA_NO_NODE;
	set->cmd_size = struct_size_t(struct icevblk_req, sg, SG_CHUNK_SIZE);
	set->driver_data = vblk;
	return blk_mq_alloc_tag_set(set);
}

/* Data transfer limits: segments, block size and topology. */
static void icevblk_read_io_limits(struct icevblk *vblk,
				   struct queue_limits *lim)
{
	struct virtio_device *vdev = vblk->vdev;
	unsigned int ring = virtqueue_get_vring_size(vblk->vqs[0].vq);
	u32 sg_elems, size_max, blk_size = SECTOR_SIZE, v;
	u16 min_io;
	u8 exp;

	/* The whole chain, headers included, must fit in the ring. */
	if (virtio_cread_feature(vdev, VIRTIO_BLK_F_SEG_MAX,
				 struct virtio_blk_config, seg_max, &sg_elems) ||
	    !sg_elems)
		sg_elems = 1;
	sg_elems = clamp_t(u32, sg_elems, 1,
			   max_t(int, (int)ring - ICEVBLK_HDR_DESCS, 1));
	lim->max_segments = min_t(u32, sg_elems, USHRT_MAX);
	lim->max_hw_sectors = UINT_MAX;

	lim->max_segment_size = min_t(size_t, virtio_max_dma_size(vdev),
				      UINT_MAX);
	if (!virtio_cread_feature(vdev, VIRTIO_BLK_F_SIZE_MAX,
				  struct virtio_blk_config, size_max,
				  &size_max) && size_max)
		lim->max_segment_size = min(lim->max_segment_size, size_max);

	if (!virtio_cread_feature(vdev, VIRTIO_BLK_F_BLK_SIZE,
				  struct virtio_blk_config, blk_size, &v)) {
		if (blk_validate_block_size(v))
			dev_warn(&vdev->dev, "ignoring block size %u\n", v);
		else
			blk_size = v;
	}
	lim->logical_block_size = blk_size;

	if (!virtio_cread_feature(vdev, VIRTIO_BLK_F_TOPOLOGY,
				  struct virtio_blk_config, physical_block_exp,
				  &exp) && exp < 16)
		lim->physical_block_size = blk_size << exp;
	if (!virtio_cread_feature(vdev, VIRTIO_BLK_F_TOPOLOGY,
				  struct virtio_blk_config, min_io_size,
				  &min_io))
		lim->io_min = blk_size * min_io;
	if (!virtio_cread_feature(vdev, VIRTIO_BLK_F_TOPOLOGY,
				  struct virtio_blk_config, opt_io_size, &v))
		lim->io_opt = blk_size * v;
}

/* Commands without data: flush, discard, write zeroes. */
static void icevblk_read_cmd_limits(struct icevblk *vblk,
				    struct queue_limits *lim)
{
	struct virtio_device *vdev = vblk->vdev;
	u32 v;

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_FLUSH))
		lim->features |= BLK_FEAT_WRITE_CACHE;

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_DISCARD)) {
		virtio_cread(vdev, struct virtio_blk_config,
			     max_discard_sectors, &v);
		lim->max_hw_discard_sectors = v ? v : UINT_MAX;
		virtio_cread(vdev, struct virtio_blk_config, max_discard_seg,
			     &v);
		lim->max_discard_segments =
			clamp_t(u32, v, 1, ICEVBLK_MAX_DISCARD_SEGS);
		virtio_cread(vdev, struct virtio_blk_config,
			     discard_sector_alignment, &v);
		lim->discard_granularity = v ? v << SECTOR_SHIFT :
					       lim->logical_block_size;
	}

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_WRITE_ZEROES)) {
		virtio_cread(vdev, struct virtio_blk_config,
			     max_write_zeroes_sectors, &v);
		lim->max_write_zeroes_sectors = v ? v : UINT_MAX;
	}
}

/*
 * Runs when the disk's last reference is dropped, which may be long after
 * icevblk_remove(): until then blk-crypto may still evict keys through
 * the profile.
 */
static void icevblk_free_disk(struct gendisk *disk)
{
	struct icevblk *vblk = disk->private_data;

	icevblk_crypto_destroy(vblk);
	icevblk_free(vblk);
}

static const struct block_device_operations icevblk_fops = {
	.owner		= THIS_MODULE,
	.free_disk	= icevblk_free_disk,
};

static ssize_t serial_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct icevblk *vblk = dev_to_disk(dev)->private_data;
	char id[VIRTIO_BLK_ID_BYTES];
	int err;

	err = icevblk_ctrl_get_id(vblk, id);
	if (err)
		return err;
	return sysfs_emit(buf, "%.*s\n", (int)strnlen(id, sizeof(id)), id);
}
static DEVICE_ATTR_RO(serial);

static struct attribute *icevblk_attrs[] = {
	&dev_attr_serial.attr,
	NULL,
};

static const struct attribute_group icevblk_attr_group = {
	.attrs = icevblk_attrs,
};

static const struct attribute_group *icevblk_attr_groups[] = {
	&icevblk_attr_group,
	NULL,
};

static int icevblk_alloc_disk(struct icevblk *vblk)
{
	struct virtio_device *vdev = vblk->vdev;
	struct queue_limits lim = { };
	struct gendisk *disk;
	u64 capacity;

	icevblk_read_io_limits(vblk, &lim);
	icevblk_read_cmd_limits(vblk, &lim);

	disk = blk_mq_alloc_disk(&vblk->tag_set, &lim, vblk);
	if (IS_ERR(disk))
		return PTR_ERR(disk);

	/* minors stays 0: the block layer hands out extended dev_t's. */
	disk->fops = &icevblk_fops;
	disk->private_data = vblk;
	icevblk_set_disk_name(disk, vblk->index);
	virtio_cread(vdev, struct virtio_blk_config, capacity, &capacity);
	set_capacity(disk, capacity);
	if (virtio_has_feature(vdev, VIRTIO_BLK_F_RO))
		set_disk_ro(disk, true);
	vblk->disk = disk;
	return 0;
}

static int icevblk_probe(struct virtio_device *vdev)
{
	struct icevblk *vblk;
	int err;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "transport cannot read the config space\n");
		return -EINVAL;
	}

	vblk = icevblk_alloc(vdev);
	if (!vblk)
		return -ENOMEM;

	err = icevblk_init_vqs(vblk);
	if (err)
		goto out_free_vblk;

	/* Control commands, GET_CRYPTO_MODES first, need a live device. */
	virtio_device_ready(vdev);

	err = icevblk_init_tag_set(vblk);
	if (err)
		goto out_reset_device;

	err = icevblk_alloc_disk(vblk);
	if (err)
		goto out_free_tag_set;

	/*
	 * The crypto profile must be in place, and the keyslots empty,
	 * before the disk is added.
	 */
	err = icevblk_crypto_setup(vblk);
	if (err)
		goto out_put_disk;

	err = device_add_disk(&vdev->dev, vblk->disk, icevblk_attr_groups);
	if (err)
		goto out_destroy_crypto;

	dev_info(&vdev->dev, "%s: %llu sectors, %u queues%s%s\n",
		 vblk->disk->disk_name, get_capacity(vblk->disk),
		 vblk->num_hw_queues,
		 vblk->crypto_enabled ? ", inline encryption" : "",
		 get_disk_ro(vblk->disk) ? ", read-only" : "");
	return 0;

out_destroy_crypto:
	icevblk_crypto_destroy(vblk);
out_put_disk:
	put_disk(vblk->disk);
out_free_tag_set:
	blk_mq_free_tag_set(&vblk->tag_set);
out_reset_device:
	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
out_free_vblk:
	icevblk_free(vblk);
	return err;
}

static void icevblk_remove(struct virtio_device *vdev)
{
	struct icevblk *vblk = vdev->priv;

	del_gendisk(vblk->disk);

	/*
	 * A control command in flight finishes; later ones get -ENODEV and
	 * never touch a virtqueue, so none waits on the ones deleted here.
	 */
	mutex_lock(&vblk->ctrl_lock);
	vblk->ctrl_dead = true;
	mutex_unlock(&vblk->ctrl_lock);
	icevblk_crypto_stop(vblk);

	virtio_reset_device(vdev);
	/* All of them: the request virtqueues and the control virtqueue. */
	vdev->config->del_vqs(vdev);
	blk_mq_free_tag_set(&vblk->tag_set);
	/* May free vblk, through icevblk_free_disk(). */
	put_disk(vblk->disk);
}

/*
 * The device's config space changed.  The only change this driver acts
 * on: a restarted inline crypto engine (QEMU signals its reconnection),
 * whose keyslots are empty.
 */
static void icevblk_config_changed(struct virtio_device *vdev)
{
	struct icevblk *vblk = vdev->priv;

	if (vblk && vblk->crypto_enabled)
		schedule_work(&vblk->reprogram_work);
}

static const unsigned int icevblk_features[] = {
	VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_RO,
	VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY,
	VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
#ifdef CONFIG_BLK_INLINE_ENCRYPTION
	ICEVBLK_F_CTRL_VQ, ICEVBLK_F_INLINE_ENCRYPTION,
#endif
};

static const struct virtio_device_id icevblk_id_table[] = {
	{ VIRTIO_ID_BLOCK, VIRTIO_DEV_ANY_ID },
	{ }
};
MODULE_DEVICE_TABLE(virtio, icevblk_id_table);

static struct virtio_driver icevblk_driver = {
	.driver.name		= KBUILD_MODNAME,
	.id_table		= icevblk_id_table,
	.feature_table		= icevblk_features,
	.feature_table_size	= ARRAY_SIZE(icevblk_features),
	.probe			= icevblk_probe,
	.remove			= icevblk_remove,
	.config_changed		= icevblk_config_changed,
};
module_virtio_driver(icevblk_driver);

MODULE_DESCRIPTION("icelab virtio-blk driver with inline encryption");
MODULE_LICENSE("GPL");
