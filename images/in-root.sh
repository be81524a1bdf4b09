#!/usr/bin/env bash
# Runs a command inside icelab's build root (images/build-root.sh), with
# /proc, /sys and /dev/pts mounted (objtool and package scripts need /proc)
# and host directories bind-mounted where asked.
#
#   images/in-root.sh ROOT [--bind HOST_DIR:ROOT_DIR]... [--] CMD [ARGS...]
#
# ROOT is the directory build-root.sh prints (root-<hash>, holding rootfs/)
# or the rootfs itself. ROOT_DIR is created in the root when missing. The
# command runs as root with a clean environment (PATH, HOME, LC_ALL=C.UTF-8,
# plus KBUILD_BUILD_TIMESTAMP and SOURCE_DATE_EPOCH when set) in ROOT_DIR
# of the first --bind, else in /.
#
# The mounts live in a private mount namespace (unshare): they are gone
# when the command ends, however it ends (even SIGKILL), never visible on
# the host, and several runs on one root do not disturb each other.
#
# Example, building a module against the guest kernel:
#   images/in-root.sh "$root" --bind "$PWD/guest-driver:/build" -- \
#       make -C /lib/modules/$release/build M=/build modules
set -euo pipefail

usage() {
    echo "usage: $0 ROOT [--bind HOST_DIR:ROOT_DIR]... [--] CMD [ARGS...]" >&2
    exit 2
}
(($# >= 2)) || usage
root=$1
shift
[[ -d $root/rootfs ]] && root=$root/rootfs
[[ -x $root/usr/bin/env ]] || {
    echo "in-root: $root is not a build root" >&2
    exit 1
}
root=$(readlink -f "$root")

binds=()
while (($#)); do
    case $1 in
    --bind)
        [[ $2 == *:/* ]] || usage
        binds+=("$2")
        shift 2
        ;;
    --) shift && break ;;
    *) break ;;
    esac
done
(($# >= 1)) || usage
[[ $(id -u) -eq 0 ]] || {
    echo "in-root: must run as root (mount, chroot)" >&2
    exit 1
}

workdir=/
if ((${#binds[@]} > 0)); then
    workdir=${binds[0]#*:}
fi
env_args=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8)
[[ -n ${KBUILD_BUILD_TIMESTAMP:-} ]] && env_args+=("KBUILD_BUILD_TIMESTAMP=$KBUILD_BUILD_TIMESTAMP")
[[ -n ${SOURCE_DATE_EPOCH:-} ]] && env_args+=("SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH")

# Everything after `unshare` runs in the new mount namespace. The binds
# are passed as arguments, after the separator.
exec unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1 workdir=$2 nbinds=$3
    shift 3
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount -t devpts devpts "$root/dev/pts" -o newinstance,ptmxmode=0666 2>/dev/null || true
    for ((i = 0; i < nbinds; i++)); do
        src=${1%%:*} dest=${1#*:}
        shift
        mkdir -p "$root$dest"
        mount --bind "$src" "$root$dest"
    done
    env_count=$1
    shift
    env_args=("${@:1:env_count}")
    shift "$env_count"
    exec chroot "$root" /usr/bin/env -i "${env_args[@]}" sh -c "cd \"\$0\" && exec \"\$@\"" "$workdir" "$@"
' in-root "$root" "$workdir" "${#binds[@]}" "${binds[@]}" "${#env_args[@]}" "${env_args[@]}" "$@"
