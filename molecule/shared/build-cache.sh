#!/usr/bin/env bash
# Build, once, what every Molecule run here reuses, under build/molecule/ (CI builds it on its first run):
#   base/<suite>/      a Debian root filesystem (debootstrap minbase) per suite, that each test host overlays
#                      read-only: bookworm (Debian 12) and trixie (Debian 13, the upgrade scenario's PostgreSQL 17);
#   wheelhouse/        the host engine's pinned run-time wheels for the Python of every suite below, plus the
#                      build backend, so the pg_backup role installs on a test host without a package index.
# Each part is rebuilt only when its inputs change (its function and package lists here, the requirement
# files); a build goes to a temporary directory and is moved into place only when it is complete.
#
#   molecule/shared/build-cache.sh [base|wheelhouse|all] [SUITE...]   (default all, suite $QUANKEY_MOLECULE_SUITE
#                                                                       or bookworm; must run as root)
#
# The Debian mirror of a suite comes from this machine's own apt sources (or QUANKEY_DEBIAN_MIRROR and
# QUANKEY_DEBIAN_SECURITY_MIRROR); a suite they do not list (trixie on a Debian 12 machine) is taken from the
# mirror of this machine's own release when that mirror serves it, else the script exits with status 4 and says
# so (create.yml then skips the scenario). debootstrap is installed with apt-get when it is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
CACHE=${QUANKEY_MOLECULE_CACHE:-$ROOT/build/molecule}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
# What the image holds: enough for Ansible (python3, python3-apt, sudo to become the backup user), cron and ps. What the roles
# install themselves (PostgreSQL client, venv, logrotate, systemd for pg_backup_scheduler: systemd) is only downloaded into apt's cache,
# so the roles' apt tasks really install it, without a network.
BASE_PACKAGES=python3,python3-apt,cron,procps,ca-certificates,sudo
# Per suite: what the roles install there (plus, on trixie, the PostgreSQL 17 server the upgrade scenario's prepare
# installs), and its python3's version (the wheelhouse holds wheels for each; build_base checks the image's).
declare -A ROLE_PACKAGES=(
    [bookworm]="postgresql-client-15 python3-venv logrotate systemd"
    [trixie]="postgresql-client-17 postgresql-17 python3-venv logrotate systemd"
)
declare -A SUITE_PYTHON=([bookworm]=3.11 [trixie]=3.13)
SETUPTOOLS=setuptools==84.2.1   # the engine's build backend (pyproject.toml wants >= 77)

die() { echo "build-cache: $*" >&2; exit 1; }
log() { echo "build-cache: $*" >&2; }
# exit status 4: the suite cannot be had here (create.yml skips the scenario that needs it, with this message)
unserved() { echo "build-cache: SKIP: $*" >&2; exit 4; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot)"

key_of() { sha256sum "$@" | sha256sum | cut -c1-16; }
# the key of a part: the text of the function that builds it (comments aside) and the values it uses
key_text() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

# The first URI of this machine's apt sources that serves <suite> (deb822 or one-line format).
apt_uri() {
    local want=$1 file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk -v want="$want" '
            /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) found = 1 }
            /^$/ { if (found && uri) { print uri; exit } uri = ""; found = 0 }
            END { if (found && uri) print uri }' "$file" | head -n 1
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk -v want="$want" '$1 == "deb" && $3 == want { print $2; exit }' "$file"
    done
}

# Whether <uri> serves <suite> (its dists/<suite>/Release answers).
serves() {
    python3 - "${1%/}/dists/$2/Release" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=20).close()
except Exception as exc:  # HTTP 404, no route, DNS: not served from here
    sys.exit("%s: %s" % (sys.argv[1], exc))
EOF
}

# The mirror of <suite>: QUANKEY_DEBIAN_MIRROR, else this machine's apt source of it, else the apt source of this
# machine's own release when that one serves the suite too (exit 4 when it does not).
mirror() {
    local suite=$1 uri own why
    uri=${QUANKEY_DEBIAN_MIRROR:-$(apt_uri "$suite" | head -n 1)}
    if [[ -z $uri ]]; then
        own=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')
        uri=$(apt_uri "${own:-bookworm}" | head -n 1)
        [[ -n $uri ]] || die "no apt source for $suite nor ${own:-bookworm} on this machine: set QUANKEY_DEBIAN_MIRROR to a Debian mirror URL"
        why=$(serves "$uri" "$suite" 2>&1) \
            || unserved "this machine's apt sources do not list $suite and their mirror $uri does not serve it ($why); set QUANKEY_DEBIAN_MIRROR to a Debian mirror that does"
    fi
    echo "$uri"
}

security_mirror() {
    local suite=$1 main=$2 uri
    uri=${QUANKEY_DEBIAN_SECURITY_MIRROR:-$(apt_uri "$suite-security" | head -n 1)}
    main=${main%/}
    [[ $main != */debian ]] || main=$main-security
    echo "${uri:-$main}"
}

# An overlay mount (a test host) that has <dir> as its read-only lower layer, if any.
overlay_on() {
    { findmnt -rn -t overlay -o TARGET,OPTIONS || true; } | awk -v want="lowerdir=$1" '
        { n = split($2, opts, ","); for (i = 1; i <= n; i++) if (opts[i] == want) { print $1; exit } }'
}

# ---- base root filesystem --------------------------------------------------------------------
build_base() {
    local suite=$1
    local dest=$CACHE/base/$suite stamp=$CACHE/base/$suite.key key packages=${ROLE_PACKAGES[$suite]:-} in_use
    [[ -n $packages ]] || die "unknown suite $suite: add it to ROLE_PACKAGES and SUITE_PYTHON in ${BASH_SOURCE[0]}"
    key=$(key_text "$(declare -f build_base)" "$suite" "$BASE_PACKAGES" "$packages")
    if [[ -d $dest && -f $stamp && $(cat "$stamp") == "$key" ]]; then
        echo "$dest"; return
    fi
    in_use=$(overlay_on "$dest")
    [[ -z $in_use ]] || die "the $suite image must be rebuilt but the test host at $in_use still uses it: run molecule destroy first (or wait for that run)"
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap (apt-get)"
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap; } </dev/null >/dev/null \
            || die "apt-get install debootstrap failed"
    fi
    if findmnt -rn -o TARGET | grep -q "^$CACHE/"; then
        die "something is still mounted under $CACHE (a test host?): run molecule destroy first"
    fi
    local started=$SECONDS tmp main security pyver
    main=$(mirror "$suite") || exit $?
    security=$(security_mirror "$suite" "$main")
    mkdir -p "$CACHE/base"
    tmp=$(mktemp -d "$CACHE/base/.build-$suite.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # debootstrap installs only the minimal base: its --include cannot order trixie's pre-dependencies (cron pulls
    # systemd); apt in the image then installs BASE_PACKAGES, with daemons kept from starting (policy-rc.d)
    log "debootstrap $suite (minbase) from $main into $tmp"
    local dblog=$tmp.log
    if ! debootstrap --variant=minbase "$suite" "$tmp/root" "$main" >"$dblog" 2>&1; then
        tail -n 20 "$dblog" >&2; die "debootstrap failed (log: $dblog)"
    fi
    rm -f "$dblog"
    cat >"$tmp/root/etc/apt/sources.list" <<EOF
deb $main $suite main
deb $main $suite-updates main
deb $security $suite-security main
EOF
    # package installs inside a test host must not start daemons (there is no init to stop them)
    printf '#!/bin/sh\nexit 101\n' >"$tmp/root/usr/sbin/policy-rc.d"
    chmod 0755 "$tmp/root/usr/sbin/policy-rc.d"
    # a throwaway host needs no fsync per file nor documentation: dpkg runs several times faster
    printf 'force-unsafe-io\npath-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/locale/*\n' \
        >"$tmp/root/etc/dpkg/dpkg.cfg.d/quankey-test-host"
    cp /etc/resolv.conf "$tmp/root/etc/resolv.conf"
    echo "quankey-test-base" >"$tmp/root/etc/hostname"
    log "apt-get install of ${BASE_PACKAGES//,/ }, and download of $packages, inside the image"
    if ! chroot "$tmp/root" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${BASE_PACKAGES//,/ } \
            && apt-get clean && apt-get install -y -qq --download-only --no-install-recommends $packages" \
            </dev/null >"$tmp/apt.log" 2>&1; then
        tail -n 20 "$tmp/apt.log" >&2; die "apt-get inside the image failed"
    fi
    pyver=$(chroot "$tmp/root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $pyver == "${SUITE_PYTHON[$suite]:-}" ]] \
        || die "$suite's python3 is $pyver, not ${SUITE_PYTHON[$suite]:-unknown}: update SUITE_PYTHON in ${BASH_SOURCE[0]} (the wheelhouse's Pythons)"
    rm -rf "$tmp/root/var/cache/apt/"*.bin "$tmp/root/var/log/"*.log "$tmp/root/tmp/"*
    rm -rf "$dest"
    mv "$tmp/root" "$dest"
    rm -rf "$tmp"
    trap - EXIT
    echo "$key" >"$stamp"
    log "base image $dest built in $((SECONDS - started))s ($(du -sh "$dest" | cut -f1))"
    echo "$dest"
}

# ---- wheelhouse for the images' Pythons --------------------------------------------------------
# One wheelhouse for every suite: pip on a host picks the wheels of its own Python (pure ones are shared).
build_wheelhouse() {
    local dest=$CACHE/wheelhouse stamp=$CACHE/wheelhouse.key key pyvers pyver
    pyvers=$(printf '%s\n' "${SUITE_PYTHON[@]}" | sort -uV | tr '\n' ' ')
    key=$(key_text "$(declare -f build_wheelhouse)" "$pyvers" "$SETUPTOOLS" \
          "$(key_of "$ROOT/requirements.txt" "$ROOT/constraints.txt")")
    if [[ -d $dest && -f $stamp && $(cat "$stamp") == "$key" ]]; then
        echo "$dest"; return
    fi
    [[ -x $PYTHON ]] || die "no $PYTHON: run make setup"
    local started=$SECONDS tmp
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/.wheelhouse.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    local platforms=() tag
    for tag in manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
        platforms+=(--platform "${tag}_$(uname -m)")
    done
    for pyver in $pyvers; do
        log "downloading wheels for Python $pyver (x86_64 glibc) into $tmp"
        if ! "$PYTHON" -m pip --disable-pip-version-check --no-input download --dest "$tmp" --only-binary=:all: \
                --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" --abi abi3 --abi none "${platforms[@]}" \
                -r "$ROOT/requirements.txt" -c "$ROOT/constraints.txt" "$SETUPTOOLS" >"$tmp.log" 2>&1; then
            grep -v "^WARNING: Location" "$tmp.log" | tail -n 20 >&2; die "pip download for Python $pyver failed (log: $tmp.log)"
        fi
    done
    rm -f "$tmp.log"
    chmod 0755 "$tmp"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
    echo "$key" >"$stamp"
    log "wheelhouse $dest built in $((SECONDS - started))s ($(find "$dest" -name '*.whl' | wc -l) wheels)"
    echo "$dest"
}

# one build at a time: a second run (another scenario, another checkout's CI job) waits, then finds it cached
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
what=${1:-all}
shift || true
suites=("$@")
[[ ${#suites[@]} -gt 0 ]] || suites=("${QUANKEY_MOLECULE_SUITE:-bookworm}")
# a suite the mirror does not serve ends the run (status 4) before anything is built for the others
for suite in "${suites[@]}"; do
    [[ $what == wheelhouse || -d $CACHE/base/$suite ]] || mirror "$suite" >/dev/null || exit $?
done
case $what in
    base) for suite in "${suites[@]}"; do build_base "$suite"; done ;;
    wheelhouse) build_wheelhouse ;;
    all) for suite in "${suites[@]}"; do build_base "$suite" >/dev/null; done
         build_wheelhouse >/dev/null; echo "$CACHE" ;;
    *) die "usage: $0 [base|wheelhouse|all] [SUITE...]" ;;
esac
