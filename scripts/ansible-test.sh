#!/usr/bin/env bash
# ansible-test for this collection: `sanity` (every test that can run here) and `units`, on Python 3.12.
#
#   scripts/ansible-test.sh                      sanity, then units
#   scripts/ansible-test.sh sanity [ARGS...]     only sanity (ARGS go to ansible-test, e.g. --test pylint)
#   scripts/ansible-test.sh units [ARGS...]      only units
#
# ansible-test needs the collection at a path ending in ansible_collections/quankey/backup, so this
# copies the checkout (without .git, .venv, build) to $TMPDIR/quankey-ansible-test-<id>/ansible_collections/
# quankey/backup and runs there. What is slow is cached under build/ansible-test-home (used as HOME):
#   - venv/: Python 3.12 with ansible-core pinned by constraints.txt, all `sanity` needs (its tests
#     run in venvs of their own); `units` adds requirements-dev.txt (pytest, pytest-xdist, the
#     engine's libraries) - 1 GB and about 80 s of pip more, which `make test` (sanity only) skips;
#   - .ansible/test/: ansible-test's own sanity venvs, and the pip bootstrap script it cannot download
#     here: ours installs pip from a wheel kept in .ansible/test/cache/pip-wheels, one pip run per
#     venv (GET_PIP_SCRIPT=path: that script instead, e.g. ensurepip then pip, two runs).
# A first run of `sanity` takes about 3.5 minutes, later runs about 75 s. Exits non-zero when a test fails.
# Set PYTHON312=/path/to/python3.12 to choose the interpreter.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE="$ROOT/build/ansible-test-home"
VENV="$CACHE/venv"
# outside the checkout: inside it, ansible-test would take the checkout's git (which ignores build/)
TREE="${TMPDIR:-/tmp}/quankey-ansible-test-$(echo "$ROOT" | sha256sum | cut -c1-12)/ansible_collections/quankey/backup"
GET_PIP_SCRIPT=${GET_PIP_SCRIPT:-}

die() { echo "ansible-test.sh: $*" >&2; exit 1; }
say() { echo "ansible-test.sh: $*" >&2; }

# ---- Python 3.12 ------------------------------------------------------------------------------
python_ok() {  # runs (a pyenv shim may not), is 3.12, can make venvs
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1
}

find_python312() {
    if [[ -n ${PYTHON312:-} ]]; then
        python_ok "$PYTHON312" || die "PYTHON312=$PYTHON312 is not a working Python 3.12 with venv/ensurepip"
        echo "$PYTHON312"; return
    fi
    local c
    for c in "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python /usr/bin/python3.12; do
        if [[ -n $c ]] && python_ok "$c"; then echo "$c"; return; fi
    done
    die "no Python 3.12 found (ansible-test runs with --python 3.12): install it or set PYTHON312"
}

# ensure_venv core|dev: core is ansible-core alone (what ansible-test and its sanity tests need from it), dev
# adds requirements-dev.txt (the unit tests import the engine's libraries, pytest, pytest-xdist)
ensure_venv() {
    local level=$1 py want have stamp="$VENV/.stamp" log="$CACHE/venv-pip.log"
    py=$(find_python312)
    want=$({ "$py" -c 'import os, sys; print(os.path.realpath(sys.executable))'
             cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/constraints.txt"; } | sha256sum | cut -d' ' -f1)
    have=$(cat "$stamp" 2>/dev/null || true)
    if ! "$VENV/bin/python" -c '' 2>/dev/null || [[ ${have% *} != "$want" ]]; then
        say "building $VENV (Python 3.12, ansible-core)"
        rm -rf "$VENV"
        mkdir -p "$CACHE"
        "$py" -m venv "$VENV"
        venv_pip "$log" ansible-core
        have="$want core"
        echo "$have" >"$stamp"
    fi
    if [[ $level == dev && $have != "$want dev" ]]; then
        say "adding requirements-dev.txt to $VENV (for units)"
        venv_pip "$log" -r requirements-dev.txt
        echo "$want dev" >"$stamp"
    fi
}

venv_pip() {  # venv_pip LOG PIP-INSTALL-ARGS...: pinned by constraints.txt
    local log=$1
    shift
    if ! (cd "$ROOT" && "$VENV/bin/python" -m pip --disable-pip-version-check --no-input install "$@" \
            -c constraints.txt) >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        die "pip install failed (full log: $log)"
    fi
}

# ---- ansible-test's pip bootstrap: from the cache, never downloaded ---------------------------
# Each sanity venv (ten of them) starts empty and runs this script to get pip. Ours installs pip with pip itself, run
# from a pip wheel fetched once into the cache: one pip run, about 4 s of CPU per venv; without that wheel it
# bootstraps the interpreter's bundled pip with ensurepip, then installs pip with it: two runs, about 9 s.
ensure_get_pip() {
    local version cache wheels cached
    version=$("$VENV/bin/python" - <<'EOF'
import pathlib, re, ansible_test
source = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", source.read_text()).group(1))
EOF
    )
    cache="$CACHE/.ansible/test/cache"
    wheels="$cache/pip-wheels"
    cached="$cache/get_pip_${version//./_}.py"
    mkdir -p "$cache"
    if [[ -n $GET_PIP_SCRIPT ]]; then
        [[ -f $GET_PIP_SCRIPT ]] || die "GET_PIP_SCRIPT=$GET_PIP_SCRIPT: no such file"
        cp "$GET_PIP_SCRIPT" "$cached"
        return
    fi
    if ! compgen -G "$wheels/pip-$version-*.whl" >/dev/null; then
        "$VENV/bin/python" -m pip --disable-pip-version-check --no-input download -q --no-deps --only-binary :all: \
            -d "$wheels" "pip==$version" >"$CACHE/get-pip-wheel.log" 2>&1 \
            || say "could not fetch pip $version's wheel ($CACHE/get-pip-wheel.log): sanity venvs bootstrap pip with ensurepip"
    fi
    cat >"$cached.new" <<'EOF'
"""Offline stand-in for get-pip.py (ansible-test runs it with pip-install arguments in an empty venv): pip run from
the pip wheel in pip-wheels/ beside this script installs that wheel - one pip run; without it, the interpreter's
bundled pip from ensurepip does, after bootstrapping (in a subprocess, so pip's configuration is kept)."""
import glob
import os
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
wheels = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip-wheels")
wanted = [a for a in args if a.startswith("pip==")]
found = glob.glob(os.path.join(wheels, "pip-%s-*.whl" % wanted[0][len("pip=="):])) if wanted else []
if found:  # the wheel itself in place of pip==X.Y: no index asked for pip
    args = [found[0] if a == wanted[0] else a for a in args]
    sys.exit(subprocess.call([sys.executable, os.path.join(found[0], "pip"), "install"] + args))
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
EOF
    mv "$cached.new" "$cached"
}

# ---- shellcheck, for the shellcheck sanity test -----------------------------------------------
ensure_shellcheck() {
    command -v shellcheck >/dev/null 2>&1 && return
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing shellcheck (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; } \
            || say "could not install shellcheck: its sanity test will be skipped"
    else
        say "shellcheck is missing (apt-get install shellcheck): its sanity test will be skipped"
    fi
}

# ---- the collection copy ----------------------------------------------------------------------
lay_out_tree() {  # a fresh copy each run: files deleted from the checkout must not linger
    rm -rf "$TREE"
    mkdir -p "$TREE"
    tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./tests/output \
        --exclude=__pycache__ --exclude='*.pyc' --exclude=.pytest_cache --exclude='*.egg-info' \
        -cf - . | tar -C "$TREE" -xf -
}

run_ansible_test() {
    # pip keeps reading the user's pip configuration (index, certificates) under the real HOME
    local pip_config_home=${XDG_CONFIG_HOME:-$HOME/.config}
    (cd "$TREE" && HOME="$CACHE" XDG_CONFIG_HOME="$pip_config_home" PATH="$VENV/bin:$PATH" \
        "$VENV/bin/ansible-test" "$@" --color no)
}

main() {
    local what=${1:-all}
    [[ $# -gt 0 ]] && shift
    case $what in all|sanity|units) ;; *) die "usage: $0 [sanity|units] [ansible-test args...]";; esac
    ensure_venv "$([[ $what == sanity ]] && echo core || echo dev)"
    ensure_get_pip
    lay_out_tree
    local status=0 started
    if [[ $what == all || $what == sanity ]]; then
        ensure_shellcheck
        started=$SECONDS
        run_ansible_test sanity --python 3.12 "$@" || status=1
        say "sanity: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - started))s"
    fi
    if [[ $what == all || $what == units ]]; then
        started=$SECONDS
        local units_status=0
        run_ansible_test units --python 3.12 "$@" || units_status=1
        say "units: $([[ $units_status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - started))s"
        ((units_status == 0)) || status=1
    fi
    return $status
}

main "$@"
