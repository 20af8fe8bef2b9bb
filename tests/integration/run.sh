#!/usr/bin/env bash
# Run the integration targets for real: PostgreSQL + S3 (moto) from tests/testbed.py, a source
# database with a few tables and rows, and each target played with ansible-playbook against
# localhost (connection local) through the collection in this checkout.
#
#   tests/integration/run.sh                    every target
#   tests/integration/run.sh backup_health ...  only these (setup_testbed comes with each)
#
# Options for ansible-playbook can follow `--`, e.g. `tests/integration/run.sh -- -vvv`.
# Set PYTHON=/path/to/venv/bin/python to choose the venv (default .venv, made by scripts/bootstrap.sh):
# it needs ansible-core, boto3, cryptography, zstandard and moto[server].
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
TARGETS_DIR="$ROOT/tests/integration/targets"
ALL_TARGETS=(pg_encrypted_backup backup_info backup_health s3_backup_restore backup_rekey backup_adopt backup_drill keys_and_trust env_file)

die() { echo "integration: $*" >&2; exit 1; }

pick_python() {
    local c
    for c in "${PYTHON:-}" "$ROOT/.venv/bin/python"; do
        if [[ -n $c && -x $c ]] && "$c" -c 'import ansible, boto3, cryptography, zstandard, moto' 2>/dev/null; then
            echo "$(cd "$(dirname "$c")" && pwd)/$(basename "$c")"; return  # absolute: it becomes the module interpreter
        fi
    done
    die "no Python with ansible-core, boto3, cryptography, zstandard and moto: run scripts/bootstrap.sh or set PYTHON"
}

# ---- inside the test bed: seed the source database, play each target -------------------------
run_targets() {
    local py=$1; shift
    local targets=() extra=() target status=0 started results=()
    while (($#)); do
        if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
        targets+=("$1"); shift
    done
    ((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

    started=$SECONDS
    "$QK_IT_PSQL" -X -q -v ON_ERROR_STOP=1 -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" \
        -f "$TARGETS_DIR/setup_testbed/files/source.sql" >/dev/null
    echo "integration: source database $DB_NAME seeded in $((SECONDS - started))s"

    for target in "${targets[@]}"; do
        [[ -f $TARGETS_DIR/$target/tasks/main.yml ]] || die "no target $target in $TARGETS_DIR"
        printf -- '- hosts: localhost\n  gather_facts: false\n  roles:\n    - %s\n' "$target" >"$WORK/$target.yml"
        echo "integration: ---- $target"
        started=$SECONDS
        if "$(dirname "$py")/ansible-playbook" -i localhost, -c local -e "ansible_python_interpreter=$py" \
                "${extra[@]}" "$WORK/$target.yml"; then
            results+=("ok     $target ($((SECONDS - started))s)")
        else
            results+=("FAILED $target ($((SECONDS - started))s)")
            status=1
        fi
    done
    echo "integration: results"
    printf '  %s\n' "${results[@]}"
    return $status
}

if [[ ${1:-} == --inside-testbed ]]; then
    shift
    run_targets "$@"
    exit
fi

# ---- outside: a collection path to this checkout, then the test bed around the run ------------
PY=$(pick_python)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/quankey-integration.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/collections/ansible_collections/quankey" "$WORK/tmp"
ln -s "$ROOT" "$WORK/collections/ansible_collections/quankey/backup"
pg_bin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
QK_IT_PSQL=${pg_bin:+$pg_bin/psql}
QK_IT_PSQL=${QK_IT_PSQL:-$(command -v psql || true)}
[[ -x $QK_IT_PSQL ]] || die "psql not found: install PostgreSQL (scripts/bootstrap.sh)"

export WORK QK_IT_PSQL
export ANSIBLE_COLLECTIONS_PATH="$WORK/collections"
export ANSIBLE_ROLES_PATH="$TARGETS_DIR"
export ANSIBLE_LOCAL_TEMP="$WORK/tmp" ANSIBLE_REMOTE_TEMP="$WORK/tmp"
export ANSIBLE_RETRY_FILES_ENABLED=false ANSIBLE_NOCOWS=1 ANSIBLE_DEPRECATION_WARNINGS=true
export ANSIBLE_CALLBACK_RESULT_FORMAT=yaml

started=$SECONDS
status=0
"$PY" "$ROOT/tests/testbed.py" run --db quankey_source -- bash "$ROOT/tests/integration/run.sh" --inside-testbed "$PY" "$@" \
    || status=$?
echo "integration: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - started))s"
exit $status
