#!/usr/bin/env bash
# Set up this checkout on a fresh machine; safe to run again (it only does what is missing).
#   - .venv with a Python >= 3.12 (ansible-core's controller minimum), requirements-dev.txt
#     pinned by constraints.txt, and this project installed editable (`quankey-backup`);
#   - PostgreSQL server binaries, zstd, openssl, systemd (for systemd-analyze), and Prometheus's promtool,
#     prometheus and node_exporter (the monitoring kit's tests: extras/monitoring/) from the system's packages;
#   - build/collections/ansible_collections/quankey/backup -> this checkout, on the venv's path,
#     so Python and Ansible import the checkout as the quankey.backup collection.
# Set PYTHON=/path/to/python3.12+ to choose the interpreter.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.bootstrap-stamp"
COLLECTIONS="$ROOT/build/collections"
started=$SECONDS
summary=()

die() { echo "bootstrap: $*" >&2; exit 1; }

# ---- Python >= 3.12 ---------------------------------------------------------------------------
python_ok() {  # a usable interpreter: runs (pyenv shims may not), is >= 3.12, can make venvs
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
    if [[ -n ${PYTHON:-} ]]; then
        python_ok "$PYTHON" || die "PYTHON=$PYTHON is not a working Python >= 3.12 with venv/ensurepip; point PYTHON at one"
        echo "$PYTHON"; return
    fi
    local candidates=() c
    for c in python3.13 python3.12; do
        command -v "$c" >/dev/null 2>&1 && candidates+=("$(command -v "$c")")
    done
    local pattern
    for pattern in "$HOME/.pyenv/versions/3.1[2-9]*/bin/python" "/usr/bin/python3.1[2-9]"; do  # pyenv's, then the system's
        while IFS= read -r c; do candidates+=("$c"); done < <(compgen -G "$pattern" | sort -rV)  # newest first
    done
    for c in "${candidates[@]}"; do
        if python_ok "$c"; then echo "$c"; return; fi
    done
    local hint="set PYTHON=/path/to/python3.12+"
    command -v pyenv >/dev/null 2>&1 && hint="run 'pyenv install 3.12' or $hint"
    if command -v apt-cache >/dev/null 2>&1 && apt-cache show python3.12-venv >/dev/null 2>&1; then
        hint="run 'apt-get install python3.12 python3.12-venv' or $hint"
    fi
    die "no Python >= 3.12 found (ansible-core needs it on the controller): $hint"
}

PY=$(find_python)
py_real=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
py_version=$("$PY" -c 'import platform; print(platform.python_version())')

# ---- .venv ------------------------------------------------------------------------------------
venv_real=$(readlink -f "$VENV/bin/python" 2>/dev/null || true)
if [[ -d $VENV ]] && { [[ $venv_real != "$py_real" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; }; then
    echo "bootstrap: .venv uses ${venv_real:-a broken interpreter}, not $py_real: recreating it"
    rm -rf "$VENV"
fi
if [[ ! -x $VENV/bin/python ]]; then
    "$PY" -m venv "$VENV"
fi

want=$({ echo "$py_real $py_version"; sha256sum requirements.txt requirements-dev.txt constraints.txt pyproject.toml; } | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
    summary+=("Python $py_version venv up to date")
else
    # pip's chatter (this machine's pip config adds warnings) goes to a log shown only on failure
    log="$VENV/bootstrap-pip.log"
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
    if ! { "${pip[@]}" install -r requirements-dev.txt -c constraints.txt && "${pip[@]}" install --no-deps -e .; } >"$log" 2>&1; then
        grep -v "^WARNING: Location 'file:" "$log" | tail -n 25 >&2
        die "pip install failed (full log: $log)"
    fi
    echo "$want" >"$STAMP"
    summary+=("Python $py_version venv installed")
fi

# ---- system packages: PostgreSQL server, zstd, openssl, systemd-analyze, Prometheus (tests use them) ----------------------------------------
missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing system packages, install them as root: apt-get install ${missing[*]}"
    echo "bootstrap: installing ${missing[*]} (apt-get)"
    log=$(mktemp /tmp/quankey-bootstrap-apt.XXXXXX)
    if ! { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } </dev/null >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        die "apt-get install ${missing[*]} failed (full log: $log)"
    fi
    rm -f "$log"
    summary+=("installed ${missing[*]}")
fi
pg_bindir=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1 || true)
[[ -x $pg_bindir/initdb ]] || die "PostgreSQL server binaries still missing after install (no /usr/lib/postgresql/*/bin/initdb)"
summary+=("PostgreSQL $(basename "$(dirname "$pg_bindir")")")

# ---- the checkout as the quankey.backup collection --------------------------------------------
link="$COLLECTIONS/ansible_collections/quankey/backup"
mkdir -p "$(dirname "$link")"
[[ $(readlink "$link" 2>/dev/null) == "$ROOT" ]] || ln -sfn "$ROOT" "$link"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pth="$site/quankey_collection_dev.pth"
[[ -f $pth && $(cat "$pth") == "$COLLECTIONS" ]] || echo "$COLLECTIONS" >"$pth"
"$VENV/bin/python" -c 'import ansible_collections.quankey.backup.plugins.module_utils.errors' \
    || die "the venv cannot import the collection through $pth"

printf -v joined '%s, ' "${summary[@]}"
echo "bootstrap: ok in $((SECONDS - started))s (${joined}collection at build/collections)"
