#!/usr/bin/env bash
# Smoke test of the guest chain's first two links, the build root's kernel
# and icelab's QEMU, with nothing of the lab's own guest side:
#
#   1. boot: the build root's cloud kernel boots under QEMU (TCG) with a
#      trivial busybox initramfs that prints a line and powers off;
#   2. module: in that boot, a module built in the build root (in-root.sh,
#      gcc-14, the kernel's headers) loads on the stock kernel;
#   3. monitor: with `icelab serve` behind vhost-user-blk-pci,
#      inline-encryption=on, QEMU's `info virtio-status` shows the
#      inline encryption bit among the features it offers the guest;
#   4. guest: the same, booted: the initramfs reads the device's offered
#      features and config bytes 96-103 from the virtio-pci registers
#      itself (busybox devmem, no virtio driver bound) and prints them;
#      they must match the ufs profile (32 slots, 8 DUN bytes, raw keys);
#   5. controls, in the same boot: no bit 23 with inline-encryption=off
#      (QEMU's default), nor from `icelab serve --no-inline-encryption`.
#
#   images/smoke.sh [--qemu PATH] [--root DIR] [--icelab PATH] [--keep]
#
# Without --qemu/--root it runs build-qemu.sh and build-root.sh (cached).
# Without --icelab it uses target/release/icelab, building it when absent.
# --keep keeps the temporary directory (initramfs, consoles, logs).
# Exits 0 when all five pass; prints `N passed, M failed` last.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
repo=$(dirname "$here")
qemu=
root=
icelab=
keep=
while (($#)); do
    case $1 in
    --qemu) qemu=$2 && shift 2 ;;
    --root) root=$2 && shift 2 ;;
    --icelab) icelab=$2 && shift 2 ;;
    --keep) keep=1 && shift ;;
    *)
        echo "usage: $0 [--qemu PATH] [--root DIR] [--icelab PATH] [--keep]" >&2
        exit 2
        ;;
    esac
done

log() { printf 'smoke: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ -n $qemu ]] || qemu=$("$here/build-qemu.sh" | tail -n1)
[[ -n $root ]] || root=$("$here/build-root.sh" | tail -n1)
if [[ -z $icelab ]]; then
    icelab=$repo/target/release/icelab
    [[ -x $icelab ]] || (cd "$repo" && cargo build --release --bin icelab >&2)
fi
[[ -x $qemu ]] || die "no QEMU at $qemu"
[[ -x $icelab ]] || die "no icelab binary at $icelab"
# shellcheck disable=SC1091
release=$(sed -n 's/^release=//p' "$root/kernel-version.txt")
kernel=$root/vmlinuz
busybox=$root/rootfs/usr/bin/busybox
[[ -f $kernel && -x $busybox ]] || die "$root is not a build root (no vmlinuz or busybox)"
log "qemu:   $("$qemu" --version | head -n1)"
log "kernel: $(sed -n 's/^package=//p' "$root/kernel-version.txt") $(sed -n 's/^version=//p' "$root/kernel-version.txt")"

tmp=$(mktemp -d /tmp/icelab-smoke.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [[ -n $keep ]]; then
        log "kept: $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

# --- the initramfs ---------------------------------------------------------------

# A minimal module, built in the build root against the guest kernel.
mkdir -p "$tmp/hello"
cat >"$tmp/hello/icelab_hello.c" <<'EOF_MODULE'
#include <linux/module.h>

static int __init icelab_hello_init(void)
{
	pr_info("icelab_hello: loaded\n");
	return 0;
}

static void __exit icelab_hello_exit(void)
{
}

module_init(icelab_hello_init);
module_exit(icelab_hello_exit);
MODULE_DESCRIPTION("icelab smoke test: a module built in the build root");
MODULE_LICENSE("GPL");
EOF_MODULE
echo 'obj-m := icelab_hello.o' >"$tmp/hello/Kbuild"
"$here/in-root.sh" "$root" --bind "$tmp/hello:/build" -- \
    make -s -C "/lib/modules/$release/build" M=/build modules >"$tmp/hello.log" 2>&1 || {
    cat "$tmp/hello.log" >&2
    die "building a module in the build root failed"
}

mkdir -p "$tmp/initramfs"/{bin,dev,proc,sys}
cp "$busybox" "$tmp/initramfs/bin/busybox"
cp "$tmp/hello/icelab_hello.ko" "$tmp/initramfs/"
cat >"$tmp/initramfs/init" <<'EOF_INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "ICELAB-SMOKE kernel $(uname -r) up"
if insmod /icelab_hello.ko && dmesg | grep -q 'icelab_hello: loaded'; then
    echo "ICELAB-SMOKE module loaded"
fi

# rd NAME OFFSET: prints the byte at OFFSET of PCI config space file NAME.
rd() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
rd32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }

for dev in /sys/bus/pci/devices/*; do
    [ "$(cat "$dev/vendor")" = 0x1af4 ] || continue
    case $(cat "$dev/device") in 0x1042 | 0x1001) ;; *) continue ;; esac
    echo "ICELAB-SMOKE virtio-blk at ${dev##*/}"
    if [ -e "$dev/driver" ]; then
        echo "${dev##*/}" >"$dev/driver/unbind"
    fi
    echo 1 >"$dev/enable"
    cfg=$dev/config
    common= device=
    # Walk the capability list for the virtio-pci vendor capabilities
    # (id 9): cfg_type 1 is the common config, 4 the device config.
    cap=$(rd "$cfg" 52)
    while [ "$cap" -ne 0 ]; do
        if [ "$(rd "$cfg" "$cap")" -eq 9 ]; then
            type=$(rd "$cfg" $((cap + 3)))
            bar=$(rd "$cfg" $((cap + 4)))
            off=$(rd32 "$cfg" $((cap + 8)))
            base=$(sed -n "$((bar + 1))p" "$dev/resource" | cut -d' ' -f1)
            addr=$((base + off))
            [ "$type" -eq 1 ] && common=$addr
            [ "$type" -eq 4 ] && device=$addr
        fi
        cap=$(rd "$cfg" $((cap + 1)))
    done
    if [ -z "$common" ] || [ -z "$device" ]; then
        echo "ICELAB-SMOKE ${dev##*/} has no modern virtio-pci capabilities"
        continue
    fi
    # device_feature_select = 0, then device_feature: bits 0-31.
    devmem $((common + 0)) 32 0
    lo=$(devmem $((common + 4)) 32)
    devmem $((common + 0)) 32 1
    hi=$(devmem $((common + 4)) 32)
    bit23=$(((lo >> 23) & 1))
    echo "ICELAB-SMOKE ${dev##*/} offered features lo=$lo hi=$hi bit23=$bit23"
    # The config bytes exist only when QEMU sized the config space for
    # them (property inline-encryption=on); read them only with the bit.
    if [ "$bit23" -eq 1 ]; then
        echo "ICELAB-SMOKE ${dev##*/} config max_slots=$(($(devmem $((device + 96)) 16))) max_dun_bytes=$(($(devmem $((device + 98)) 8))) key_types=$(($(devmem $((device + 99)) 8))) reserved=$(($(devmem $((device + 100)) 32)))"
    fi
done
echo "ICELAB-SMOKE done"
poweroff -f
EOF_INIT
chmod 755 "$tmp/initramfs/init"
# The build root's busybox is static: it runs on the host too, and has cpio.
(cd "$tmp/initramfs" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) |
    gzip -1 >"$tmp/initramfs.cpio.gz"

# --- helpers -----------------------------------------------------------------------

passed=0
failed=0
pass() {
    log "PASS $1"
    passed=$((passed + 1))
}
fail() {
    log "FAIL $1"
    failed=$((failed + 1))
}

accel=(-accel tcg -cpu max)
mem=512M

# serve NAME [ARGS...]: starts `icelab serve` on a fresh image, waits for
# its socket.
serve() {
    local name=$1
    shift
    "$icelab" serve --image "$tmp/$name.img" --size 64M --socket "$tmp/$name.sock" "$@" \
        2>"$tmp/$name.serve.log" &
    pids+=($!)
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S $tmp/$name.sock ]] && return 0
        sleep 0.1
    done
    cat "$tmp/$name.serve.log" >&2
    die "icelab serve did not create $tmp/$name.sock"
}

# qemu_run NAME TIMEOUT ARGS...: runs QEMU with the console in NAME.console.
qemu_run() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS status=0
    timeout "$limit" "$qemu" -nodefaults -no-reboot -display none "${accel[@]}" -m "$mem" \
        -device isa-debug-exit "$@" >"$tmp/$name.console" 2>"$tmp/$name.qemu.log" || status=$?
    log "$name: QEMU exited with status $status after $((SECONDS - start))s"
    return "$status"
}

# vhost_args NAME SLOT INLINE_ENCRYPTION: QEMU arguments for a
# vhost-user-blk-pci device (id NAME) at PCI slot SLOT on NAME's socket.
vhost_args() {
    local name=$1 slot=$2 ice=$3
    echo -chardev "socket,id=$name,path=$tmp/$name.sock" \
        -device "vhost-user-blk-pci,id=$name,chardev=$name,addr=$slot,inline-encryption=$ice"
}
# shellcheck disable=SC2054 # commas inside QEMU option values
shared_mem=(-object "memory-backend-memfd,id=mem,size=$mem,share=on" -machine q35,memory-backend=mem)

boot_args=(-kernel "$kernel" -initrd "$tmp/initramfs.cpio.gz" -serial stdio
    -append "console=ttyS0 panic=-1 quiet")

# --- 1, 2. the kernel boots, a module loads ------------------------------------------------------------

if qemu_run boot 120 -machine q35 "${boot_args[@]}" &&
    grep -q "ICELAB-SMOKE kernel $release up" "$tmp/boot.console" &&
    grep -q "ICELAB-SMOKE done" "$tmp/boot.console"; then
    pass "boot: $release boots to the initramfs and powers off"
else
    tail -n 30 "$tmp/boot.console" "$tmp/boot.qemu.log" >&2
    fail "boot"
fi
if grep -q "ICELAB-SMOKE module loaded" "$tmp/boot.console"; then
    pass "module: a module built in the build root loads on the stock kernel"
else
    fail "module: icelab_hello.ko did not load"
fi

# --- 3. QEMU offers the feature (monitor) --------------------------------------------

serve mon
# shellcheck disable=SC2046
printf 'info virtio-status /machine/peripheral/mon/virtio-backend\nquit\n' |
    qemu_run monitor 60 -S -monitor stdio "${shared_mem[@]}" $(vhost_args mon 0x5 on) || true
# The monitor echoes its input with terminal escapes; drop them.
sed -i 's/\x1b\[[0-9;]*[A-Za-z]//g' "$tmp/monitor.console"
if sed -n '/Host features:/,/^  [A-Z]/p' "$tmp/monitor.console" | grep -q 'VIRTIO_BLK_F_INLINE_ENCRYPTION'; then
    pass "monitor: QEMU offers VIRTIO_BLK_F_INLINE_ENCRYPTION"
    grep -m1 'VIRTIO_BLK_F_INLINE_ENCRYPTION' "$tmp/monitor.console" |
        sed 's/^[[:space:]]*/smoke:   host features: /' >&2
else
    cat "$tmp/monitor.console" "$tmp/monitor.qemu.log" >&2
    fail "monitor: no VIRTIO_BLK_F_INLINE_ENCRYPTION in info virtio-status"
fi

# --- 4, 5. the guest sees the feature and the config bytes ------------------------------

# Three disks: the lab's (inline-encryption=on, device with the engine)
# and two controls: the property off (QEMU's default) hides the bit even
# from a device that offers it; the property on with a device that offers
# no inline encryption (the lab's negative control) shows no bit either.
serve guest
serve off
serve plain --no-inline-encryption
# shellcheck disable=SC2046
qemu_run guest 120 "${boot_args[@]}" "${shared_mem[@]}" \
    $(vhost_args guest 0x5 on) $(vhost_args off 0x6 off) $(vhost_args plain 0x7 on) || true
grep 'ICELAB-SMOKE' "$tmp/guest.console" | sed 's/^/smoke:   guest: /' >&2 || true
if grep -q 'ICELAB-SMOKE 0000:00:05.0 offered features .* bit23=1' "$tmp/guest.console" &&
    grep -q 'ICELAB-SMOKE 0000:00:05.0 config max_slots=32 max_dun_bytes=8 key_types=1 reserved=0' "$tmp/guest.console"; then
    pass "guest: offered bit 23 and config bytes 96-103 (32 slots, 8 DUN bytes, raw keys)"
else
    tail -n 30 "$tmp/guest.console" "$tmp/guest.qemu.log" "$tmp/guest.serve.log" >&2
    fail "guest: feature bit or config bytes missing"
fi
if grep -q 'ICELAB-SMOKE 0000:00:06.0 offered features .* bit23=0' "$tmp/guest.console" &&
    grep -q 'ICELAB-SMOKE 0000:00:07.0 offered features .* bit23=0' "$tmp/guest.console"; then
    pass "controls: no bit 23 with inline-encryption=off, nor from a device without the engine"
else
    tail -n 30 "$tmp/guest.console" "$tmp/off.serve.log" "$tmp/plain.serve.log" >&2
    fail "controls: bit 23 offered where it must not be"
fi

printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
