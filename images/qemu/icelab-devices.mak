# Devices of icelab's QEMU (x86_64-softmmu), built with
# --without-default-devices: only what is listed here and what these select.
# build-qemu.sh copies it to configs/devices/x86_64-softmmu/icelab.mak.

# Boards. q35 is what the lab runs; pc (i440fx) comes along because QEMU
# does not link without it, and it is what older guides use.
CONFIG_Q35=y
CONFIG_I440FX=y

# The disk under test: vhost-user-blk over virtio-pci. The emulated
# virtio-blk comes along (a scratch disk, if ever needed): QEMU 7.2 decodes
# block feature names for `info virtio-status` only when it is built, and
# aborts on a vhost-user-blk device without it.
CONFIG_VIRTIO_PCI=y
CONFIG_VHOST_USER_BLK=y
CONFIG_VIRTIO_BLK=y

# Console (isa-serial comes with the boards), results channel, entropy.
CONFIG_VIRTIO_SERIAL=y
CONFIG_VIRTIO_RNG=y

# isa-debug-exit: the guest sets QEMU's exit status.
CONFIG_ISA_DEBUG=y
