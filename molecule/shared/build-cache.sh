#!/usr/bin/env bash
# Build, once, what every Molecule run here reuses, under build/molecule/ (CI builds it on its first run):
#   base/<suite>/      a Debian root filesystem (debootstrap minbase) that each test host overlays read-only;
#   wheelhouse/        the host engine's pinned run-time wheels for that root filesystem's Python, plus the
#                      build backend, so the pg_backup role installs on a test host without a package index.
# Each part is rebuilt only when its inputs change (a key of this script and the requirement files);
# a build goes to a temporary directory and is moved into place only when it is complete.
#
#   molecule/shared/build-cache.sh [base|wheelhouse|all]     (default all; must run as root)
#
# The Debian mirror comes from this machine's own apt sources (or QUANKEY_DEBIAN_MIRROR and
# QUANKEY_DEBIAN_SECURITY_MIRROR); debootstrap is installed with apt-get when it is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
CACHE=${QUANKEY_MOLECULE_CACHE:-$ROOT/build/molecule}
SUITE=${QUANKEY_MOLECULE_SUITE:-bookworm}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
# What the image holds: enough for Ansible (python3, python3-apt, sudo to become the backup user), cron and ps. What the roles
# install themselves (PostgreSQL client, venv, logrotate) is only downloaded into apt's cache,
# so the roles' apt tasks really install it, without a network.
BASE_PACKAGES=python3,python3-apt,cron,procps,ca-certificates,sudo
ROLE_PACKAGES=(postgresql-client-15 python3-venv logrotate)
SETUPTOOLS=setuptools==84.2.1   # the engine's build backend (pyproject.toml wants >= 77)

die() { echo "build-cache: $*" >&2; exit 1; }
log() { echo "build-cache: $*" >&2; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot)"

key_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

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

mirror() {
    local uri=${QUANKEY_DEBIAN_MIRROR:-$(apt_uri "$SUITE" | head -n 1)}
    [[ -n $uri ]] || die "no apt source for $SUITE on this machine: set QUANKEY_DEBIAN_MIRROR to a Debian mirror URL"
    echo "$uri"
}

security_mirror() {
    local uri=${QUANKEY_DEBIAN_SECURITY_MIRROR:-$(apt_uri "$SUITE-security" | head -n 1)}
    echo "${uri:-$(mirror | sed 's#/debian/*$#/debian-security#')}"
}

# ---- base root filesystem --------------------------------------------------------------------
build_base() {
    local dest=$CACHE/base/$SUITE stamp=$CACHE/base/$SUITE.key key
    key=$(key_of "${BASH_SOURCE[0]}")
    if [[ -d $dest && -f $stamp && $(cat "$stamp") == "$key" ]]; then
        echo "$dest"; return
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap (apt-get)"
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap; } </dev/null >/dev/null \
            || die "apt-get install debootstrap failed"
    fi
    if findmnt -rn -o TARGET | grep -q "^$CACHE/"; then
        die "something is still mounted under $CACHE (a test host?): run molecule destroy first"
    fi
    local started=$SECONDS tmp main security
    main=$(mirror); security=$(security_mirror)
    mkdir -p "$CACHE/base"
    tmp=$(mktemp -d "$CACHE/base/.build-$SUITE.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log "debootstrap $SUITE (minbase) into $tmp"
    local dblog=$tmp.log
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp/root" "$main" >"$dblog" 2>&1; then
        tail -n 20 "$dblog" >&2; die "debootstrap failed (log: $dblog)"
    fi
    rm -f "$dblog"
    cat >"$tmp/root/etc/apt/sources.list" <<EOF
deb $main $SUITE main
deb $main $SUITE-updates main
deb $security $SUITE-security main
EOF
    # package installs inside a test host must not start daemons (there is no init to stop them)
    printf '#!/bin/sh\nexit 101\n' >"$tmp/root/usr/sbin/policy-rc.d"
    chmod 0755 "$tmp/root/usr/sbin/policy-rc.d"
    # a throwaway host needs no fsync per file nor documentation: dpkg runs several times faster
    printf 'force-unsafe-io\npath-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/locale/*\n' \
        >"$tmp/root/etc/dpkg/dpkg.cfg.d/quankey-test-host"
    cp /etc/resolv.conf "$tmp/root/etc/resolv.conf"
    echo "quankey-test-base" >"$tmp/root/etc/hostname"
    log "apt-get update and download of ${ROLE_PACKAGES[*]} inside the image"
    if ! chroot "$tmp/root" sh -c "apt-get update -qq && apt-get install -y -qq --download-only --no-install-recommends ${ROLE_PACKAGES[*]}" \
            </dev/null >"$tmp/apt.log" 2>&1; then
        tail -n 20 "$tmp/apt.log" >&2; die "apt-get inside the image failed"
    fi
    rm -rf "$tmp/root/var/cache/apt/"*.bin "$tmp/root/var/log/"*.log "$tmp/root/tmp/"*
    rm -rf "$dest"
    mv "$tmp/root" "$dest"
    rm -rf "$tmp"
    trap - EXIT
    echo "$key" >"$stamp"
    log "base image $dest built in $((SECONDS - started))s ($(du -sh "$dest" | cut -f1))"
    echo "$dest"
}

# ---- wheelhouse for the image's Python -------------------------------------------------------
build_wheelhouse() {
    local base dest=$CACHE/wheelhouse stamp=$CACHE/wheelhouse.key key pyver
    base=$(build_base)
    pyver=$(chroot "$base" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    key=$(key_of "${BASH_SOURCE[0]}" "$ROOT/requirements.txt" "$ROOT/constraints.txt"; echo "$pyver")
    key=$(echo "$key" | sha256sum | cut -c1-16)
    if [[ -d $dest && -f $stamp && $(cat "$stamp") == "$key" ]]; then
        echo "$dest"; return
    fi
    [[ -x $PYTHON ]] || die "no $PYTHON: run make setup"
    local started=$SECONDS tmp abi=cp${pyver/./}
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/.wheelhouse.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log "downloading wheels for Python $pyver (x86_64 glibc) into $tmp"
    local platforms=() tag
    for tag in manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
        platforms+=(--platform "${tag}_$(uname -m)")
    done
    if ! "$PYTHON" -m pip --disable-pip-version-check --no-input download --dest "$tmp" --only-binary=:all: \
            --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none "${platforms[@]}" \
            -r "$ROOT/requirements.txt" -c "$ROOT/constraints.txt" "$SETUPTOOLS" >"$tmp.log" 2>&1; then
        grep -v "^WARNING: Location" "$tmp.log" | tail -n 20 >&2; die "pip download failed (log: $tmp.log)"
    fi
    rm -f "$tmp.log"
    chmod 0755 "$tmp"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
    echo "$key" >"$stamp"
    log "wheelhouse $dest built in $((SECONDS - started))s ($(find "$dest" -name '*.whl' | wc -l) wheels)"
    echo "$dest"
}

case ${1:-all} in
    base) build_base ;;
    wheelhouse) build_wheelhouse ;;
    all) build_base >/dev/null; build_wheelhouse >/dev/null; echo "$CACHE" ;;
    *) die "usage: $0 [base|wheelhouse|all]" ;;
esac
