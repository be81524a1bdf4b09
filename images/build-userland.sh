#!/usr/bin/env bash
# Builds the guest's real userland: a Debian trixie root filesystem image
# for `icelab run --guest-cmd` and `icelab shell` (the initramfs suites do
# not use it).
#
#   images/build-userland.sh BUILD_ROOT    build (or find) the image; the
#                                          last line of stdout is its
#                                          directory
#
# BUILD_ROOT is the directory images/build-root.sh printed: the userland
# gets that root's kernel modules (/lib/modules/RELEASE, so modprobe finds
# xfs, dm-*, loop, ...) and is debootstrapped from the same mirror.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/icelab/userland-<hash>, where
# <hash> covers this recipe, images/lib.sh and the build root's directory
# name (itself a hash of its recipe). Layout:
#   userland-<hash>/root.img       ext4 image (label icelab-root), sparse;
#                                  the guest boots it read-write through a
#                                  QEMU snapshot, so it never changes
#   userland-<hash>/userland.txt   key=value: suite, mirror, kernel release,
#                                  packages, image size
#
# What is in it: the tools tests commonly need (PACKAGES below), the
# kernel's modules, and /etc/modprobe.d/icelab.conf, which keeps the stock
# virtio_blk out (icelab_vblk, loaded from the initramfs before the switch
# to this root, drives every virtio disk). No init system: icelab's runner
# stays PID 1 and runs the user's command or shell.
#
# Needs root (debootstrap, chroot) and debootstrap and mke2fs on the host
# (scripts/install-deps). Progress goes to stderr.
set -euo pipefail

SUITE=trixie
PACKAGES=(
    bash coreutils util-linux e2fsprogs xfsprogs keyutils fio perl python3
    attr acl fscrypt gawk bc psmisc kmod procps findutils grep sed
    diffutils file xz-utils strace dmsetup quota libcap2-bin uuid-runtime
    libaio1t64 liburing2 hostname less
)
# Free space left in the image beyond its contents (the guest's writes go
# to QEMU's snapshot file, so this is only the most a run may add).
HEADROOM_MIB=2048

RECIPE=build-userland
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=images/lib.sh
. "$here/lib.sh"

(($# == 1)) || die "usage: $0 BUILD_ROOT (the directory images/build-root.sh printed)"
build_root=$(readlink -f "$1")
[[ -f $build_root/kernel-version.txt && -d $build_root/rootfs ]] ||
    die "$1 is not a build root (no kernel-version.txt and rootfs/); run images/build-root.sh"
release=$(sed -n 's/^release=//p' "$build_root/kernel-version.txt")
[[ -n $release && -d $build_root/rootfs/lib/modules/$release ]] ||
    die "the build root $build_root has no modules for its kernel; delete it to rebuild it"

hash=$( (
    cat "$here/build-userland.sh" "$here/lib.sh"
    basename "$build_root"
) | sha256sum | cut -c1-12)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/icelab
final=$cache/userland-$hash

if [[ -f $final/userland.txt && -f $final/root.img ]]; then
    log "cached: $final"
    printf '%s\n' "$final"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot)"
require_commands debootstrap unshare chroot flock mke2fs sha256sum
mkdir -p "$cache"

exec 9>"$cache/userland-$hash.lock"
if ! flock -n 9; then
    log "another build of userland-$hash is running, waiting for it"
    flock 9
fi
if [[ -f $final/userland.txt && -f $final/root.img ]]; then
    printf '%s\n' "$final"
    exit 0
fi
for stale in "$cache"/.userland-*.*; do
    [[ -d $stale ]] || continue
    stale_hash=${stale##*/.userland-}
    stale_hash=${stale_hash%%.*}
    if [[ $stale_hash == "$hash" ]] || flock -n "$cache/userland-$stale_hash.lock" true; then
        log "removing an interrupted build: $stale"
        rm -rf --one-file-system "$stale"
    fi
done

mirror=${ICELAB_MIRROR:-$(sed -n 's/^mirror=//p' "$build_root/kernel-version.txt")}
[[ -n $mirror ]] || mirror=$(host_mirror | head -n1)
log "mirror: ${mirror:-(debootstrap default)}"

work=$(mktemp -d "$cache/.userland-$hash.XXXXXX")
tree=$work/tree
cleanup() {
    local status=$?
    stop_step
    [[ -d $work ]] && rm -rf --one-file-system "$work"
    ((status == 0)) || log "failed (status $status); nothing was cached"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

include=$(
    IFS=,
    echo "${PACKAGES[*]}"
)
step "debootstrap $SUITE (minbase + ${#PACKAGES[@]} packages)"
mkdir -p "$tree"
status=0
# shellcheck disable=SC2016
run_step bash -c 'set -o pipefail
    log=$1
    shift
    unshare --mount --propagation private -- debootstrap "$@" 2>&1 | tee "$log" |
        grep --line-buffered -E "^(I|W|E): " >&2' \
    debootstrap "$work/debootstrap.log" --variant=minbase --include="$include" "$SUITE" "$tree" \
    ${mirror:+"$mirror"} || status=$?
if ((status != 0)); then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (mirror ${mirror:-(debootstrap default)}); its log is above"
fi

step "the kernel's modules ($release)"
mkdir -p "$tree/lib/modules"
cp -a "$build_root/rootfs/lib/modules/$release" "$tree/lib/modules/"
rm -f "$tree/lib/modules/$release/build" "$tree/lib/modules/$release/source"
unshare --mount --propagation private -- chroot "$tree" /sbin/depmod -a "$release"

step "configuration"
cat >"$tree/etc/modprobe.d/icelab.conf" <<'EOF'
# icelab: icelab_vblk (loaded from the initramfs) drives every virtio disk,
# with inline encryption where the device offers it. The stock virtio_blk
# would race it for the same devices, so it never loads (the kernel command
# line also says module_blacklist=virtio_blk).
blacklist virtio_blk
install virtio_blk /bin/false
EOF
echo icelab >"$tree/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 icelab\n' >"$tree/etc/hosts"
: >"$tree/etc/fstab"
mkdir -p "$tree/share"
rm -rf "$tree/var/cache/apt/archives"/*.deb "$tree/var/lib/apt/lists"/* "$tree/var/log"/*.log
rm -f "$work/debootstrap.log"

step "ext4 image"
used_mib=$(du -sm --apparent-size "$tree" | cut -f1)
size_mib=$((used_mib + used_mib / 4 + HEADROOM_MIB))
image=$work/root.img
truncate -s "${size_mib}M" "$image"
mke2fs -q -t ext4 -O encrypt -L icelab-root -d "$tree" "$image" ||
    die "mke2fs -d failed on $tree"
{
    echo "# icelab userland, recipe images/build-userland.sh sha256 ${hash}..."
    echo "suite=$SUITE"
    echo "mirror=$mirror"
    echo "release=$release"
    echo "build_root=$(basename "$build_root")"
    echo "packages=${PACKAGES[*]}"
    echo "contents_mib=$used_mib"
    echo "image_mib=$size_mib"
} >"$work/userland.txt"
rm -rf --one-file-system "$tree"
mv -T "$work" "$final"
step "done: $final/root.img (${size_mib} MiB, ${used_mib} MiB used)"
printf '%s\n' "$final"
