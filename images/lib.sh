# Helpers shared by icelab's recipes (images/build-root.sh,
# images/build-qemu.sh). Sourced, never run: set RECIPE to the name that
# prefixes every message before sourcing.
#
#   log MSG...            prints "RECIPE: MSG" on stderr
#   die MSG...            logs "error: MSG" and exits 1
#   require_commands CMD...
#                         fails at once, naming every missing command, when
#                         one is not on PATH; the fix is scripts/install-deps
#                         (the one place that installs host packages)
#   step MSG...           logs MSG with the seconds since the recipe began
#   run_step CMD...       runs CMD in a process group of its own and waits,
#                         so that a signal stops it at once (see stop_step)
#   stop_step             kills the running step's group, if any
#   host_mirror           prints the Debian archive URI of the host's apt
#                         configuration (the entry for the host's release)
#
# Recipes never run apt-get on the host: two of them run side by side and
# would fight over apt's locks. apt inside a chroot, or with a private
# state directory, is fine.

: "${RECIPE:?set RECIPE before sourcing images/lib.sh}"

log() { printf '%s: %s\n' "$RECIPE" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

require_commands() {
    local missing=() cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) ||
        die "missing on the host: ${missing[*]}; run scripts/install-deps (as root) to install it"
}

recipe_start=$SECONDS
step() { log "[$((SECONDS - recipe_start))s] $*"; }

step_pgid=
run_step() {
    setsid "$@" &
    step_pgid=$!
    local status=0
    wait "$step_pgid" || status=$?
    step_pgid=
    return "$status"
}
stop_step() {
    if [[ -n $step_pgid ]]; then
        log "stopping the running step"
        kill -TERM -- "-$step_pgid" 2>/dev/null || true
        wait "$step_pgid" 2>/dev/null || true
    fi
}

# host_mirror: prints the URI of the first enabled `deb` source of the host
# whose suite is the host's own release (e.g. bookworm): that is the Debian
# archive, not the security archive or a third-party repository.
host_mirror() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || return 0
    local f
    # One-line format: deb [options] URI SUITE COMPONENTS...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk -v suite="$codename" '
            { sub(/#.*/, "") }
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done
    # deb822 format: stanzas separated by blank lines.
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$codename" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") &&
                    tolower(enabled) != "no" && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1
                }
                types = suites = uris = enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); if (found) exit; next }
            {
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "suites") suites = val
                else if (key == "uris") uris = val
                else if (key == "enabled") enabled = val
            }
            END { if (!found) flush() }' "$f"
    done
}
