#!/usr/bin/env bash
# Builds icelab's QEMU: Debian's QEMU source, of the same version as the
# host's qemu-system-x86 package, plus icelab's patch
# (qemu/0001-vhost-user-blk-inline-encryption.patch: with its property
# inline-encryption=on, vhost-user-blk forwards VIRTIO_BLK_F_CTRL_VQ and
# VIRTIO_BLK_F_INLINE_ENCRYPTION, config bytes 96-103, and adds the control
# virtqueue after the request queues; docs/PROTOCOL.md). A minimal x86_64 system emulator: TCG and
# KVM, the devices of qemu/icelab-devices.mak, no docs, tools or UI.
#
#   images/build-qemu.sh        build (or find) it; the last line of stdout
#                               is the path of qemu-system-x86_64
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/icelab/qemu-<hash>, where <hash>
# covers this script, the patch, the device list and the Debian source
# version. Layout:
#   qemu-<hash>/bin/qemu-system-x86_64
#   qemu-<hash>/share/qemu/      option ROMs built from the source
#                                (linuxboot_dma.bin, ...); SeaBIOS comes
#                                from the host's seabios package
#   qemu-<hash>/version.txt      key=value: QEMU's version line, Debian
#                                source version, patch hash
# Built in a temporary directory beside it, renamed when complete.
#
# Source: the host's apt sources as deb-src entries in a private apt
# configuration (the host's own apt state is not touched), so apt checks
# the Release signature and every file's hash; `apt-get source` needs no
# deb-src lines on the host. With ICELAB_MIRROR set, that mirror is
# searched too. ICELAB_QEMU_SOURCE_VERSION=V picks another Debian version
# of the source (the patch targets 7.2).
#
# Needs the host's qemu-system-x86 (its version picks the source) and the
# build dependencies below: scripts/install-deps installs them; this recipe
# never runs apt-get on the host's apt state (two recipes run side by side
# and would fight over its locks). ICELAB_KEEP_FAILED=1 keeps the tree of a failed build for
# inspection (the next build deletes it).
set -euo pipefail

# What the build needs on the host (scripts/install-deps installs all of
# it): commands to fetch, unpack and build the source, the libraries QEMU
# links (checked with pkg-config; Debian's libfdt-dev has no .pc file, so
# its header) and SeaBIOS (bios-256k.bin) for the pc and q35 machines at
# run time.
BUILD_COMMANDS=(dpkg-source xz patch gcc make ninja meson python3 pkg-config flex bison strip)
BUILD_LIBRARIES=(glib-2.0 pixman-1 zlib)
BUILD_HEADERS=(/usr/include/libfdt.h)

RECIPE=build-qemu
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=images/lib.sh
. "$here/lib.sh"
self=$here/build-qemu.sh
patch_file=$here/qemu/0001-vhost-user-blk-inline-encryption.patch
devices_file=$here/qemu/icelab-devices.mak
cache=${XDG_CACHE_HOME:-$HOME/.cache}/icelab

# --- which source -------------------------------------------------------------

# The Debian source version of the host's QEMU: the installed
# qemu-system-x86, else apt's candidate for it. Source versions drop a
# binNMU suffix (+b3).
host_qemu_source_version() {
    local version candidate
    version=$(dpkg-query -W -f='${db:Status-Abbrev} ${source:Version}\n' qemu-system-x86 2>/dev/null |
        awk '$1 == "ii" { print $2 }')
    if [[ -n $version ]]; then
        echo "$version"
        return
    fi
    candidate=$(apt-cache policy qemu-system-x86 2>/dev/null | awk '/Candidate:/ { print $2 }')
    [[ -n $candidate && $candidate != "(none)" ]] || return 0
    version=$(apt-cache show "qemu-system-x86=$candidate" 2>/dev/null |
        sed -n 's/^Source: qemu (\(.*\))$/\1/p' | head -n1)
    echo "${version:-${candidate%+b[0-9]*}}"
}
source_version=${ICELAB_QEMU_SOURCE_VERSION:-}
if [[ -z $source_version ]]; then
    source_version=$(host_qemu_source_version)
fi
[[ -n $source_version ]] ||
    die "no qemu-system-x86 installed or known to apt: run scripts/install-deps (or set ICELAB_QEMU_SOURCE_VERSION)"

hash=$({
    cat "$self" "$here/lib.sh" "$patch_file" "$devices_file"
    echo "$source_version"
} | sha256sum | cut -c1-12)
final=$cache/qemu-$hash
binary=$final/bin/qemu-system-x86_64

if [[ -x $binary && -f $final/version.txt ]]; then
    log "cached: $final (qemu $source_version)"
    printf '%s\n' "$binary"
    exit 0
fi

mkdir -p "$cache"

# --- host build dependencies ------------------------------------------------------

require_commands "${BUILD_COMMANDS[@]}"
missing_libs=()
for lib in "${BUILD_LIBRARIES[@]}"; do
    pkg-config --exists "$lib" || missing_libs+=("$lib")
done
for header in "${BUILD_HEADERS[@]}"; do
    [[ -e $header ]] || missing_libs+=("$header")
done
((${#missing_libs[@]} == 0)) ||
    die "missing development libraries on the host: ${missing_libs[*]}; run scripts/install-deps (as root) to install them"
[[ -e /usr/share/seabios/bios-256k.bin ]] ||
    die "missing SeaBIOS (/usr/share/seabios/bios-256k.bin); run scripts/install-deps (as root) to install it"

# --- the build directory ---------------------------------------------------------

exec 9>"$cache/qemu-$hash.lock"
if ! flock -n 9; then
    log "another build of qemu-$hash is running, waiting for it"
    flock 9
fi
if [[ -x $binary && -f $final/version.txt ]]; then
    log "built meanwhile: $final"
    printf '%s\n' "$binary"
    exit 0
fi
# Leftovers of interrupted builds, of this recipe or an older one: each is
# removed unless a build holding its recipe's lock is still running.
for stale in "$cache"/.qemu-*.*; do
    [[ -d $stale ]] || continue
    stale_hash=${stale##*/.qemu-}
    stale_hash=${stale_hash%%.*}
    if [[ $stale_hash == "$hash" ]] || flock -n "$cache/qemu-$stale_hash.lock" true; then
        log "removing an interrupted build: $stale"
        rm -rf --one-file-system "$stale"
    fi
done

work=$(mktemp -d "$cache/.qemu-$hash.XXXXXX")
cleanup() {
    local status=$?
    stop_step
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

# --- fetch the source with a private apt configuration ------------------------------

# The host's `deb` entries, turned into `deb-src` ones.
apt_dir=$work/apt
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f"
done >"$apt_dir/sources.list.d/host.list"
i=0
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822: "Types: deb" (possibly with deb-src) becomes "Types: deb-src".
    sed -E 's/^(Types:).*\<deb\>([^-]|$).*/\1 deb-src/' "$f" >"$apt_dir/sources.list.d/host-$i.sources"
    i=$((i + 1))
done
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [[ -n ${ICELAB_MIRROR:-} && -n $codename ]]; then
    printf 'deb-src %s %s main\ndeb-src %s %s-updates main\n' \
        "$ICELAB_MIRROR" "$codename" "$ICELAB_MIRROR" "$codename" >>"$apt_dir/sources.list.d/host.list"
fi
apt_opts=(
    -o Dir::Etc::SourceList=/dev/null
    -o Dir::Etc::SourceParts="$apt_dir/sources.list.d"
    -o Dir::State::Lists="$apt_dir/lists"
    -o Dir::Cache="$apt_dir/cache"
    -o Debug::NoLocking=1
    -o APT::Sandbox::User=root
)
apt_private() { apt-get -q -o Dpkg::Use-Pty=0 "${apt_opts[@]}" "$@"; }
step "fetching the Sources indexes of the host's apt sources"
apt_private update >"$work/apt-update.log" 2>&1 || {
    cat "$work/apt-update.log" >&2
    log "warning: apt-get update had errors (above); trying the indexes it got"
}
# upstream_of VERSION: the upstream part of a Debian version
# (1:7.2+dfsg-7+deb12u18 -> 7.2+dfsg).
upstream_of() {
    local v=${1#*:}
    echo "${v%-*}"
}
fetch_source() {
    (cd "$work/dl" && apt_private source --download-only "qemu=$1") >"$work/apt-source.log" 2>&1
}
step "downloading Debian's QEMU source $source_version"
mkdir -p "$work/dl"
fetched_version=$source_version
if ! fetch_source "$source_version"; then
    cat "$work/apt-source.log" >&2
    # A mirror keeps only the current revision of each suite: when the
    # host's is gone, take the newest one of the same upstream version.
    fetched_version=
    while read -r v; do
        [[ $(upstream_of "$v") == "$(upstream_of "$source_version")" ]] || continue
        if [[ -z $fetched_version ]] || dpkg --compare-versions "$v" gt "$fetched_version"; then
            fetched_version=$v
        fi
    done < <(apt-cache "${apt_opts[@]}" showsrc qemu 2>/dev/null | sed -n 's/^Version: //p')
    uris=$(awk '/^deb-src/ { print $2 } /^URIs:/ { $1 = ""; print }' "$apt_dir"/sources.list.d/* | sort -u | tr '\n' ' ')
    [[ -n $fetched_version ]] ||
        die "could not download source package qemu $source_version, nor another revision of $(upstream_of "$source_version"), from: ${uris:-(no sources)}"
    log "qemu $source_version is gone from ${uris% }: taking $fetched_version (same upstream version)"
    fetch_source "$fetched_version" || {
        cat "$work/apt-source.log" >&2
        die "could not download source package qemu $fetched_version from: ${uris:-(no sources)}"
    }
fi
grep -E '^(Get|Fetched)' "$work/apt-source.log" >&2 || true

step "unpacking (dpkg-source applies Debian's patches)"
dsc=("$work"/dl/qemu_*.dsc)
[[ -f ${dsc[0]} ]] || die "no .dsc among the downloaded files"
# apt has already checked every file against the signed Sources index.
dpkg-source --no-check -x "${dsc[0]}" "$work/src" >"$work/dpkg-source.log" 2>&1 || {
    cat "$work/dpkg-source.log" >&2
    die "dpkg-source -x failed"
}
rm -rf "$work/dl"
upstream=$(cat "$work/src/VERSION")

step "applying ${patch_file##*/} to QEMU $upstream"
patch -d "$work/src" -p1 --batch --forward --fuzz=0 <"$patch_file" >&2 ||
    die "${patch_file##*/} does not apply to QEMU $upstream (Debian $source_version); it was written for 7.2"
cp "$devices_file" "$work/src/configs/devices/x86_64-softmmu/icelab.mak"

# --- configure and build -------------------------------------------------------------

step "configuring"
mkdir -p "$work/build"
# Option ROMs (linuxboot_dma.bin, ...) are built from the source and found
# in ../share/qemu beside the binary; SeaBIOS comes from the firmware path.
run_step env -C "$work/build" ../src/configure \
        --prefix="$final" \
        --target-list=x86_64-softmmu \
        --without-default-features \
        --without-default-devices \
        --with-devices-x86_64=icelab \
        --enable-tcg --enable-kvm --enable-vhost-user --enable-fdt=system \
        --disable-docs --disable-user --disable-debug-info --disable-werror \
        --disable-install-blobs \
        --audio-drv-list= \
        --firmwarepath=/usr/share/seabios \
        --with-git-submodules=ignore \
        --with-pkgversion="Debian $fetched_version + icelab inline-encryption" \
    >"$work/configure.log" 2>&1 || {
    tail -n 40 "$work/configure.log" >&2
    die "configure failed (log above)"
}

jobs=$(nproc)
step "building qemu-system-x86_64 with $jobs jobs"
# Only the emulator: `make all` would also build the unit tests (a third
# more work). The build's output goes to a log; every 200th line shows
# progress.
status=0
# shellcheck disable=SC2016
run_step bash -c 'set -o pipefail
    ninja -C "$1" -j"$2" qemu-system-x86_64 2>&1 | tee "$3" |
        awk '\''NR % 200 == 0 { print "build-qemu:   ... " $0; fflush() }'\'' >&2' \
    build "$work/build" "$jobs" "$work/build.log" || status=$?
if ((status != 0)); then
    grep -E -B2 -A8 'error|Error|FAILED' "$work/build.log" | tail -n 60 >&2
    die "build failed (excerpt above)"
fi

# The option ROMs (linuxboot_dma.bin is what -kernel boots through).
# QEMU 7.2's configure sets them up only when i386-softmmu is a target,
# so they are built here with the host compiler, as configure would.
step "building the option ROMs"
mkdir -p "$work/build/optionrom-icelab"
printf 'TOPSRC_DIR=%s\nCC=gcc\nCCAS=gcc\nOBJCOPY=objcopy\nPYTHON=python3\n' "$work/src" \
    >"$work/build/optionrom-icelab/config.mak"
make -C "$work/build/optionrom-icelab" -f "$work/src/pc-bios/optionrom/Makefile" all \
    >"$work/optionrom.log" 2>&1 || {
    tail -n 30 "$work/optionrom.log" >&2
    die "building the option ROMs failed (log above)"
}

# --- install what the lab needs ---------------------------------------------------------

out=$work/out
mkdir -p "$out/bin" "$out/share/qemu"
cp "$work/build/qemu-system-x86_64" "$out/bin/"
strip "$out/bin/qemu-system-x86_64"
cp "$work"/build/optionrom-icelab/*.bin "$out/share/qemu/"
[[ -f $out/share/qemu/linuxboot_dma.bin ]] || die "linuxboot_dma.bin was not built"

# A binary that cannot show the patched property or the q35 machine is
# not worth caching.
"$out/bin/qemu-system-x86_64" -device vhost-user-blk-pci,help 2>&1 | grep -q 'inline-encryption=' ||
    die "the built QEMU has no vhost-user-blk-pci inline-encryption property"
"$out/bin/qemu-system-x86_64" -machine help | grep -q '^q35' ||
    die "the built QEMU has no q35 machine"

qemu_version=$("$out/bin/qemu-system-x86_64" --version | head -n1)
{
    echo "qemu_version=$qemu_version"
    echo "upstream_version=$upstream"
    echo "debian_source_version=$fetched_version"
    echo "patch=${patch_file##*/} sha256 $(sha256sum "$patch_file" | cut -d' ' -f1)"
    echo "devices=${devices_file##*/} sha256 $(sha256sum "$devices_file" | cut -d' ' -f1)"
    echo "firmware_path=/usr/share/seabios"
} >"$out/version.txt"

mv -T "$out" "$final"
step "done: $qemu_version"
printf '%s\n' "$final/bin/qemu-system-x86_64"
