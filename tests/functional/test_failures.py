# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 12 on the real test bed: failures that end in a correct state and say their true cause.

Each reproduces an on-call engineer's bad night with the real PostgreSQL and S3 endpoint and the
installed command (docs/FAULTS.md lists them with their expected outcome).
"""

import os
import re
import subprocess
import time

from hostcommand import new_name, run_cli
from sampledb import table_digests
from testbed import write_env_file


def _env(testbed, db):
    values = testbed.backup_env(db)
    values.update(S3_PREFIX=new_name("fail"), BACKUP_HOST_ID="db1")
    return values


def test_a_table_locked_by_a_migration_fails_the_backup_in_bounded_time_naming_the_table(testbed, source):
    env = _env(testbed, source)
    holder = subprocess.Popen(  # pylint: disable=consider-using-with  # a session that holds the lock until killed
        [str(testbed.pg.bindir / "psql"), "-X", "-q", "-d", source, "-c",
         "BEGIN; LOCK TABLE public.customers IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);"],
        env=dict(os.environ, **testbed.pg.env()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while testbed.pg.psql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = "
                              "'public.customers'::regclass", db=source).strip() != "1":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        started = time.monotonic()
        proc = run_cli(dict(env, BACKUP_LOCK_WAIT_TIMEOUT="2"), "backup", check=4)
        assert time.monotonic() - started < 30
        assert "pg_dump could not lock public.customers within BACKUP_LOCK_WAIT_TIMEOUT" in proc.stderr
        assert "pg_locks" in proc.stderr and "Command was" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()
        # its backend sleeps on in the transaction, holding the lock, after psql is gone: end it, so the next tests on
        # this server do not wait up to a minute for the table
        testbed.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s' "
                        "AND pid <> pg_backend_pid()" % source)


def test_a_missing_owner_role_is_named_with_its_fix(testbed):
    db, role = new_name("owned"), new_name("appowner")
    testbed.pg.create_database(db)
    testbed.pg.psql("CREATE ROLE %s NOLOGIN" % role)
    testbed.pg.psql("CREATE TABLE public.t (id int); ALTER TABLE public.t OWNER TO %s; INSERT INTO public.t VALUES (1)"
                    % role, db=db)
    env = _env(testbed, db)
    run_cli(env, "backup", check=0)
    testbed.pg.psql("ALTER TABLE public.t OWNER TO postgres", db=db)
    testbed.pg.psql("DROP ROLE %s" % role)  # the replacement server lacks it
    proc = run_cli(env, "restore", "--target-db", new_name("r"), "--as-admin", check=4)
    assert 'role "%s" does not exist' % role in proc.stderr and "--no-owner" in proc.stderr
    assert "Command was" not in proc.stderr
    # the restore role (the default) and --no-owner both restore it
    run_cli(env, "restore", "--target-db", new_name("r"), check=0)
    run_cli(env, "restore", "--target-db", new_name("r"), "--as-admin", "--no-owner", check=0)


def test_names_near_postgresqls_63_bytes_are_cut_by_bytes(testbed):
    db = "données_clientèle_" + "é" * 18  # 56 bytes in UTF-8, 36 characters: with "_restored_<time>" well past 63
    assert len(db.encode("utf-8")) == 56
    testbed.pg.create_database(db)
    testbed.pg.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('été')", db=db)
    env = _env(testbed, db)
    run_cli(env, "backup", check=0)
    restored = run_cli(env, "restore", "--json", check=0)
    assert '"target_db": "donn' in restored.stdout
    explicit = "é" * 31 + "x"  # 63 bytes exactly
    run_cli(env, "restore", "--target-db", explicit, check=0)
    assert table_digests(testbed.pg, explicit, ["public.t"]) == table_digests(testbed.pg, db, ["public.t"])
    run_cli(env, "restore", "--target-db", explicit, "--force", check=0)  # its staging and replaced names fit too


def test_an_env_file_with_a_byte_order_mark_is_read_and_messages_name_where_a_value_came_from(testbed, source, tmp_path):
    env = _env(testbed, source)
    path = tmp_path / "backup.env"
    write_env_file(path, env)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some editors save it
    os.chmod(path, 0o600)
    run_cli({}, "--env-file", str(path), "backup", check=0)
    proc = run_cli({"DB_PORT": "0"}, "--env-file", str(path), "backup", check=3)
    assert "DB_PORT must be between 1 and 65535" in proc.stderr and str(path) not in proc.stderr
    path.write_text(re.sub(r"DB_PORT='\d+'", "DB_PORT='0'", path.read_text(encoding="utf-8-sig")), encoding="utf-8")
    os.chmod(path, 0o600)
    proc = run_cli({}, "--env-file", str(path), "backup", check=3)
    assert "DB_PORT in %s must be between 1 and 65535" % path in proc.stderr
