#!/bin/bash
# A workload of the kind a CI system brings (written for icelab's own
# tests, not a third-party suite), run in the userland guest by
# scripts/test:
#
#   icelab run --share DIR --guest-cmd './encrypt-fio.sh results' \
#       --guest-junit results/junit.xml
#
# On $ICELAB_SCRATCH_DEV: mkfs.ext4 -O encrypt, mount -o inlinecrypt, an
# fscrypt policy set with Google's fscrypt tool (raw_key protector), fio
# writing with verification, caches dropped and fio verifying again from
# the disk, unmount, e2fsck -fn. Each step is a JUnit test case in
# RESULTS/junit.xml; the exit status is 0 only when every step passed.
set -u

results=${1:-results}
mkdir -p "$results"
junit=$results/junit.xml
mnt=/mnt/scratch
dev=${ICELAB_SCRATCH_DEV:?ICELAB_SCRATCH_DEV is not set: run this in icelab run --guest-cmd}
cases=()
failures=0

xml_escape() {
    sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'
}

# step NAME CMD...: runs CMD, records a test case with its time and, on
# failure, its output.
step() {
    local name=$1
    shift
    local start end output status=0
    start=$(date +%s.%N)
    output=$("$@" 2>&1) || status=$?
    end=$(date +%s.%N)
    local seconds
    seconds=$(echo "$end - $start" | bc)
    printf '%s %s (%.1f s)\n' "$([[ $status -eq 0 ]] && echo PASS || echo FAIL)" "$name" "$seconds"
    [[ -n $output ]] && printf '%s\n' "$output" | sed 's/^/    /'
    local body=""
    if ((status != 0)); then
        failures=$((failures + 1))
        body="<failure message=\"exit status $status\">$(printf '%s' "$output" | tail -n 40 | xml_escape)</failure>"
    fi
    cases+=("<testcase classname=\"workload\" name=\"$name\" time=\"$seconds\">$body</testcase>")
    return "$status"
}

write_key() {
    head -c 32 /dev/urandom >/tmp/workload.key
}

set_policy() {
    fscrypt setup --force --quiet &&
        fscrypt setup --quiet "$mnt" &&
        mkdir "$mnt/enc" &&
        fscrypt encrypt "$mnt/enc" --quiet --source=raw_key --name=workload \
            --key=/tmp/workload.key &&
        fscrypt status "$mnt/enc"
}

fio_verify() {
    fio --name=write-verify --directory="$mnt/enc" --size=24M --bs=4k \
        --rw=randwrite --ioengine=psync --direct=1 --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --verify_state_save=0 --end_fsync=1 --randseed=7
}

fio_verify_from_disk() {
    sync && echo 3 >/proc/sys/vm/drop_caches &&
        fio --name=write-verify --directory="$mnt/enc" --size=24M --bs=4k \
            --rw=randwrite --ioengine=psync --direct=1 --verify=crc32c --verify_only \
            --verify_fatal=1 --verify_state_save=0 --randseed=7
}

unmount() {
    fscrypt lock "$mnt/enc" --quiet 2>/dev/null
    umount "$mnt"
}

mkdir -p "$mnt"
step mkfs mkfs.ext4 -q -F -O encrypt "$dev" &&
    step mount mount -o inlinecrypt "$dev" "$mnt" &&
    step key write_key &&
    step fscrypt-policy set_policy &&
    step fio-write-verify fio_verify &&
    step fio-verify-from-disk fio_verify_from_disk
step unmount unmount
step e2fsck e2fsck -fn "$dev"

{
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<testsuite name=\"workload\" tests=\"${#cases[@]}\" failures=\"$failures\">"
    printf '  %s\n' "${cases[@]}"
    echo '</testsuite>'
} >"$junit"
echo "wrote $junit: ${#cases[@]} test cases, $failures failed"
((failures == 0))
