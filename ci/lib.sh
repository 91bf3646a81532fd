# Helpers for the CI scripts: sourced, not run.

step() {
    printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"
}

# Debian packages the tests need beyond the base image (one per line in ci/packages).
ci_packages() {
    grep -v '^\s*#' ci/packages | grep -v '^\s*$' || true
}

# Installs whichever of the named Debian packages are missing; apt-get update runs once,
# only when something is missing.
ensure_packages() {
    local missing=()
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "all ${#@} packages present"
        return 0
    fi
    echo "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Fails at once, naming the directory, when a filesystem the run writes to has less than
# MIB mebibytes free: out of space, daemons and compilers fail far from the cause (a Ceph
# monitor exits with status 28, ENOSPC, and an empty stderr).
require_free_space() {
    local mib="$1"
    shift
    local path avail
    for path in "$@"; do
        mkdir -p "$path"
        avail=$(df -Pm "$path" | awk 'NR == 2 { print $4 }')
        if [ "$avail" -lt "$mib" ]; then
            echo "only ${avail} MiB free under $path; this run needs about ${mib} MiB (build dir, guest images, scratch)" >&2
            return 1
        fi
        echo "$path: ${avail} MiB free"
    done
}
