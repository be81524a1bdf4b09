#!/usr/bin/env bash
# Builds icelab-guest, the in-guest test runner, as a static x86_64 binary
# (glibc, crt-static) for the lab's initramfs.
#
#   guest-tests/build.sh [CARGO ARGS...]
#
# The last line of stdout is the binary's path. Extra arguments go to
# `cargo build` (e.g. --locked). Works from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=x86_64-unknown-linux-gnu
# crt-static links glibc statically: the initramfs has no loader or libc
# for the runner (the other tools bring their own libraries).
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release -p icelab-guest --target "$target" "$@" >&2

target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin=$target_dir/$target/release/icelab-guest
[[ -x $bin ]] || {
    echo "build.sh: no binary at $bin" >&2
    exit 1
}
# A dynamically linked runner would fail in the guest with a confusing
# "not found" from the kernel: refuse it here.
if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
    echo "build.sh: $bin is dynamically linked; expected a static binary" >&2
    exit 1
fi
printf '%s\n' "$bin"
