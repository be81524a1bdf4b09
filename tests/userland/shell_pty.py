#!/usr/bin/env python3
"""Drives `icelab shell` (the interactive login shell) through a
pseudo-terminal, as a person at a terminal would: waits for the prompt,
types a command, reads its output, types `exit`, and checks that the guest
powered off, icelab exited 0 and printed the devices' stats.

    tests/userland/shell_pty.py ICELAB_BINARY [TIMEOUT_SECONDS]

Exits 0 and prints `shell-pty: ok ...` when every step held; exits 1 naming
the step that did not, with the end of what the terminal showed. Used by
scripts/test; only the standard library.
"""

import os
import pty
import re
import select
import sys
import time

MARK = "icelab-pty-check"


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-4], file=sys.stderr)
        return 2
    icelab = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) == 3 else 600.0
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(icelab, [icelab, "shell", "--disks", "1"])
    seen = bytearray()
    deadline = time.monotonic() + timeout

    def fail(step):
        tail = seen[-3000:].decode("utf-8", "replace")
        print(f"shell-pty: FAIL: {step}\n--- the terminal showed:\n{tail}")
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        return 1

    def read_until(pattern, step):
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            text = seen.decode("utf-8", "replace")
            match = regex.search(text)
            if match:
                return match
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                seen.extend(chunk)
        return None

    # bash's prompt in the guest: root@icelab:~# (the image's hostname).
    if not read_until(r"root@icelab:[^\n]*# ", "prompt"):
        return fail("no shell prompt")
    # The arithmetic proves the shell ran the line (the echoed input has
    # the expression, not its value).
    os.write(fd, f"echo {MARK}-$((6*7)) slots=$(cat /sys/block/vda/queue/crypto/num_keyslots)\r".encode())
    match = read_until(MARK + r"-42 slots=(\d+)\r*\n", "command output")
    if not match:
        return fail("the command's output never came")
    slots = match.group(1)
    if slots != "32":
        return fail(f"num_keyslots is {slots}, expected 32 (profile ufs)")
    if not read_until(r"slots=\d+\r*\n[^\n]*root@icelab:[^\n]*# ", "second prompt"):
        return fail("no prompt after the command")
    os.write(fd, b"exit\r")
    if not read_until(r"icelab shell: vda: \d+ CRYPTO_OUT", "stats"):
        return fail("no device stats after exit")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return fail(f"icelab shell exited {code}, expected 0")
    print(f"shell-pty: ok: prompt, command output (num_keyslots {slots}), exit, device stats, status 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
