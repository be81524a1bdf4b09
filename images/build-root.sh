#!/usr/bin/env bash
# Builds icelab's build root: a Debian trixie tree (debootstrap) holding
#   - the newest linux-image-cloud-amd64 of trixie-backports (the guest
#     kernel, used unmodified) and its matching linux-headers,
#   - what an out-of-tree module build for that kernel needs: gcc-14 (the
#     compiler Debian built the kernel with; the host's gcc-12 cannot build
#     for it), make, dwarves (pahole, for module BTF), libelf-dev,
#   - the guest tools the initramfs takes: busybox-static, e2fsprogs,
#     keyutils, fscrypt, fio.
#
#   images/build-root.sh            build (or find) the root; the last line
#                                   of stdout is its directory
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/icelab/root-<hash>, where <hash>
# is a short hash of this file's contents: edit the recipe and a new root
# is built, run it again unchanged and it only prints the path. Layout:
#   root-<hash>/rootfs/               the chroot
#   root-<hash>/kernel-version.txt    key=value: the kernel package, its
#                                     exact version, the release (uname -r),
#                                     the paths of vmlinuz and the headers
#   root-<hash>/vmlinuz               the guest kernel (a copy)
# The tree is built in a temporary directory beside it and renamed only
# when complete, so an interrupted build never looks finished; a later run
# deletes what an interrupted one left.
#
# The cached root pins the kernel that was newest in trixie-backports when
# it was built; delete the directory to pick up a newer one.
#
# Mirror: $ICELAB_MIRROR if set, else the Debian archive URI of the host's
# apt configuration (the entry for the host's own release), else
# debootstrap's default. Nothing in the repo names a mirror host.
#
# Needs root (debootstrap, chroot, mount) and debootstrap on the host
# (scripts/install-deps installs it; this recipe never runs apt-get on the
# host). Progress goes to stderr.
# ICELAB_KEEP_FAILED=1 keeps the tree of a failed build for inspection
# (the next build deletes it).
set -euo pipefail

SUITE=trixie
BACKPORTS=trixie-backports
KERNEL_META=linux-image-cloud-amd64
HEADERS_META=linux-headers-cloud-amd64
# Everything from $SUITE itself, in one debootstrap run.
PACKAGES=(
    # module builds (the headers package pulls linux-kbuild with its prebuilt
    # fixdep, modpost and objtool)
    gcc-14 make dwarves libelf-dev bc kmod
    # guest tools
    busybox-static e2fsprogs keyutils fscrypt fio
    # apt over https mirrors
    ca-certificates
)

RECIPE=build-root
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=images/lib.sh
. "$here/lib.sh"

# The cache key covers this recipe and the helpers it sources.
hash=$(cat "$here/build-root.sh" "$here/lib.sh" | sha256sum | cut -c1-12)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/icelab
final=$cache/root-$hash

if [[ -f $final/kernel-version.txt && -d $final/rootfs ]]; then
    log "cached: $final"
    printf '%s\n' "$final"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot, mount)"
mkdir -p "$cache"

# --- the mirror ---------------------------------------------------------------

mirror=${ICELAB_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(host_mirror | head -n1)
fi
if [[ -n $mirror ]]; then
    log "mirror: $mirror${ICELAB_MIRROR:+ (ICELAB_MIRROR)}"
else
    log "mirror: none found in the host's apt sources, using debootstrap's default"
fi

# --- host tools -----------------------------------------------------------------

require_commands debootstrap unshare chroot flock setsid sha256sum

# --- the build directory ----------------------------------------------------------

# umount_under DIR: unmounts everything mounted at or below DIR, deepest
# first. Mounts are made in private namespaces (see in_root); this is the
# safety net for whatever leaks anyway.
umount_under() {
    local dir=$1 m
    dir=$(readlink -f "$dir")
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r)
}

# Builds of the same recipe run one at a time; a build that finds the lock
# free may delete what an interrupted build left behind.
exec 9>"$cache/root-$hash.lock"
if ! flock -n 9; then
    log "another build of root-$hash is running, waiting for it"
    flock 9
fi
if [[ -f $final/kernel-version.txt && -d $final/rootfs ]]; then
    log "built meanwhile: $final"
    printf '%s\n' "$final"
    exit 0
fi
# Leftovers of interrupted builds, of this recipe or an older one: each is
# removed unless a build holding its recipe's lock is still running.
for stale in "$cache"/.root-*.*; do
    [[ -d $stale ]] || continue
    stale_hash=${stale##*/.root-}
    stale_hash=${stale_hash%%.*}
    if [[ $stale_hash == "$hash" ]] || flock -n "$cache/root-$stale_hash.lock" true; then
        log "removing an interrupted build: $stale"
        umount_under "$stale"
        rm -rf --one-file-system "$stale"
    fi
done

work=$(mktemp -d "$cache/.root-$hash.XXXXXX")
root=$work/rootfs
cleanup() {
    local status=$?
    stop_step
    umount_under "$work"
    if [[ -d $work && $status -ne 0 && -n ${ICELAB_KEEP_FAILED:-} ]]; then
        log "kept for inspection (ICELAB_KEEP_FAILED): $work"
    elif [[ -d $work ]]; then
        rm -rf --one-file-system "$work"
    fi
    if ((status != 0)); then
        log "failed (status $status); nothing was cached"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- stage 1: debootstrap ---------------------------------------------------------

include=$(
    IFS=,
    echo "${PACKAGES[*]}"
)
step "debootstrap $SUITE (minbase + ${PACKAGES[*]})"
debootstrap_log=$work/debootstrap.log
mkdir -p "$root"
status=0
# In a private mount namespace, so that what debootstrap mounts in the
# root is gone when it ends, even if it is killed.
# shellcheck disable=SC2016
run_step bash -c 'set -o pipefail
    log=$1
    shift
    unshare --mount --propagation private -- debootstrap "$@" 2>&1 | tee "$log" |
        grep --line-buffered -E "^(I|W|E): " >&2' \
    debootstrap "$debootstrap_log" --variant=minbase --include="$include" "$SUITE" "$root" \
    ${mirror:+"$mirror"} || status=$?
if ((status != 0)) || ! [[ -x $root/usr/bin/apt-get ]]; then
    # debootstrap says "Couldn't download package X (ver V arch A) at URL"
    # or "Couldn't download packages: X Y" when a fetch fails.
    failed_pkgs=$(sed -n -e "s/.*Couldn't download package \([^ ]*\) .*/\1/p" \
        -e "s/.*Couldn't download packages: //p" "$debootstrap_log" | tr ' ' '\n' | sort -u | tr '\n' ' ')
    if [[ -n $failed_pkgs ]]; then
        die "download failed: package(s) ${failed_pkgs% } from mirror ${mirror:-(debootstrap default)}"
    fi
    tail -n 20 "$debootstrap_log" >&2
    die "debootstrap failed (mirror ${mirror:-(debootstrap default)}); its log is above"
fi
if [[ -z $mirror ]]; then
    mirror=$(awk '$1 == "deb" { print $2; exit }' "$root/etc/apt/sources.list")
fi

# --- stage 2: the kernel from backports ---------------------------------------------

# in_root CMD...: runs CMD in the root with /proc, /sys and /dev/pts
# mounted (package scripts want /proc). The mounts live in a private mount
# namespace: they vanish when CMD ends, however it ends.
in_root() {
    unshare --mount --propagation private -- sh -c '
        root=$1
        shift
        mount -t proc proc "$root/proc"
        mount -t sysfs sysfs "$root/sys"
        mount -t devpts devpts "$root/dev/pts" -o newinstance,ptmxmode=0666 2>/dev/null || true
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"' in_root "$root" "$@"
}

# No daemons start in the root, and dpkg skips fsync (the tree is thrown
# away if the build fails anyway).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/icelab-unsafe-io"
# The guest boots with icelab's own initramfs: an initramfs generator
# (dracut or initramfs-tools, with systemd and udev behind them) would
# cost time in every kernel install and never be used. The kernel package
# only asks for some linux-initramfs-tool: an empty package provides it.
mkdir -p "$root/tmp/icelab-no-initramfs/DEBIAN"
cat >"$root/tmp/icelab-no-initramfs/DEBIAN/control" <<'EOF_CONTROL'
Package: icelab-no-initramfs
Version: 1
Architecture: all
Maintainer: icelab <icelab@localhost>
Provides: linux-initramfs-tool
Description: satisfies linux-initramfs-tool in icelab's build root
 The guest kernel boots with icelab's own initramfs; no generator needed.
EOF_CONTROL
in_root dpkg-deb --build /tmp/icelab-no-initramfs /tmp/icelab-no-initramfs.deb >/dev/null
in_root dpkg -i /tmp/icelab-no-initramfs.deb >&2
rm -rf "$root/tmp/icelab-no-initramfs" "$root/tmp/icelab-no-initramfs.deb"

printf 'deb %s %s main\n' "$mirror" "$BACKPORTS" >"$root/etc/apt/sources.list.d/backports.list"
apt_in_root() {
    in_root apt-get -y -q -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false "$@"
}
apt_log=$work/apt.log
step "apt-get update ($SUITE, $BACKPORTS)"
apt_in_root update 2>&1 | tee "$apt_log" >&2 ||
    die "apt-get update in the root failed (mirror $mirror); see above"
step "installing $KERNEL_META and $HEADERS_META from $BACKPORTS"
status=0
apt_in_root -t "$BACKPORTS" install "$KERNEL_META" "$HEADERS_META" 2>&1 | tee "$apt_log" >&2 ||
    status=$?
if ((status != 0)); then
    # apt says "E: Failed to fetch URL  reason" for each failed download.
    failed_urls=$(sed -n 's/^E: Failed to fetch \([^ ]*\).*/\1/p' "$apt_log")
    if [[ -n $failed_urls ]]; then
        while read -r url; do
            pkg=${url##*/}
            log "download failed: package ${pkg%%_*} ($pkg) from mirror $mirror"
        done <<<"$failed_urls"
    fi
    die "installing the kernel from $BACKPORTS failed (mirror $mirror)"
fi
apt_in_root clean

# --- record what was installed -------------------------------------------------------

kernels=("$root"/boot/vmlinuz-*)
((${#kernels[@]} == 1)) && [[ -f ${kernels[0]} ]] ||
    die "expected exactly one kernel in the root's /boot, found: ${kernels[*]}"
release=${kernels[0]##*/vmlinuz-}
kernel_pkg=linux-image-$release
kernel_version=$(in_root dpkg-query -W -f='${Version}' "$kernel_pkg") ||
    die "kernel package $kernel_pkg is not installed"
# The package that ships the image file (a dependency of $kernel_pkg in
# the 7.x packaging), for the record.
kernel_file_pkg=$(in_root dpkg-query -S "*/$release/vmlinuz" "*/vmlinuz-$release" 2>/dev/null |
    cut -d: -f1 | sort -u | paste -sd, -) || true
headers_pkg=linux-headers-$release
headers_version=$(in_root dpkg-query -W -f='${Version}' "$headers_pkg") ||
    die "headers package $headers_pkg is not installed"
[[ $headers_version == "$kernel_version" ]] ||
    die "headers $headers_pkg $headers_version do not match kernel $kernel_pkg $kernel_version"
[[ -e $root/lib/modules/$release/build/Makefile ]] ||
    die "/lib/modules/$release/build is not a kernel build tree"
meta_version=$(in_root dpkg-query -W -f='${Version}' "$KERNEL_META")
gcc_version=$(in_root gcc-14 -dumpfullversion)

cp "${kernels[0]}" "$work/vmlinuz"
{
    echo "# icelab build root, recipe images/build-root.sh sha256 ${hash}..."
    echo "suite=$SUITE"
    echo "mirror=$mirror"
    echo "package=$kernel_pkg"
    echo "version=$kernel_version"
    echo "kernel_file_package=$kernel_file_pkg"
    echo "meta_package=$KERNEL_META"
    echo "meta_version=$meta_version"
    echo "release=$release"
    echo "headers_package=$headers_pkg"
    echo "headers_version=$headers_version"
    echo "vmlinuz=rootfs/boot/vmlinuz-$release"
    echo "headers=rootfs/lib/modules/$release/build"
    echo "gcc=gcc-14 $gcc_version"
} >"$work/kernel-version.txt.tmp"
rm -f "$work/debootstrap.log" "$work/apt.log"
mv "$work/kernel-version.txt.tmp" "$work/kernel-version.txt"

# --- publish ---------------------------------------------------------------------

umount_under "$work"
mv -T "$work" "$final"
step "done: $kernel_pkg $kernel_version ($release)"
printf '%s\n' "$final"
