# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 12, leftovers: what a `kill -9` leaves behind is reported with its size and age, and swept once stale.

Real processes killed for real (SIGKILL cannot be cleaned up after), on the real test bed.
"""

import datetime
import json
import os
import signal
import subprocess
import time

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.adapters.postgres import PgClient
from ansible_collections.quankey.backup.plugins.module_utils.errors import PostgresError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import leftovers, prune
from faultproxy import FaultProxy
from hostcommand import CLI, new_name, run_cli

UTC = datetime.timezone.utc


@pytest.fixture
def env(testbed, source):
    values = testbed.backup_env(source)
    values.update(S3_PREFIX=new_name("left"), BACKUP_HOST_ID="db1")
    return values


def _slow_bin(tmp_path, real_bindir, program, seconds):
    """A PG_BIN_DIR whose ``program`` waits ``seconds`` before running (so a test can kill what calls it)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("psql", "pg_dump", "pg_restore"):
        if name == program:
            script = bindir / name
            script.write_text("#!/bin/sh\ncase \"$*\" in *--version*) ;; *) sleep %d ;; esac\nexec %s \"$@\"\n"
                              % (seconds, real_bindir / name))
            script.chmod(0o755)
        else:
            (bindir / name).symlink_to(real_bindir / name)
    return str(bindir)


def _psql_wrapper(tmp_path, real_bindir, statement, then):
    """A PG_BIN_DIR whose psql reads SQL on its stdin (``-f -``) and hands SQL without ``statement`` to the real psql;
    SQL with it goes to the shell lines ``then`` ($sql holds it; %(real)s names the real psql)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "psql"
    real = real_bindir / "psql"
    script.write_text("#!/bin/sh\n"
                      "case \" $* \" in *' -f - '*) ;; *) exec %(real)s \"$@\" ;; esac\n"
                      "sql=$(cat)\n"
                      "case \"$sql\" in *'%(statement)s'*) ;; *) printf '%%s\\n' \"$sql\" | %(real)s \"$@\"; exit $? ;; esac\n"
                      % {"real": real, "statement": statement} + then % {"real": real})
    script.chmod(0o755)
    for name in ("pg_dump", "pg_restore"):
        (bindir / name).symlink_to(real_bindir / name)
    return str(bindir)


def _lingering_psql(tmp_path, real_bindir, statement, seconds):
    """A PG_BIN_DIR whose psql, after running SQL that holds ``statement``, waits ``seconds`` before it exits: the
    statement has committed, and the command that ran it has not heard so yet."""
    return _psql_wrapper(tmp_path, real_bindir, statement,
                         "printf '%%%%s\\n' \"$sql\" | %%(real)s \"$@\"\nstatus=$?\nsleep %d\nexit $status\n" % seconds)


def _detached_psql(tmp_path, real_bindir, statement, seconds):
    """A PG_BIN_DIR whose psql, for SQL that holds ``statement``, runs it after ``SELECT pg_sleep(seconds)`` in a psql
    of its own session (and output: it holds none of the command's pipes), which a signal to this process group does
    not reach, and waits for it: the server goes on with a statement whose psql was killed, as after systemctl stop."""
    sql = tmp_path / "detached.sql"
    return _psql_wrapper(tmp_path, real_bindir, statement,
                         "printf 'SELECT pg_sleep(%d);\\n%%%%s\\n' \"$sql\" > %s\n"
                         "setsid %%(real)s \"$@\" < %s > %s.out 2>&1 &\nwait $!\n" % (seconds, sql, sql, sql))


def _signal_when(proc, ready, signum, timeout=60, poll=0.2):
    """Send ``signum`` to ``proc`` as soon as ``ready()`` is true; its stderr once it ended."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never got ready"
        time.sleep(poll)
    proc.send_signal(signum)
    return proc.communicate(timeout=90)[1].decode()


def _kill_when(proc, ready, timeout=60):
    """SIGKILL ``proc`` as soon as ``ready()`` is true."""
    _signal_when(proc, ready, signal.SIGKILL, timeout)


def _start(env, *args, new_session=False):
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    full.update(env)
    return subprocess.Popen([CLI] + list(args), env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=new_session)


def test_a_killed_restore_leaves_a_staging_database_that_is_reported_and_swept(testbed, source, env, tmp_path):
    run_cli(env, "backup", check=0)
    slow = dict(env, PG_BIN_DIR=_slow_bin(tmp_path, testbed.pg.bindir, "pg_restore", 60))
    target = new_name("killed")
    like = "SELECT count(*) FROM pg_database WHERE datname LIKE '%s\\_\\_restoring\\_%%'" % target
    proc = _start(slow, "restore", "--target-db", target)
    _kill_when(proc, lambda: testbed.pg.psql(like).strip() == "1")

    report = json.loads(run_cli(env, "health", "--json", "--leftover-hours", "0", "--min-size-bytes", "1024").stdout)
    staging = report["leftovers"]["staging_databases"]
    assert [item["target"] for item in staging if item["name"].startswith(target)] == [target]
    found = [f["message"] for f in report["findings"] if f["rule"] == "leftovers"]
    assert any(target + "__restoring_" in message and "h old" in message for message in found), found
    listed = run_cli(env, "list", check=0).stdout
    assert "left behind: staging database %s__restoring_" % target in listed
    again = run_cli(env, "restore", "--target-db", new_name("next"), check=0)
    assert "staging database %s__restoring_" % target in again.stderr  # the next restore says so

    settings = config.settings_from_env(env)
    soon = prune.run_prune(settings, dry_run=True)
    assert not [name for name in soon["staging_databases_dropped"] if name.startswith(target)]  # not stale yet
    later = datetime.datetime.now(UTC) + datetime.timedelta(hours=leftovers.STALE_HOURS + 1)
    swept = prune.run_prune(settings, now=later)
    assert [name for name in swept["staging_databases_dropped"] if name.startswith(target)]
    assert testbed.pg.psql(like).strip() == "0"
    # the killed restore's own login went with it once its password had expired; nothing of the kind is left
    assert swept["restore_logins_dropped"]
    assert testbed.pg.psql("SELECT count(*) FROM pg_roles WHERE rolname ~ '^quankey_restore_[0-9a-f]{8}$'").strip() == "0"


def test_a_killed_backup_leaves_an_open_upload_that_is_reported_and_aborted(testbed, source, env, s3, tmp_path):
    slow = dict(env, PG_BIN_DIR=_slow_bin(tmp_path, testbed.pg.bindir, "pg_dump", 60))
    prefix = config.normalize_prefix(env["S3_PREFIX"])

    def uploads():
        return s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=prefix).get("Uploads", [])

    proc = _start(slow, "backup")
    _kill_when(proc, lambda: len(uploads()) == 1)

    report = json.loads(run_cli(env, "health", "--json", "--leftover-hours", "0", "--min-size-bytes", "1024").stdout)
    found = report["leftovers"]["uploads"]
    assert len(found) == 1 and found[0]["parts"] == 0 and found[0]["age_hours"] < 1  # the test bed says 2010: not trusted
    assert any("open multipart upload" in f["message"] for f in report["findings"] if f["rule"] == "leftovers")

    settings = config.settings_from_env(env)
    assert prune.run_prune(settings)["uploads_aborted"] == []  # young: a backup may still be writing it
    later = datetime.datetime.now(UTC) + datetime.timedelta(hours=leftovers.STALE_HOURS + 1)
    assert len(prune.run_prune(settings, now=later)["uploads_aborted"]) == 1
    assert uploads() == []


@pytest.mark.parametrize("command, slow, said", [
    ("restore", "pg_restore", "nothing was restored: the staging database was dropped"),
    ("backup", "pg_dump", "nothing was committed: the upload was aborted"),
])
def test_sigterm_cleans_up_and_says_what_it_cleaned(testbed, source, env, s3, tmp_path, command, slow, said):
    run_cli(env, "backup", check=0)
    slowed = dict(env, PG_BIN_DIR=_slow_bin(tmp_path, testbed.pg.bindir, slow, 60))
    target = new_name("term")
    args = ["restore", "--target-db", target] if command == "restore" else ["backup"]
    proc = _start(slowed, *args)
    prefix = config.normalize_prefix(env["S3_PREFIX"])

    def started():
        if command == "restore":
            return testbed.pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s\\_\\_restoring\\_%%'"
                                   % target).strip() == "1"
        return len(s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=prefix).get("Uploads", [])) == 1

    err = _signal_when(proc, started, signal.SIGTERM)
    assert proc.returncode == 130 and said in err, err
    assert testbed.pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target).strip() == "0"
    assert s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=prefix).get("Uploads", []) == []


def _count(testbed, sql):
    return int(testbed.pg.psql(sql).strip())


LOGINS = "SELECT count(*) FROM pg_roles WHERE rolname ~ '^quankey_restore_[0-9a-f]{8}$'"


def test_sigterm_as_the_staging_database_is_created_drops_it_too(testbed, source, env, tmp_path):
    """SIGTERM after the staging database's CREATE committed and before its psql returned: the restore lets psql end,
    then drops the database it made (killing psql would not undo a CREATE the server runs; the database was left)."""
    run_cli(env, "backup", check=0)
    logins = _count(testbed, LOGINS)
    target = new_name("created")
    proc = _start(dict(env, PG_BIN_DIR=_lingering_psql(tmp_path, testbed.pg.bindir, "CREATE DATABASE", 5)),
                  "restore", "--target-db", target)
    staging = "SELECT count(*) FROM pg_database WHERE datname LIKE '%s\\_\\_restoring\\_%%'" % target
    err = _signal_when(proc, lambda: _count(testbed, staging) > 0, signal.SIGTERM, poll=0.05)
    assert proc.returncode == 130, err
    assert "nothing was restored: the staging database was dropped" in err
    assert _count(testbed, "SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target) == 0
    assert _count(testbed, LOGINS) == logins  # its login role went too


def test_sigterm_to_the_process_group_waits_for_the_create_its_psql_left_running_then_drops_it(
        testbed, source, env, tmp_path):
    """SIGTERM to the whole process group (systemctl stop) as the staging database's CREATE runs: psql dies with the
    command, the server goes on with the CREATE; the clean-up waits for this process's statements, then drops it."""
    run_cli(env, "backup", check=0)
    target = new_name("group")
    proc = _start(dict(env, PG_BIN_DIR=_detached_psql(tmp_path, testbed.pg.bindir, "CREATE DATABASE", 3)),
                  # as the admin login: the CREATE names no login role, which the clean-up drops (and a CREATE
                  # owned by it would then fail on its own)
                  "restore", "--target-db", target, "--as-admin", new_session=True)
    sleeping = ("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'quankey-backup%' "
                "AND query LIKE '%pg_sleep%' AND state = 'active'")
    deadline = time.monotonic() + 60
    while _count(testbed, sleeping) == 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=90)[1].decode()
    assert proc.returncode == 130, err
    deadline = time.monotonic() + 30  # the detached CREATE has ended (with the old code, it committed after this)
    while _count(testbed, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'quankey-backup%'") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _count(testbed, "SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target) == 0, err


def test_sigterm_as_the_swap_commits_says_the_restore_is_done_and_leaves_both_databases(testbed, source, env, tmp_path):
    """--force over an existing database, SIGTERM after the swap committed: the restored database is the target and
    the old one is kept, renamed, and the command says so instead of "nothing was restored"."""
    run_cli(env, "backup", check=0)
    target = new_name("swapped")
    testbed.pg.create_database(target)  # empty: the restored one has the sample's tables
    proc = _start(dict(env, PG_BIN_DIR=_lingering_psql(tmp_path, testbed.pg.bindir, "RENAME TO", 5)),
                  "restore", "--target-db", target, "--force")
    replaced = "SELECT count(*) FROM pg_database WHERE datname LIKE '%s\\_\\_replaced\\_%%'" % target
    err = _signal_when(proc, lambda: _count(testbed, replaced) > 0, signal.SIGTERM, poll=0.05)
    assert proc.returncode == 130, err
    assert "restore interrupted: it had just finished: %s holds the restored backup (the database it replaced is %s__replaced_" \
        % (target, target) in err, err
    assert _count(testbed, replaced) == 1
    assert _count(testbed, "SELECT count(*) FROM pg_database WHERE datname LIKE '%s\\_\\_restoring\\_%%'" % target) == 0
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    assert int(testbed.pg.psql(tables, db=target).strip()) > 0


def test_the_swap_is_one_transaction(testbed, env):
    """When the second rename of a swap fails, the first is undone: the target keeps its name."""
    pg = PgClient(config.settings_from_env(env))
    target = new_name("kept")
    testbed.pg.create_database(target)
    with pytest.raises(PostgresError, match="does not exist"):
        pg.swap_databases(new_name("no_such_staging"), target, target + "__replaced_x")
    assert _count(testbed, "SELECT count(*) FROM pg_database WHERE datname = '%s'" % target) == 1
    assert _count(testbed, "SELECT count(*) FROM pg_database WHERE datname = '%s__replaced_x'" % target) == 0


def test_sigterm_as_the_store_opens_the_upload_leaves_no_open_upload(testbed, source, env, s3):
    """SIGTERM after the store opened the backup's multipart upload and before its answer (the upload id) came back:
    the backup finds the upload by its key and aborts it."""
    prefix = config.normalize_prefix(env["S3_PREFIX"])
    with FaultProxy(testbed.moto.endpoint_url) as proxy:
        held = proxy.hold_answer(30, method="POST", path="?uploads")
        proc = _start(dict(env, S3_ENDPOINT_URL=proxy.endpoint_url), "backup")
        err = _signal_when(proc, lambda: held.fired.is_set() and bool(
            s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=prefix).get("Uploads")), signal.SIGTERM, poll=0.05)
    assert proc.returncode == 130, err
    assert "nothing was committed" in err
    assert s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=prefix).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=prefix).get("KeyCount", 0) == 0
