# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/drill.yml and the backup_drill module, played for real: ``ansible-playbook quankey.backup.drill`` (the
collection of this checkout, as installed) on a drill host set up as the restore_drill role leaves one - the drills'
env file, the engine's Python at <restore_drill_install_dir>/venv/bin/python - against the test bed's PostgreSQL (the
drill server) and S3, where two database hosts' backups wait. Fleet mode, one host's database, check mode, a failing
assertion (the play fails after the table; the scratch database is gone), and the extra variables refused. The role
itself (install, schedule, space check) runs on a chroot test host in Molecule (molecule/drill)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hostcommand import run_playbook
from testbed import write_env_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DRILL_HOST = "drill1"
SOURCES = ("ddb1", "ddb2")


def _cli(env, *args):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    full.update(env)
    proc = subprocess.run([str(BIN / "quankey-backup")] + list(args), env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def fleet(testbed, tmp_path_factory):
    """Hosts ddb1 and ddb2, each with a backup of its own database (rows counted at backup), under a prefix of their
    own; the drill host drill1: its env file (the drill server is the test bed's PostgreSQL, one assertion of its own)
    and engine Python."""
    tmp = tmp_path_factory.mktemp("drill")
    collections = tmp / "collections" / "ansible_collections" / "quankey"
    collections.mkdir(parents=True)
    (collections / "backup").symlink_to(ROOT)
    python = tmp / "opt" / "venv" / "bin" / "python"  # the role's <restore_drill_install_dir>/venv/bin/python
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec %s \"$@\"\n" % sys.executable)
    python.chmod(0o755)
    prefix = "drill-%s" % uuid.uuid4().hex[:8]
    databases = {}
    for host in SOURCES:
        db = "%s_%s" % (host, uuid.uuid4().hex[:8])
        testbed.pg.create_database(db)
        testbed.pg.psql("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 500) g", db=db)
        env = dict(testbed.backup_env(db), S3_PREFIX=prefix, BACKUP_HOST_ID=host, PG_BIN_DIR=testbed.pg.bindir,
                   BACKUP_COUNT_ROWS="true")
        _cli(env, "backup", "--json")
        databases[host] = db
    drill_env = dict(testbed.backup_env(databases[SOURCES[0]]), S3_PREFIX=prefix, BACKUP_HOST_ID=DRILL_HOST,
                     PG_BIN_DIR=testbed.pg.bindir, DRILL_ASSERTIONS=json.dumps(["SELECT count(*) = 500 FROM items"]))
    del drill_env["DB_NAME"]  # a drill host backs nothing up
    write_env_file(str(tmp / "drill.env"), drill_env)
    inventory = {"drill_hosts": {"hosts": {DRILL_HOST: {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
        "restore_drill_env_file": str(tmp / "drill.env"), "restore_drill_install_dir": str(tmp / "opt")}}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    yield {"tmp": tmp, "env": drill_env, "prefix": prefix, "databases": databases}
    for db in databases.values():
        testbed.pg.drop_database(db)


def _play(fleet, *options, playbook="quankey.backup.drill"):
    """ansible-playbook <playbook> on drill1; the module gets its settings from the drill host's env file only."""
    return run_playbook(fleet["tmp"], fleet["env"], playbook, *options, drop_prefixes=("DRILL_",), timeout=600)


def _reports(s3, testbed, fleet):
    listing = s3.list_objects_v2(Bucket=testbed.bucket, Prefix="%s/drills/" % fleet["prefix"])
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _scratch_databases(testbed):
    return testbed.pg.psql("SELECT datname FROM pg_database WHERE datname LIKE 'quankey_drill%'").split()


def _table_lines(stdout):
    """The lines of the fleet table the debug task printed (its msg, a list of strings)."""
    lines = stdout[stdout.index("TASK [Show the fleet table"):].splitlines()
    first = next(number for number, line in enumerate(lines) if line.strip() == '"msg": [') + 1
    last = next(number for number in range(first, len(lines)) if lines[number].strip() == "]")
    return [json.loads(line.strip().rstrip(",")) for line in lines[first:last]]


def test_fleet_mode_drills_every_host_and_prints_the_table(fleet, testbed, s3):
    before = _reports(s3, testbed, fleet)
    done = _play(fleet)
    assert done.returncode == 0, done.stdout
    table = _table_lines(done.stdout)
    assert table[0].split() == ["HOST", "DATABASE", "BACKUP", "AGE", "RTO", "RESULT"], done.stdout
    rows = sorted(line.split() for line in table[1:])
    assert [(row[0], row[1]) for row in rows] == [(host, fleet["databases"][host]) for host in SOURCES]
    for row in rows:
        assert row[2].startswith(row[1] + "_backup_") and row[-1] == "passed", table
    after = _reports(s3, testbed, fleet)
    new = [key for key in after if key not in before]
    assert sorted(key.split("/")[2] for key in new) == sorted(SOURCES), new  # <prefix>/drills/<host>/<db>/...
    assert _scratch_databases(testbed) == []
    assert "changed=1" in done.stdout  # the reports stored: the task's change


def test_one_hosts_database_only(fleet, testbed, s3):
    host = SOURCES[1]
    before = _reports(s3, testbed, fleet)
    done = _play(fleet, "-e", "backup_host=%s" % host, "-e", "database=%s" % fleet["databases"][host])
    assert done.returncode == 0, done.stdout
    rows = [line.split() for line in _table_lines(done.stdout)[1:]]
    assert [(row[0], row[1], row[-1]) for row in rows] == [(host, fleet["databases"][host], "passed")]
    new = [key for key in _reports(s3, testbed, fleet) if key not in before]
    assert [key.split("/")[2:4] for key in new] == [[host, fleet["databases"][host]]]


def test_check_mode_shows_what_would_be_drilled_and_restores_nothing(fleet, testbed, s3):
    before = _reports(s3, testbed, fleet)
    done = _play(fleet, "--check")
    assert done.returncode == 0, done.stdout
    rows = sorted(line.split() for line in _table_lines(done.stdout)[1:])
    assert [(row[0], row[1]) for row in rows] == [(host, fleet["databases"][host]) for host in SOURCES]
    assert all(row[-1] == "-" for row in rows), rows  # no result: nothing was drilled
    assert _reports(s3, testbed, fleet) == before
    assert _scratch_databases(testbed) == []


def test_a_failing_assertion_fails_the_play_after_the_table_and_leaves_no_scratch_database(fleet, testbed):
    host = SOURCES[0]
    done = _play(fleet, "-e", "backup_host=%s" % host, "-e", "database=%s" % fleet["databases"][host],
                 "-e", json.dumps({"assertions": ["SELECT count(*) > 100000 FROM items"]}))
    assert done.returncode != 0, done.stdout
    lines = _table_lines(done.stdout)[1:]
    assert [line.split()[:2] for line in lines] == [[host, fleet["databases"][host]]]
    assert "  failed: assertion 2: " in lines[0], lines  # the drill host's own assertion (DRILL_ASSERTIONS) passed
    assert "TASK [Fail when a drill failed or could not run]" in done.stdout
    assert "1 of 1 restore drill(s) failed" in done.stdout
    assert _scratch_databases(testbed) == []


@pytest.mark.parametrize("options, words", [
    (["-e", "backup_host=ddb1"], "backup_host and database go together"),
    (["-e", "database=x"], "backup_host and database go together"),
    (["-e", "assertions=select 1"], "assertions must be a list of SQL"),
])
def test_extra_variables_that_do_not_fit_are_refused_before_anything_runs(fleet, options, words):
    done = _play(fleet, *options)
    assert done.returncode != 0
    assert words in done.stdout, done.stdout
    assert "TASK [Drill (as the drill user" not in done.stdout


def test_a_host_without_the_engine_is_refused_naming_the_role(fleet):
    done = _play(fleet, "-e", "restore_drill_install_dir=%s" % (fleet["tmp"] / "nowhere"))
    assert done.returncode != 0
    assert "has no quankey-backup engine" in done.stdout and "restore_drill role" in done.stdout, done.stdout
