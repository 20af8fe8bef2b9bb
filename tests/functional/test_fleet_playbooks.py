# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet playbooks on the modules, played for real: ``ansible-playbook quankey.backup.<name>`` (the collection
of this checkout, as installed) against a host set up as the pg_backup role leaves one - an env file, the engine's
Python at <pg_backup_install_dir>/venv/bin/python, the run lock in pg_backup_home - backed by the test bed's
PostgreSQL and S3. backup_now (run lock, prune, the old name still importing it), health (the engine's report lines,
fail_on), restore (before a time, another host's backups, check mode, the roles a server lacks). The become to the backup user and the
application's stop and start are proven on chroot hosts by Molecule (molecule/default/tests/test_playbooks.py)."""

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import sampledb
from hostcommand import run_playbook
from testbed import write_env_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "fdb1"


def _cli(env, *args):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    full.update(env)
    proc = subprocess.run([str(BIN / "quankey-backup")] + list(args), env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _next_second():
    time.sleep(1.05 - time.time() % 1.0)


@pytest.fixture(scope="module")
def fleet(testbed, tmp_path_factory):
    """Host fdb1 (its env file, engine Python and home) with two backups of its database, the second after ``between``
    and with more rows; and host fdb2's backup of its own database in the same bucket."""
    tmp = tmp_path_factory.mktemp("fleet")
    collections = tmp / "collections" / "ansible_collections" / "quankey"
    collections.mkdir(parents=True)
    (collections / "backup").symlink_to(ROOT)
    python = tmp / "opt" / "venv" / "bin" / "python"  # the role's <pg_backup_install_dir>/venv/bin/python
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec %s \"$@\"\n" % sys.executable)
    python.chmod(0o755)
    (tmp / "home").mkdir()
    prefix = "fleet-%s" % uuid.uuid4().hex[:8]
    db, other_db = "fleet_%s" % uuid.uuid4().hex[:8], "other_%s" % uuid.uuid4().hex[:8]
    for name in (db, other_db):
        testbed.pg.create_database(name)
        testbed.pg.psql("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g", db=name)
    env = dict(testbed.backup_env(db), S3_PREFIX=prefix, BACKUP_HOST_ID=HOST, PG_BIN_DIR=testbed.pg.bindir)
    write_env_file(str(tmp / "backup.env"), env)
    first = json.loads(_cli(env, "backup", "--json"))
    _next_second()
    between = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _next_second()
    testbed.pg.psql("INSERT INTO items SELECT g, 'later' FROM generate_series(1001, 1500) g", db=db)
    second = json.loads(_cli(env, "backup", "--json"))
    other = dict(env, DB_NAME=other_db, BACKUP_HOST_ID="fdb2")
    other_backup = json.loads(_cli(other, "backup", "--json"))
    inventory = {"databases": {"hosts": {HOST: {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
        "pg_backup_env_file": str(tmp / "backup.env"), "pg_backup_install_dir": str(tmp / "opt"),
        "pg_backup_home": str(tmp / "home"), "pg_backup_databases": [db]}}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    yield {"tmp": tmp, "env": env, "db": db, "other_db": other_db, "first": first, "second": second,
           "between": between, "other": other, "other_backup": other_backup}
    for name in (db, other_db):
        testbed.pg.drop_database(name)


def _play(fleet, playbook, *options):
    """ansible-playbook <playbook> (quankey.backup.<name>, or a path) on fdb1; the module must get its settings from the
    host's env file only, nothing from this process."""
    return run_playbook(fleet["tmp"], fleet["env"], playbook, *options)


def _names(env, host=HOST):
    listing = json.loads(_cli(env, "list", "--json", "--host", host))
    return [item["name"] for item in listing["backups"]]


def _rows(testbed, db):
    return int(testbed.pg.psql("SELECT count(*) FROM items", db=db).strip())


def test_backup_now_by_its_collection_name_backs_up_as_the_host_would_and_prunes(fleet):
    before = _names(fleet["env"])
    done = _play(fleet, "quankey.backup.backup_now", "-e", "prune=true")
    assert done.returncode == 0, done.stdout
    taken = [name for name in _names(fleet["env"]) if name not in before]
    assert len(taken) == 1 and taken[0].startswith(fleet["db"] + "_backup_")
    assert "%s: %s, " % (fleet["db"], taken[0]) in done.stdout and "1 tables) in" in done.stdout
    assert "at s3://%s/%s/backups/postgresql/%s/%s/%s.encrypted" % (
        fleet["env"]["S3_BUCKET"], fleet["env"]["S3_PREFIX"], HOST, fleet["db"], taken[0]) in done.stdout
    assert "pruned 0 backup(s) past retention" in done.stdout
    # check mode: PostgreSQL, pg_dump and the bucket checked, nothing stored
    check = _play(fleet, "quankey.backup.backup_now", "--check")
    assert check.returncode == 0, check.stdout
    assert "%s: would store %s_backup_" % (fleet["db"], fleet["db"]) in check.stdout
    assert len(_names(fleet["env"])) == len(before) + 1


def test_the_old_hyphenated_name_still_imports_the_playbook(fleet):
    before = _names(fleet["env"])
    done = _play(fleet, str(ROOT / "playbooks" / "backup-now.yml"))
    assert done.returncode == 0, done.stdout
    assert "PLAY [Back up PostgreSQL now]" in done.stdout
    assert len(_names(fleet["env"])) == len(before) + 1


def test_backup_now_waits_for_a_scheduled_run_holding_the_lock_and_then_gives_up_naming_it(fleet):
    lock = fleet["tmp"] / "home" / "backup.lock"
    ready = fleet["tmp"] / "home" / "held"
    holder = subprocess.Popen(["flock", str(lock), "sh", "-c", "touch %s; sleep 60" % ready])  # as the cron runner does
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert time.time() < deadline and holder.poll() is None
            time.sleep(0.05)
        before = _names(fleet["env"])
        started = time.time()
        busy = _play(fleet, "quankey.backup.backup_now", "-e", "lock_wait=2")
        assert busy.returncode != 0
        assert time.time() - started >= 2
        assert "held the run lock %s for the 2 s this run waited" % lock in busy.stdout, busy.stdout
        assert _names(fleet["env"]) == before
    finally:
        holder.kill()
        holder.wait()
        ready.unlink()


def test_health_prints_the_engines_report_lines_and_fails_at_the_asked_level(fleet):
    done = _play(fleet, "quankey.backup.health")
    assert done.returncode == 0, done.stdout
    header = "WARNING: backups of %s on %s in s3://%s" % (fleet["db"], HOST, fleet["env"]["S3_BUCKET"])
    assert header in done.stdout
    assert "  latest: %s_backup_" % fleet["db"] in done.stdout and "min_size" in done.stdout  # a tiny test database
    failed = _play(fleet, "quankey.backup.health", "-e", "fail_on=warning")
    assert failed.returncode != 0 and header in failed.stdout
    assert "Backups of %s at warning or worse, or not checked" % HOST in failed.stdout
    assert _play(fleet, "quankey.backup.health", "-e", "fail_on=critical").returncode == 0


def test_restore_takes_the_latest_backup_before_a_time(fleet, testbed):
    target = fleet["db"] + "_before"
    done = _play(fleet, "quankey.backup.restore", "-e", "before=%s" % fleet["between"], "-e", "target_db=%s" % target)
    assert done.returncode == 0, done.stdout
    first = fleet["first"]["name"]
    assert "backup: %s (the latest taken before %s) of host %s" % (first, fleet["between"], HOST) in done.stdout
    assert "restored %s (" % first in done.stdout and "into %s on %s" % (target, HOST) in done.stdout
    assert "tables: 1 restored, 1 in the backup" in done.stdout and "metadata signature valid (key qk1-" in done.stdout
    # with_globals by default (a signed backup that kept its globals, nothing replaced): the roles are all here
    assert "roles: created where this server lacks them, existing roles left as they are" in done.stdout
    assert "roles created: none" in done.stdout
    assert "roles already here (left as they were): %s" % testbed.pg.user in done.stdout
    assert _rows(testbed, target) == 1000  # the data as it was then; the latest backup has 1500 rows
    testbed.pg.drop_database(target)


def test_restore_brings_another_hosts_backup_here(fleet, testbed):
    target = fleet["other_db"] + "_here"
    done = _play(fleet, "quankey.backup.restore", "-e", "source_host=fdb2", "-e", "db=%s" % fleet["other_db"],
                 "-e", "target_db=%s" % target)
    assert done.returncode == 0, done.stdout
    name = fleet["other_backup"]["name"]
    assert "backup: %s of host fdb2, database %s" % (name, fleet["other_db"]) in done.stdout
    assert "restored %s (" % name in done.stdout and "host fdb2, database %s" % fleet["other_db"] in done.stdout
    assert sampledb.table_digests(testbed.pg, target, ["public.items"]) == sampledb.table_digests(
        testbed.pg, fleet["other_db"], ["public.items"])
    testbed.pg.drop_database(target)


def test_restore_in_check_mode_verifies_the_backup_and_restores_nothing(fleet, testbed):
    target = fleet["db"] + "_checked"
    done = _play(fleet, "quankey.backup.restore", "-e", "target_db=%s" % target, "--check")
    assert done.returncode == 0, done.stdout
    assert "verified %s_backup_" % fleet["db"] in done.stdout and "matches the metadata" in done.stdout
    assert "Nothing was changed." in done.stdout
    assert "roles it would create: none, already here: %s (left as they are)" % testbed.pg.user in done.stdout
    exists = testbed.pg.psql("SELECT count(*) FROM pg_database WHERE datname = '%s'" % target).strip()
    assert exists == "0"


def _role_state(testbed, names):
    """Each role's login flag and password hash, and who is a member of whom (pg_authid: the superuser's view)."""
    listed = ", ".join("'%s'" % name for name in names)
    return testbed.pg.psql("SELECT rolname, rolcanlogin, coalesce(rolpassword, '-') FROM pg_authid WHERE rolname IN (%s) "
                           "UNION ALL SELECT r.rolname || ' has member ' || m.rolname, NULL, NULL FROM pg_auth_members a "
                           "JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
                           "WHERE r.rolname IN (%s) ORDER BY 1" % (listed, listed))


def test_restore_gives_a_server_that_lost_the_roles_them_back_and_replace_leaves_existing_ones_alone(fleet, testbed):
    """Issue 19 through the playbook: the application's roles are gone (a new server); restore.yml, by default,
    creates them from the backup's globals - owner, login with its password hash, membership - and the data comes
    back owned as it was. A replace (replace=true) then leaves the roles, changed since, as they are."""
    suffix = uuid.uuid4().hex[:8]
    owner, login, db = "fowner_%s" % suffix, "flogin_%s" % suffix, "fglobals_%s" % suffix
    pg = testbed.pg
    pg.psql("CREATE ROLE %s NOLOGIN" % owner)
    pg.psql("CREATE ROLE %s LOGIN PASSWORD 'pw-%s' IN ROLE %s" % (login, suffix, owner))
    pg.psql("CREATE DATABASE %s OWNER %s" % (db, owner))
    try:
        pg.psql("SET ROLE %s; CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300) g"
                % owner, db=db)
        _cli(dict(fleet["env"], DB_NAME=db), "backup", "--json")
        source = _role_state(testbed, [owner, login])
        assert "%s has member %s" % (owner, login) in source and "SCRAM-SHA-256$" in source
        # the server loses the database and the roles
        pg.drop_database(db)
        pg.psql("DROP ROLE %s" % login)
        pg.psql("DROP ROLE %s" % owner)

        # check mode: what it would create; nothing is
        check = _play(fleet, "quankey.backup.restore", "-e", "db=%s" % db, "-e", "target_db=%s" % db, "--check")
        assert check.returncode == 0, check.stdout
        assert ("roles: created where this server lacks them, existing roles left as they are; the database gets its "
                "owner, ACL and settings back (with_globals) - the backup kept 2 role(s), 1 membership(s), passwords "
                "included") in check.stdout, check.stdout
        assert "roles it would create: %s, %s, already here: " % (login, owner) in check.stdout, check.stdout
        assert _role_state(testbed, [owner, login]) == ""

        done = _play(fleet, "quankey.backup.restore", "-e", "db=%s" % db, "-e", "target_db=%s" % db)
        assert done.returncode == 0, done.stdout
        assert "roles created: %s, %s" % (login, owner) in done.stdout
        assert "memberships granted: %s in %s" % (login, owner) in done.stdout
        assert "database owner %s, " % owner in done.stdout
        assert _role_state(testbed, [owner, login]) == source  # the same password hash, the same membership
        assert pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '%s'" % db).strip() == owner
        assert pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'items'", db=db).strip() == owner
        assert _rows(testbed, db) == 300

        # replace=true: with_globals is off by default, so a role changed since the backup stays as it is now
        pg.psql("ALTER ROLE %s PASSWORD 'changed-%s'" % (login, suffix))
        changed = _role_state(testbed, [owner, login])
        assert changed != source
        replaced = _play(fleet, "quankey.backup.restore", "-e", "db=%s" % db, "-e", "target_db=%s" % db,
                         "-e", "replace=true", "-e", "confirm=yes")
        assert replaced.returncode == 0, replaced.stdout
        assert "roles: none created or changed (replace=true: the roles are expected to be here)" in replaced.stdout
        assert "roles created:" not in replaced.stdout
        assert "the previous %s is kept as %s__replaced_" % (db, db) in replaced.stdout
        assert _role_state(testbed, [owner, login]) == changed
        assert pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'items'", db=db).strip() == owner
        # asked for with replace=true, the module's force sets the existing roles back to the backup's, as the plan says
        reset = _play(fleet, "quankey.backup.restore", "-e", "db=%s" % db, "-e", "target_db=%s" % db,
                      "-e", "replace=true", "-e", "with_globals=true", "-e", "confirm=yes")
        assert reset.returncode == 0, reset.stdout
        assert "roles: created where missing, and EXISTING ROLES SET BACK to what the backup holds" in reset.stdout
        assert "roles already here (SET BACK to what the backup holds: %s, %s)" % (login, owner) in reset.stdout
        assert _role_state(testbed, [owner, login]) == source
        # a backup that kept no globals (BACKUP_GLOBALS=false): with_globals is off, and the plan says why
        _cli(dict(fleet["env"], DB_NAME=db, BACKUP_GLOBALS="false"), "backup", "--json")
        plain = _play(fleet, "quankey.backup.restore", "-e", "db=%s" % db, "-e", "target_db=%s_plain" % db)
        assert plain.returncode == 0, plain.stdout
        assert ("roles: none created or changed (the backup kept none: BACKUP_GLOBALS=false, or taken before backups "
                "kept them); the roles its objects need must exist on this server") in plain.stdout, plain.stdout
        assert "roles created:" not in plain.stdout and "tables: 1 restored, 1 in the backup" in plain.stdout
    finally:
        for name in pg.psql("SELECT datname FROM pg_database WHERE datname LIKE '%s%%'" % db).split():
            pg.drop_database(name)
        pg.psql("DROP ROLE IF EXISTS %s" % login)
        pg.psql("DROP ROLE IF EXISTS %s" % owner)


def test_restore_refuses_to_replace_without_a_confirmation_and_changes_nothing(fleet, testbed):
    refused = _play(fleet, "quankey.backup.restore", "-e", "target_db=%s" % fleet["db"], "-e", "replace=true")
    assert refused.returncode != 0 and "Not confirmed" in refused.stdout, refused.stdout
    assert _rows(testbed, fleet["db"]) == 1500


def test_a_missing_backup_before_a_time_fails_with_the_engines_words(fleet):
    done = _play(fleet, "quankey.backup.restore", "-e", "before=2001-01-01", "-e", "target_db=never_made")
    assert done.returncode != 0
    assert "no backup was taken before 2001-01-01T00:00:00Z" in done.stdout, done.stdout


PREFLIGHT = """
- name: The pg_backup role's checks, as setup_backups.yml runs them first
  hosts: databases
  gather_facts: false
  tasks:
    - name: Check the inputs
      ansible.builtin.import_role:
        name: quankey.backup.pg_backup
        tasks_from: preflight.yml
"""


@pytest.mark.parametrize("change, words", [
    ({}, None),
    ({"pg_backup_host_id": "db/1"}, "pg_backup_host_id 'db/1' may hold only letters, digits, '.', '_' and '-'"),
    ({"pg_backup_encryption_key": "not a key"}, "pg_backup_encryption_key is not valid base64"),
    ({"pg_backup_retention_days": 0}, "pg_backup_retention_days must be between 1 and 36500, got 0"),
    ({"pg_backup_keep_weekly": -1}, "pg_backup_keep_weekly must be between 0 and 100000, got -1: give how many of the "
                                    "most recent ISO weeks (UTC) keep their newest good backup"),
    ({"pg_backup_databases": ["a/b"]}, "pg_backup_databases 'a/b' is not usable in S3 keys"),
    ({"pg_backup_s3_prefix": "prod", "pg_backup_name": "-x"}, "pg_backup_name '-x' may hold only letters"),
])
def test_setup_refuses_before_installing_anything_what_the_engine_refuses_naming_the_role_variable(fleet, change, words):
    playbook = fleet["tmp"] / "preflight.yml"
    playbook.write_text(PREFLIGHT)
    values = dict({"pg_backup_seed_takeover": False, "pg_backup_s3_bucket": "quankey-backups-prod",
                   "pg_backup_encryption_key": fleet["env"]["BACKUP_ENCRYPTION_KEY"], "pg_backup_host_id": "db1",
                   "pg_backup_python": sys.executable}, **change)
    extra = fleet["tmp"] / "preflight-vars.json"
    extra.write_text(json.dumps(values))
    done = _play(fleet, str(playbook), "-e", "@%s" % extra, "--check")
    if words is None:
        assert done.returncode == 0, done.stdout
    else:
        assert done.returncode != 0 and words in done.stdout, done.stdout
        assert "Check the settings with the engine's own rules" in done.stdout
