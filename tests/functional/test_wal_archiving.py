# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18 items 6 and 5 (health) on the real test bed: the pg_backup role's WAL archiving tasks
(roles/pg_backup/tasks/wal_archiving.yml, run by a real ansible-playbook) turn archiving on in a real cluster with
ALTER SYSTEM, report the restart that archive_mode needs without failing, change nothing the second time, and once
the server restarted, PostgreSQL itself runs `quankey-backup wal-push %p` AS THE postgres OS USER: pg_switch_wal's
segment appears in the bucket; health's wal rule is ok; with the S3 endpoint stopped, archiving fails and health says
so.

The postgres OS user cannot run this test run's venv (its interpreter lives under root's 0700 home), so the engine is
installed as the role installs it: a virtualenv of /usr/bin/python3 under a directory postgres can enter, the pinned
requirements from Molecule's wheelhouse (build/molecule/wheelhouse, `make test-molecule` builds it; or
QUANKEY_WHEELHOUSE), `--no-index`, then this checkout. Without such a wheelhouse the tests skip, saying so."""

import base64
import glob
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hostcommand import ROOT, new_name, run_cli, run_module
from testbed import MotoServer, PostgresCluster

HOST_ID = "walhost"
SYSTEM_PYTHON = "/usr/bin/python3"


def _wheelhouse():
    """A directory of wheels for /usr/bin/python3 (Molecule's), or None."""
    for candidate in (os.environ.get("QUANKEY_WHEELHOUSE"), str(ROOT / "build" / "molecule" / "wheelhouse")):
        if candidate and glob.glob(os.path.join(candidate, "boto3-*.whl")):
            return candidate
    return None


@pytest.fixture(scope="module")
def install_dir():
    """``pg_backup_install_dir`` of an engine the postgres OS user can run: ``<dir>/venv/bin/quankey-backup``."""
    wheels = _wheelhouse()
    if wheels is None:
        pytest.skip("no wheelhouse for %s (build/molecule/wheelhouse: `make test-molecule` builds it, or set "
                    "QUANKEY_WHEELHOUSE): the postgres OS user cannot run this venv, and these tests install the engine "
                    "as the role does, without a package index" % SYSTEM_PYTHON)
    if os.geteuid() != 0:
        pytest.skip("archive_command runs as the postgres OS user: these tests need root to set that up")
    base = Path(tempfile.mkdtemp(prefix="quankey-walrole-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)  # the postgres user enters it, as it does /opt/quankey-backup
        source = base / "src"  # what the role unpacks into <install dir>/src: pip builds there, not in the checkout
        shutil.copytree(ROOT / "plugins" / "module_utils", source / "plugins" / "module_utils",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "requirements.txt", "constraints.txt"):
            shutil.copy(ROOT / name, source / name)
        venv = base / "venv"
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
               "--find-links", wheels]
        for command in ([SYSTEM_PYTHON, "-m", "venv", str(venv)],
                        pip + ["-r", str(source / "requirements.txt"), "-c", str(source / "constraints.txt"),
                               "setuptools>=77"],
                        pip + ["--no-deps", "--no-build-isolation", str(source)]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=str(base))
            assert done.returncode == 0, "%s failed: %s%s" % (command, done.stdout, done.stderr)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


class PeerCluster(PostgresCluster):
    """A throwaway cluster (archive_mode off) that also lets the postgres OS user in over its socket by peer
    authentication, as Debian's clusters do: the role's psql connects that way, and so does the scheduled base
    backup's replication connection (`local replication`, which `all` does not match)."""

    REPLICATION = "local replication postgres peer\n"

    def _configure(self):
        super()._configure()
        hba = self.datadir / "pg_hba.conf"
        hba.write_text("local all postgres peer\n" + self.REPLICATION + hba.read_text(encoding="utf-8"), encoding="utf-8")

    def without_replication_line(self):
        """pg_hba.conf without the `local replication` line, reloaded; returns what puts it back."""
        hba = self.datadir / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8")
        hba.write_text(text.replace(self.REPLICATION, ""), encoding="utf-8")
        self.psql("SELECT pg_reload_conf()")

        def restore():
            hba.write_text(text, encoding="utf-8")
            self.psql("SELECT pg_reload_conf()")
        return restore

    def restart(self):
        done = self._pg_ctl("restart", "-w", "-t", "60", "-m", "fast", "-l", str(self.logfile))
        assert done.returncode == 0, done.stderr

    def setting(self, name):
        return self.psql("SHOW %s" % name).strip()

    def archiver(self):
        row = self.psql("SELECT archived_count, failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver")
        archived, failed, last_failed = row.strip().split("|")
        return int(archived), int(failed), last_failed


@pytest.fixture(scope="module")
def services():
    """A cluster and an S3 endpoint of this module's own: a test stops the endpoint."""
    with PeerCluster() as cluster, MotoServer() as moto:
        bucket = new_name("walrole").replace("_", "-")
        moto.create_bucket(bucket)
        yield cluster, moto, bucket


@pytest.fixture(scope="module")
def role_vars(services, install_dir):
    cluster, moto, bucket = services
    return {
        "pg_backup_kind": "physical", "pg_backup_allow_restart": False, "pg_backup_install_dir": str(install_dir),
        "pg_backup_wal_env_file": str(install_dir / "wal.env"), "pg_backup_postgres_socket_dir": str(cluster.socket_dir),
        "pg_backup_db_port": cluster.port, "_pg_backup_client_version": cluster.version,
        "pg_backup_databases": ["postgres"], "pg_backup_db_password": cluster.password,
        "pg_backup_s3_bucket": bucket, "pg_backup_s3_endpoint_url": moto.endpoint_url, "pg_backup_s3_prefix": "fleet",
        "pg_backup_s3_region": moto.region, "pg_backup_aws_access_key_id": moto.access_key,
        "pg_backup_aws_secret_access_key": moto.secret_key, "pg_backup_host_id": HOST_ID,
        "pg_backup_encryption_key": base64.b64encode(os.urandom(32)).decode("ascii"),
        "pg_backup_s3_retry_window_seconds": 2, "pg_backup_wal_max_lag_minutes": 30, "pg_backup_metrics_dir": "",
        "ansible_python_interpreter": sys.executable,
    }


def _play(tmp_path, role_vars):
    """The role's WAL archiving tasks on localhost, as setup_backups.yml's play runs them; ``(tasks by name, rc)``."""
    playbook = tmp_path / "wal.yml"
    playbook.write_text(json.dumps([{
        "name": "WAL archiving", "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "The role's WAL archiving", "ansible.builtin.include_role": {
            "name": "quankey.backup.pg_backup", "tasks_from": "wal_archiving"}}]}]), encoding="utf-8")
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(role_vars), encoding="utf-8")
    report, rc = run_module(tmp_path, "ansible-playbook", "-e", "@%s" % extra, str(playbook), whole=True)
    tasks = dict((task["task"]["name"].split(" : ", 1)[-1], task["hosts"]["localhost"]) for task in report["plays"][0]["tasks"]
                 if "localhost" in task["hosts"])
    return tasks, rc, report


def _objects(moto, bucket, prefix):
    listing = moto.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def _wait(what, check, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError("waited %d s for %s" % (seconds, what))


def _health(cluster, moto, bucket):
    env = {"DB_HOST": cluster.host, "DB_PORT": str(cluster.port), "DB_USER": cluster.user, "DB_NAME": "postgres",
           "PGPASSWORD": cluster.password, "AWS_ACCESS_KEY_ID": moto.access_key, "AWS_SECRET_ACCESS_KEY": moto.secret_key,
           "AWS_DEFAULT_REGION": moto.region, "S3_BUCKET": bucket, "S3_ENDPOINT_URL": moto.endpoint_url,
           "S3_PREFIX": "fleet", "BACKUP_HOST_ID": HOST_ID, "WAL_ARCHIVING": "true", "WAL_MAX_LAG_MINUTES": "30",
           "S3_RETRY_WINDOW_SECONDS": "1", "PG_BIN_DIR": str(cluster.bindir)}
    done = run_cli(env, "health", "--json")
    report = json.loads(done.stdout)
    return report, [finding for finding in report["findings"] if finding["rule"] == "wal"]


def test_the_role_turns_archiving_on_postgres_runs_wal_push_and_health_watches_it(
        services, role_vars, install_dir, tmp_path):
    cluster, moto, bucket = services
    assert cluster.setting("archive_mode") == "off"

    # 1. first run: ALTER SYSTEM, reload; archive_mode needs a restart, which is not allowed: reported, not failed
    tasks, rc, report = _play(tmp_path, role_vars)
    assert rc == 0, json.dumps(report)[-3000:]
    assert tasks["Set archive_mode and archive_command with ALTER SYSTEM, and reload the configuration"]["changed"]
    pending = tasks["Report that a restart of PostgreSQL is pending"]
    assert "RESTART PENDING" in pending["msg"] and "pg_backup_allow_restart=true" in pending["msg"]
    assert tasks["Restart PostgreSQL so that archive_mode takes effect (pg_backup_allow_restart)"].get("skipped")
    expected = "%s -q --env-file %s wal-push %%p" % (install_dir / "venv" / "bin" / "quankey-backup",
                                                     install_dir / "wal.env")
    assert cluster.psql("SELECT setting FROM pg_file_settings WHERE name = 'archive_command' AND error IS NULL "
                        "ORDER BY seqno DESC LIMIT 1").strip() == expected  # in postgresql.auto.conf
    assert cluster.setting("archive_mode") == "off" and cluster.setting("archive_command") == "(disabled)"
    env_file = install_dir / "wal.env"
    info = env_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == pwd.getpwnam("postgres").pw_uid
    text = env_file.read_text(encoding="utf-8")
    assert "PGPASSWORD" not in text and cluster.password not in text
    assert "S3_BUCKET='%s'" % bucket in text and "BACKUP_HOST_ID='%s'" % HOST_ID in text

    # 2. again: nothing to change, the restart still pending
    tasks, rc, report = _play(tmp_path, role_vars)
    assert rc == 0 and not any(task.get("changed") for task in tasks.values()), json.dumps(tasks)[-3000:]
    assert "RESTART PENDING" in tasks["Report that a restart of PostgreSQL is pending"]["msg"]

    # 3. restarted (by the operator): the role has nothing to say any more
    cluster.restart()
    assert cluster.setting("archive_mode") == "on" and cluster.setting("archive_command") == expected
    tasks, rc, report = _play(tmp_path, role_vars)
    assert rc == 0 and not any(task.get("changed") for task in tasks.values())
    assert tasks["Report that a restart of PostgreSQL is pending"].get("skipped")

    # 4. PostgreSQL runs archive_command as the postgres OS user: the segment pg_switch_wal completes is archived
    # (the segment is the insert position's: the test bed runs with synchronous_commit off, so the write position,
    # pg_current_wal_lsn, may still stand at the previous segment's end after a commit)
    cluster.psql("CREATE TABLE ledger (id serial PRIMARY KEY, note text)")
    cluster.psql("INSERT INTO ledger (note) SELECT 'row ' || g FROM generate_series(1, 5000) g")
    segment = cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").strip()
    cluster.psql("SELECT pg_switch_wal()")
    key = "fleet/wal/%s/%s/%s" % (HOST_ID, segment[:8], segment)
    _wait("%s in the bucket" % key, lambda: key in _objects(moto, bucket, "fleet/wal/"))
    archived, failed, _last = _wait("pg_stat_archiver to count it", lambda: cluster.archiver()[0] >= 1 and cluster.archiver())
    assert failed == 0, cluster.logfile.read_text(encoding="utf-8")[-3000:]
    stored = moto.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored[:4] == b"QKWL"  # the engine's signed, encrypted WAL object, not a copy

    report, wal = _health(cluster, moto, bucket)
    assert wal == [], report["findings"]
    assert report["wal"]["newest_segment"] == segment and report["wal"]["failed_count"] == 0
    assert report["wal"]["newest_age_seconds"] < 120

    # 5. the endpoint gone: the next segment's push fails, PostgreSQL counts it, and health says archiving is failing
    moto.stop()
    try:
        cluster.psql("INSERT INTO ledger (note) SELECT 'more ' || g FROM generate_series(1, 5000) g")
        failing = cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").strip()
        cluster.psql("SELECT pg_switch_wal()")
        _wait("a failed push", lambda: cluster.archiver()[1] >= 1, seconds=90)
        assert cluster.archiver()[2] == failing
        report, wal = _health(cluster, moto, bucket)
        assert report["status"] == "critical"
        assert [finding["severity"] for finding in wal] == ["critical"], report["findings"]
        assert "WAL archiving is failing" in wal[0]["message"] and failing in wal[0]["message"]
        assert any(finding["rule"] == "s3_access" for finding in report["findings"])
        assert "wal-push" in cluster.logfile.read_text(encoding="utf-8")  # its ERROR lines are in the server's log
    finally:
        moto.start()  # the fixture stops what it started


def test_an_engine_the_postgres_user_cannot_run_fails_the_play_before_anything_is_set(
        role_vars, install_dir, services, tmp_path):
    cluster = services[0]
    before = cluster.psql("SELECT count(*) FROM pg_file_settings").strip()
    os.chmod(install_dir, 0o700)  # root's alone, as a venv under /root is
    try:
        tasks, rc, report = _play(tmp_path, role_vars)
    finally:
        os.chmod(install_dir, 0o755)
    assert rc != 0, json.dumps(report)[-2000:]
    failed = tasks["Fail unless the server's OS user can run the engine and read its settings"]
    assert failed.get("failed") and "postgres cannot run %s" % (install_dir / "venv" / "bin" / "quankey-backup") in failed["msg"]
    assert "Permission denied" in failed["msg"] and "check the modes of %s" % install_dir in failed["msg"]
    assert cluster.psql("SELECT count(*) FROM pg_file_settings").strip() == before


def test_a_base_backup_that_could_not_connect_fails_the_play_naming_the_pg_hba_line(role_vars, services, tmp_path):
    cluster = services[0]
    restore = cluster.without_replication_line()
    try:
        tasks, rc, report = _play(tmp_path, role_vars)  # pg_backup_base_schedule: weekly, the default
        assert rc != 0, json.dumps(report)[-2000:]
        failed = tasks["Fail unless the scheduled base backup can connect"]
        message = " ".join(failed["msg"].split())
        assert failed.get("failed") and "postgres cannot open a replication connection to PostgreSQL" in message
        assert "pg_hba.conf" in message and "`local replication postgres peer`" in message, message
        # no base backup scheduled (kind both: physical refuses pg_backup_base_schedule none in preflight.yml):
        # nothing needs that connection
        tasks, rc, report = _play(tmp_path, dict(role_vars, pg_backup_kind="both", pg_backup_base_schedule="none"))
        assert rc == 0, json.dumps(report)[-2000:]
        assert tasks["Fail unless the scheduled base backup can connect"]["msg"] == "All assertions passed"
    finally:
        restore()
    tasks, rc, report = _play(tmp_path, role_vars)
    assert rc == 0 and tasks["Fail unless the scheduled base backup can connect"]["msg"] == "All assertions passed"
