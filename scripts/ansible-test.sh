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
#   - venv/: Python 3.12 with requirements-dev.txt pinned by constraints.txt (ansible-core, pytest,
#     pytest-xdist, the engine's libraries); it runs ansible-test and the unit tests;
#   - .ansible/test/: ansible-test's own sanity venvs, and the pip bootstrap script it cannot download
#     here (copied from GET_PIP_SCRIPT, default ../shared/tools/ansible-test-get-pip.py, else an
#     equivalent written by this script).
# A first run takes about a minute, later runs a few seconds. Exits non-zero when a test fails.
# Set PYTHON312=/path/to/python3.12 to choose the interpreter.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE="$ROOT/build/ansible-test-home"
VENV="$CACHE/venv"
# outside the checkout: inside it, ansible-test would take the checkout's git (which ignores build/)
TREE="${TMPDIR:-/tmp}/quankey-ansible-test-$(echo "$ROOT" | sha256sum | cut -c1-12)/ansible_collections/quankey/backup"
GET_PIP_SCRIPT=${GET_PIP_SCRIPT:-$ROOT/../shared/tools/ansible-test-get-pip.py}

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

ensure_venv() {
    local py want stamp="$VENV/.stamp" log="$CACHE/venv-pip.log"
    py=$(find_python312)
    want=$({ "$py" -c 'import os, sys; print(os.path.realpath(sys.executable))'
             cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/constraints.txt"; } | sha256sum | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return
    fi
    say "building $VENV (Python 3.12, requirements-dev.txt)"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    "$py" -m venv "$VENV"
    if ! (cd "$ROOT" && "$VENV/bin/python" -m pip --disable-pip-version-check --no-input install \
            -r requirements-dev.txt -c constraints.txt) >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        die "pip install failed (full log: $log)"
    fi
    echo "$want" >"$stamp"
}

# ---- ansible-test's pip bootstrap: from the cache, never downloaded ---------------------------
ensure_get_pip() {
    local version cached
    version=$("$VENV/bin/python" - <<'EOF'
import pathlib, re, ansible_test
source = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", source.read_text()).group(1))
EOF
    )
    cached="$CACHE/.ansible/test/cache/get_pip_${version//./_}.py"
    [[ -s $cached ]] && return
    mkdir -p "$(dirname "$cached")"
    if [[ -f $GET_PIP_SCRIPT ]]; then
        cp "$GET_PIP_SCRIPT" "$cached"
        return
    fi
    say "no $GET_PIP_SCRIPT: writing the equivalent offline pip bootstrap to $cached"
    cat >"$cached" <<'EOF'
"""Offline stand-in for get-pip.py: pip from ensurepip (in a subprocess, so pip's configuration is kept), then pip install."""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
EOF
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
    ensure_venv
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
