#!/usr/bin/env bash
# Builds icelab_vblk.ko for the guest kernel, inside icelab's build root.
#
#   guest-driver/build.sh ROOT OUTDIR
#
# ROOT    the build root printed by images/build-root.sh (the directory
#         holding rootfs/ and kernel-version.txt), or a chroot directory
#         with a kernel build tree under /lib/modules/*/build
# OUTDIR  where icelab_vblk.ko is written (created when missing); its path
#         is the last line of stdout
#
# Environment:
#   ICELAB_KERNEL_RELEASE  the kernel release to build for; default: the
#                          root's kernel-version.txt, else the only
#                          /lib/modules/*/build in the root
#   ICELAB_WARNINGS        "error" (default) fails the build on any compiler,
#                          modpost or objtool warning; "allow" does not
#   ICELAB_W               kbuild's extra warning level (default 1, as W=1)
#
# The sources are copied into the root's /tmp and built there with the
# root's gcc-14; /proc is mounted in a private mount namespace (objtool
# needs it), so nothing is left mounted and concurrent builds do not
# interfere. Needs root (unshare, chroot).
set -euo pipefail

log() { printf 'guest-driver: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

(($# == 2)) || die "usage: $0 ROOT OUTDIR"
root=$1
out=$2
src=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
warnings=${ICELAB_WARNINGS:-error}
wlevel=${ICELAB_W:-1}

[[ $(id -u) -eq 0 ]] || die "must run as root (unshare, chroot)"
[[ -d $root ]] || die "no such build root: $root"
info=
if [[ -d $root/rootfs ]]; then
    info=$root/kernel-version.txt
    root=$root/rootfs
fi
root=$(readlink -f "$root")

release=${ICELAB_KERNEL_RELEASE:-}
if [[ -z $release && -n $info && -f $info ]]; then
    release=$(sed -n 's/^release=//p' "$info")
fi
if [[ -z $release ]]; then
    builds=("$root"/lib/modules/*/build)
    ((${#builds[@]} == 1)) && [[ -e ${builds[0]} ]] ||
        die "cannot tell the kernel release: set ICELAB_KERNEL_RELEASE (found: ${builds[*]})"
    release=${builds[0]#"$root"/lib/modules/}
    release=${release%/build}
fi
kdir=/lib/modules/$release/build
[[ -e $root$kdir/Makefile ]] || die "no kernel build tree at $root$kdir"

mkdir -p "$root/tmp"
work=$(mktemp -d "$root/tmp/icelab-guest-driver.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
cp "$src"/Kbuild "$src"/*.c "$src"/*.h "$work"/
inroot=/tmp/${work##*/}

log "building icelab_vblk.ko for $release (W=$wlevel)"
buildlog=$work/build.log
status=0
unshare --mount --propagation private /bin/sh -c '
    mount -t proc proc "$1/proc" &&
    exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LC_ALL=C.UTF-8 \
        make -C "$2" M="$3" W="$4" modules
' sh "$root" "$kdir" "$inroot" "$wlevel" >"$buildlog" 2>&1 || status=$?
cat "$buildlog" >&2
((status == 0)) || die "make failed (status $status)"

if grep -qiE '(^|[^a-z])warning:' "$buildlog"; then
    if [[ $warnings == error ]]; then
        die "the build has warnings (ICELAB_WARNINGS=allow to accept them)"
    fi
    log "the build has warnings"
fi

mkdir -p "$out"
cp "$work/icelab_vblk.ko" "$out/"
log "built $(readlink -f "$out/icelab_vblk.ko")"
readlink -f "$out/icelab_vblk.ko"
