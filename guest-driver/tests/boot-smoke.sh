#!/usr/bin/env bash
# Boots the guest kernel against `icelab serve` and checks icelab_vblk end
# to end: the crypto sysfs capabilities, plain I/O, discard, then ext4 with
# -o inlinecrypt and a v2 fscrypt policy, and on the host the emulator's
# stats, trace and image.
#
#   guest-driver/tests/boot-smoke.sh ROOT QEMU KO [WORKDIR]
#
# ROOT    build root of images/build-root.sh (holds rootfs/ and vmlinuz)
# QEMU    qemu-system-x86_64 with icelab's vhost-user-blk patch
# KO      icelab_vblk.ko built for ROOT's kernel (guest-driver/build.sh)
# WORKDIR where the image, logs, stats and trace go (default: a new
#         temporary directory, kept)
#
# Environment:
#   ICELAB            the icelab binary (default: target/release/icelab)
#   ICELAB_NO_ICE=1   negative control: serve --no-inline-encryption and
#                     expect blk-crypto-fallback and no crypto requests
#   ICELAB_PROFILE    engine profile (default ufs)
#   ICELAB_SLOTS      override the engine's number of keyslots (e.g. 2, to
#                     make blk-crypto evict and reprogram under load)
#   ICELAB_TIMEOUT    seconds the guest may take (default 300)
#   ICELAB_QEMU_ARGS  extra QEMU arguments, e.g. "-L /usr/share/qemu"
#
# A test helper for the driver, not the lab's pipeline (`icelab run`).
# Prints "N passed, M failed" last; exits 0 only if all checks passed.
set -euo pipefail

log() { printf 'boot-smoke: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

(($# == 3 || $# == 4)) || die "usage: $0 ROOT QEMU KO [WORKDIR]"
broot=$(readlink -f "$1")
qemu=$2
ko=$(readlink -f "$3")
work=${4:-$(mktemp -d /tmp/icevblk-smoke.XXXXXX)}
mkdir -p "$work"
work=$(readlink -f "$work")
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
repo=$(readlink -f "$here/../..")
icelab=${ICELAB:-$repo/target/release/icelab}
profile=${ICELAB_PROFILE:-ufs}
timeout_s=${ICELAB_TIMEOUT:-300}
no_ice=${ICELAB_NO_ICE:-0}

rootfs=$broot/rootfs
release=$(sed -n 's/^release=//p' "$broot/kernel-version.txt" 2>/dev/null || true)
if [[ -z $release ]]; then
    release=$(basename "$(ls -d "$rootfs"/lib/modules/*/ | head -n1)")
fi
vmlinuz=$rootfs/boot/vmlinuz-$release
[[ -f $vmlinuz ]] || die "no kernel at $vmlinuz"
[[ -x $icelab ]] || die "no icelab binary at $icelab (cargo build --release)"
[[ -f $ko ]] || die "no module at $ko"

# --- initramfs -------------------------------------------------------------------

initrd_dir=$work/initramfs
rm -rf "$initrd_dir"
mkdir -p "$initrd_dir"/{bin,sbin,proc,sys,dev,mnt,tmp,etc,usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64}
# Merged /usr, as in the root.
ln -s usr/lib "$initrd_dir/lib"
ln -s usr/lib64 "$initrd_dir/lib64"

# copy_bin PATH-IN-ROOT: copies a root binary and the libraries it needs.
copy_bin() {
    local bin=$1 lib
    install -D -m 755 "$rootfs$bin" "$initrd_dir$bin"
    while read -r lib; do
        [[ -n $lib ]] || continue
        mkdir -p "$initrd_dir$(dirname "$lib")"
        cp -L "$rootfs$lib" "$initrd_dir$lib"
    done < <(chroot "$rootfs" /lib64/ld-linux-x86-64.so.2 --list "$bin" |
        awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

cp "$rootfs/usr/bin/busybox" "$initrd_dir/bin/busybox"
copy_bin /usr/sbin/mke2fs
copy_bin /usr/bin/kmod
# kmod opens the xz library itself when a module is compressed.
cp -L "$rootfs"/usr/lib/x86_64-linux-gnu/liblzma.so.5 "$initrd_dir/usr/lib/x86_64-linux-gnu/"
for tool in modprobe insmod depmod lsmod; do
    ln -sf /usr/bin/kmod "$initrd_dir/sbin/$tool"
done
: >"$initrd_dir/etc/mke2fs.conf"
cp "$rootfs/etc/mke2fs.conf" "$initrd_dir/etc/mke2fs.conf" 2>/dev/null || true

# Kernel modules: what ext4, fscrypt's algorithms and virtio need, with
# their dependencies, from the root's own module tree.
mods=$rootfs/lib/modules/$release
mkdir -p "$initrd_dir/lib/modules/$release"
cp "$mods"/modules.{order,builtin,builtin.modinfo} "$initrd_dir/lib/modules/$release/" 2>/dev/null || true
for dir in kernel/fs/ext4 kernel/fs/jbd2 kernel/fs/mbcache.ko* kernel/crypto kernel/lib \
    kernel/arch/x86/crypto kernel/drivers/virtio kernel/drivers/char/hw_random; do
    for path in "$mods"/$dir; do
        [[ -e $path ]] || continue
        rel=${path#"$mods"/}
        mkdir -p "$initrd_dir/lib/modules/$release/$(dirname "$rel")"
        cp -a "$path" "$initrd_dir/lib/modules/$release/$rel"
    done
done
cp "$ko" "$initrd_dir/icelab_vblk.ko"

# The fscrypt helper, static (the host's gcc is fine for a user program).
gcc -static -O2 -o "$initrd_dir/bin/fscrypt_v2_setup" "$here/fscrypt_v2_setup.c"

cat >"$initrd_dir/init" <<'EOF_INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
depmod -a >/dev/null 2>&1

ok() { echo "SMOKE PASS $*"; }
bad() { echo "SMOKE FAIL $*"; }
check() { name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }

no_ice=$(sed -n 's/.*icelab.no_ice=\([01]\).*/\1/p' /proc/cmdline)
modprobe -q virtio_pci 2>/dev/null
modprobe -q ext4 2>/dev/null

check insmod insmod /icelab_vblk.ko
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done
check vda-exists test -b /dev/vda
dmesg | grep -i icelab_vblk | sed 's/^/SMOKE LOG /'

c=/sys/block/vda/queue/crypto
if [ "$no_ice" = 1 ]; then
    check no-crypto-sysfs test ! -e $c
else
    check crypto-sysfs test -d $c
    for f in num_keyslots max_dun_bits modes/AES-256-XTS raw_keys; do
        echo "SMOKE INFO $f=$(cat $c/$f 2>/dev/null)"
    done
    check num_keyslots test "$(cat $c/num_keyslots)" -gt 0
    check raw_keys test "$(cat $c/raw_keys)" = supported
    check aes-256-xts-modes test -n "$(cat $c/modes/AES-256-XTS)"
fi
echo "SMOKE INFO serial=$(cat /sys/block/vda/serial 2>&1)"
echo "SMOKE INFO nr_hw_queues=$(ls /sys/block/vda/mq | wc -l)"
for f in logical_block_size max_segments max_segment_size discard_max_hw_bytes write_zeroes_max_bytes write_cache; do
    echo "SMOKE INFO $f=$(cat /sys/block/vda/queue/$f)"
done

# Plain I/O, direct to the device.
dd if=/dev/urandom of=/tmp/pattern bs=64k count=64 2>/dev/null
check dd-write dd if=/tmp/pattern of=/dev/vda bs=64k seek=1600 conv=fsync 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=64k skip=1600 count=64 2>/dev/null
check dd-readback cmp /tmp/pattern /tmp/back
check blkdiscard blkdiscard -o 104857600 -l 4194304 /dev/vda

# ext4 + inlinecrypt + a v2 policy.
check mkfs /usr/sbin/mke2fs -q -F -t ext4 -b 4096 -O encrypt /dev/vda
check mount mount -t ext4 -o inlinecrypt /dev/vda /mnt
mkdir /mnt/enc
check fscrypt-policy fscrypt_v2_setup /mnt/enc
marker=ICELAB-PLAINTEXT-MARKER-0123456789
printf 'A' >/mnt/enc/one
i=0; while [ $i -lt 120 ]; do echo "$marker $i"; i=$((i + 1)); done | head -c 4096 >/mnt/enc/four_k
: >/tmp/big; i=0; while [ $i -lt 257 ]; do cat /mnt/enc/four_k >>/tmp/big; i=$((i + 1)); done
head -c $((1048576 + 123)) /tmp/big >/tmp/big2
cp /tmp/big2 /mnt/enc/big
cp /mnt/enc/four_k /tmp/four_k
sync
echo 3 >/proc/sys/vm/drop_caches
check read-one test "$(cat /mnt/enc/one)" = A
check read-4k cmp /mnt/enc/four_k /tmp/four_k
check read-1m cmp /mnt/enc/big /tmp/big2
# More files (each has its own key) than a small engine has keyslots,
# written and read concurrently: blk-crypto must evict and reprogram
# slots while I/O is in flight, on every queue.
i=0; while [ $i -lt 8 ]; do (cp /tmp/big2 /mnt/enc/p$i; cp /tmp/four_k /mnt/enc/q$i) & i=$((i + 1)); done
wait
sync
echo 3 >/proc/sys/vm/drop_caches
rm -f /tmp/ok.*
i=0; while [ $i -lt 8 ]; do (cmp /mnt/enc/p$i /tmp/big2 && cmp /mnt/enc/q$i /tmp/four_k && : >/tmp/ok.$i) & i=$((i + 1)); done
wait
check parallel-files test "$(ls /tmp/ok.* 2>/dev/null | wc -l)" -eq 8
dmesg | grep -i 'fscrypt\|blk-crypto' | sed 's/^/SMOKE LOG /'
if [ "$no_ice" = 1 ]; then
    check blk-crypto-fallback sh -c 'dmesg | grep -q "blk-crypto-fallback"'
else
    check blk-crypto-native sh -c 'dmesg | grep -q "blk-crypto (native)"'
fi
check umount umount /mnt
# Removal and a second probe: teardown, free_disk, the index allocator.
check rmmod rmmod icelab_vblk
check vda-gone test ! -e /sys/block/vda
check insmod-again insmod /icelab_vblk.ko
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done
check vda-again test -b /dev/vda
check mount-again mount -t ext4 -o inlinecrypt /dev/vda /mnt
check umount-again umount /mnt
check rmmod-again rmmod icelab_vblk
dmesg | grep -iE 'warn|bug|oops|error' | grep -v 'ACPI' | sed 's/^/SMOKE DMESG /' | head -20
check no-kernel-warnings sh -c '! dmesg | grep -v "module verification failed" | grep -qE "WARNING:|BUG:|Oops|icelab_vblk.*failed"'
echo "SMOKE END"
sync
poweroff -f
EOF_INIT
chmod 755 "$initrd_dir/init"
# The root's busybox is static: its cpio runs on the host too.
(cd "$initrd_dir" && find . | "$rootfs/usr/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz"
log "initramfs: $(du -h "$work/initrd.gz" | cut -f1)"

# --- emulator and guest ------------------------------------------------------------

image=$work/disk.img
sock=$work/vhost.sock
rm -f "$image" "$sock" "$work"/{stats.json,trace.jsonl,serve.log,console.log}
: >"$work/console.log"
serve_args=(serve --image "$image" --socket "$sock" --size 256M --queues 2
    --trace "$work/trace.jsonl" --stats "$work/stats.json")
if [[ $no_ice == 1 ]]; then
    serve_args+=(--no-inline-encryption)
else
    serve_args+=(--profile "$profile" ${ICELAB_SLOTS:+--slots "$ICELAB_SLOTS"})
fi
"$icelab" "${serve_args[@]}" >"$work/serve.log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    [[ -S $sock ]] && break
    sleep 0.1
done
[[ -S $sock ]] || die "icelab serve did not create $sock; see $work/serve.log"

ice=on
[[ $no_ice == 1 ]] && ice=off
log "booting $release under TCG (inline-encryption=$ice)"
status=0
timeout "$timeout_s" "$qemu" -nodefaults -machine q35 -accel tcg -cpu max -smp 2 -m 1G \
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
    -chardev socket,id=vu,path="$sock" \
    -device vhost-user-blk-pci,chardev=vu,num-queues=2,inline-encryption=$ice \
    -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 icelab.no_ice=$no_ice" \
    -display none -serial file:"$work/console.log" -no-reboot \
    ${ICELAB_QEMU_ARGS:-} || status=$?
((status == 0)) || log "qemu exited with status $status"

# icelab serve writes its stats at exit.
kill -INT "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true
trap - EXIT

# --- verdict -----------------------------------------------------------------------

grep '^SMOKE' "$work/console.log" | grep -v '^SMOKE PASS\|^SMOKE FAIL' | sed 's/\r$//' >&2 || true
passed=$(grep -c '^SMOKE PASS' "$work/console.log" || true)
failed=$(grep -c '^SMOKE FAIL' "$work/console.log" || true)
grep '^SMOKE FAIL' "$work/console.log" >&2 || true
if ! grep -q '^SMOKE END' "$work/console.log"; then
    log "the guest did not finish; console tail:"
    tail -n 40 "$work/console.log" >&2 || true
    failed=$((failed + 1))
fi

host_check() {
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        log "host PASS $name"
    else
        failed=$((failed + 1))
        log "host FAIL $name"
    fi
}
# stat EXPR: evaluates a Python expression over the stats JSON (as `s`).
stat() {
    python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))["stats"]
sys.exit(0 if eval(sys.argv[2]) else 1)' "$work/stats.json" "$1"
}
if [[ -f $work/stats.json ]]; then
    log "stats: $(tr -d ' \n' <"$work/stats.json" | head -c 1500)"
fi
host_check stats-written test -f "$work/stats.json"
host_check no-rejected-requests stat 's["rejected"]["total"] == 0'
if [[ $no_ice == 1 ]]; then
    host_check no-crypto-requests stat 's["crypto_out"]["requests"] == 0 and s["crypto_in"]["requests"] == 0'
    host_check no-keyslots-programmed stat 's["keyslots"]["programmed"] == 0'
else
    host_check keyslots-programmed stat 's["keyslots"]["programmed"] >= 1'
    host_check crypto-out-requests stat 's["crypto_out"]["requests"] > 0'
    host_check crypto-in-requests stat 's["crypto_in"]["requests"] > 0'
fi
host_check plain-io stat 's["plain_out"]["requests"] > 0 and s["plain_in"]["requests"] > 0'
host_check discard-requests stat 's["discard"] > 0'
host_check plaintext-absent-from-image bash -c "! grep -q ICELAB-PLAINTEXT-MARKER '$image'"
if [[ $no_ice == 1 ]]; then
    host_check no-program-events bash -c "! grep -q '\"program\"' '$work/trace.jsonl' 2>/dev/null"
else
    host_check program-events grep -q 'program' "$work/trace.jsonl"
fi

log "artifacts in $work"
echo "$passed passed, $failed failed"
((failed == 0))
