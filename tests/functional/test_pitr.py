# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18 items 4 and 7 on the real test bed: `quankey-backup restore --pitr`.

A cluster of its own archives its WAL (archive_command copies each file into a staging directory, which the tests
push with `quankey-backup wal-push`, as test_wal.py does: the postgres OS user cannot run this venv). A base backup
is taken, then rows are committed at known times. PITR to a moment between two commits gives exactly the rows
committed before it; the promoted cluster (timeline 2) takes new rows and archives them, and a second PITR from the
same base backup follows timeline 2; pausing at a WAL location leaves the server running, paused, with the rows up to
there; a segment missing in the middle of the archive stops recovery with a message naming it, and nothing is
promoted; a data directory that is not empty is refused before anything is written."""

import json
import os
import re
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from hostcommand import CLI, new_name, run_cli
from testbed import ArchivingCluster, PostgresCluster, free_port

HOST = "pitrhost"


def _owner():
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _new_dir(prefix):
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if _owner():
        os.chown(path, *_owner())
    return path


class Archive:
    """The cluster, its staging directory, the env of the host command, and what was pushed."""

    def __init__(self, cluster, staging, env):
        self.cluster = cluster
        self.staging = staging
        self.env = env
        self.pushed = set()

    def push(self):
        """wal-push every file the cluster (or a restored one) archived into staging, in order."""
        for name in sorted(os.listdir(self.staging)):
            if name.endswith(".tmp") or name in self.pushed:
                continue
            run_cli(self.env, "wal-push", str(self.staging / name), check=0)
            self.pushed.add(name)

    def switch_and_push(self, cluster=None):
        cluster = cluster or self.cluster
        name = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        deadline = time.monotonic() + 60
        while not (self.staging / name).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (self.staging / name).exists(), "%s was not archived: %s" % (name, os.listdir(self.staging))
        self.push()

    def now(self):
        return self.cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                                 "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").strip()


@pytest.fixture(scope="module")
def archive(testbed):
    staging = _new_dir("quankey-pitr-staging-")
    try:
        with ArchivingCluster(staging) as cluster:
            env = dict(testbed.backup_env("postgres"), DB_HOST=cluster.host, DB_PORT=str(cluster.port),
                       DB_USER=cluster.user, PGPASSWORD=cluster.password, S3_PREFIX=new_name("pitr") + "/",
                       BACKUP_HOST_ID=HOST, S3_RETRY_WINDOW_SECONDS="5")
            bed = Archive(cluster, staging, env)
            cluster.psql("CREATE TABLE ledger (id int PRIMARY KEY, batch text NOT NULL)")
            cluster.psql("INSERT INTO ledger SELECT g, 'before-base' FROM generate_series(1, 50) g")
            taken = json.loads(run_cli(env, "basebackup", "--fast", "--json", check=0).stdout)
            bed.base = taken["name"]
            time.sleep(1.2)  # the base backup's recorded end (start + duration, whole seconds) is before what follows
            cluster.psql("INSERT INTO ledger SELECT g, 'one' FROM generate_series(51, 100) g")
            cluster.psql("SELECT pg_create_restore_point('after-one')")
            time.sleep(0.5)
            bed.between = bed.now()  # after batch one's commit, before batch two's
            time.sleep(0.5)
            cluster.psql("INSERT INTO ledger SELECT g, 'two' FROM generate_series(101, 150) g")
            bed.lsn_after_two = cluster.psql("SELECT pg_current_wal_insert_lsn()").strip()  # synchronous_commit off
            cluster.psql("INSERT INTO ledger SELECT g, 'three' FROM generate_series(151, 200) g")
            bed.switch_and_push()
            yield bed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _restore(env, data_dir, *args, check=0):
    return run_cli(env, "restore", "--pitr", "--data-dir", str(data_dir), "--json", "--timeout", "150", *args,
                   check=check)


class Restored:
    """A restored data directory started again, as its service would, on a port and socket of the test's."""

    def __init__(self, data_dir, password):
        self.data_dir = data_dir
        self.password = password
        self.port = free_port()
        self.sockets = _new_dir("quankey-pitr-sock-")

    def _as_postgres(self, argv):
        return ["runuser", "-u", "postgres", "--"] + argv if _owner() else argv

    def start(self):
        bindir = PostgresCluster().bindir
        options = "-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s" % (self.port, self.sockets)
        done = subprocess.run(self._as_postgres([str(bindir / "pg_ctl"), "start", "-w", "-t", "120", "-D",
                                                 str(self.data_dir), "-l", str(self.sockets / "log"), "-o", options]),
                              capture_output=True, text=True, check=False, start_new_session=True)
        log = (self.sockets / "log").read_text() if (self.sockets / "log").exists() else ""
        assert done.returncode == 0, done.stderr + log
        self.bindir = bindir
        return self

    def psql(self, sql):
        done = subprocess.run([str(self.bindir / "psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                               "postgres", "-d", "postgres", "-c", sql],
                              env={"PATH": os.environ["PATH"], "PGPASSWORD": self.password}, capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def stop(self):
        subprocess.run(self._as_postgres([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast",
                                          "-w"]), capture_output=True, check=False)
        shutil.rmtree(self.sockets, ignore_errors=True)


def _batches(query):
    rows = query("SELECT batch, count(*) FROM ledger GROUP BY batch ORDER BY min(id)")
    return [tuple(line.split("|")) for line in rows.splitlines()]


def test_pitr_to_a_time_between_two_commits_then_again_on_the_new_timeline(archive, tmp_path):
    data_dir = _new_dir("quankey-pitr-data-")
    second = _new_dir("quankey-pitr-data-")
    try:
        result = json.loads(_restore(archive.env, data_dir, "--target-time", archive.between).stdout)
        assert result["base_backup"] == archive.base and result["manifest_ok"] and result["trusted"]
        assert result["reached"]["state"] == "promoted" and not result["running"]
        assert result["timeline"] == 2 and result["wal_files_restored"] >= 1
        assert result["last_replayed_commit"] <= archive.between.replace("T", "T")
        assert not (data_dir / "recovery.signal").exists() and (data_dir / "backup_label.old").exists()
        stat = os.stat(data_dir / "PG_VERSION")
        if _owner():
            assert (stat.st_uid, stat.st_gid) == _owner()
        assert oct(os.stat(data_dir).st_mode & 0o777) == "0o700"

        restored = Restored(data_dir, archive.cluster.password).start()
        try:
            assert _batches(restored.psql) == [("before-base", "50"), ("one", "50")]  # not two, not three
            assert restored.psql("SELECT pg_is_in_recovery()") == "f"
            restored.psql("INSERT INTO ledger SELECT g, 'after-pitr' FROM generate_series(1001, 1010) g")
            name = restored.psql("SELECT pg_walfile_name(pg_switch_wal())")
            assert name.startswith("00000002")
            deadline = time.monotonic() + 60
            while not (archive.staging / name).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            restored.stop()
        assert (archive.staging / "00000002.history").exists()  # the promotion's history, archived by the server
        archive.push()

        # the same base backup (timeline 1), the archive's end: recovery follows timeline 2's history
        again = json.loads(_restore(archive.env, second, "--no-archive").stdout)
        assert again["base_backup"] == archive.base and again["timeline"] == 3
        restored = Restored(second, archive.cluster.password).start()
        try:
            assert _batches(restored.psql) == [("before-base", "50"), ("one", "50"), ("after-pitr", "10")]
        finally:
            restored.stop()
    finally:
        for path in (data_dir, second):
            shutil.rmtree(path, ignore_errors=True)


def test_pause_at_a_wal_location_leaves_the_server_running_paused(archive):
    data_dir = _new_dir("quankey-pitr-data-")
    result = None
    try:
        result = json.loads(_restore(archive.env, data_dir, "--target-lsn", archive.lsn_after_two, "--target-action",
                                     "pause", "--no-archive", "--target-timeline", "1").stdout)
        assert result["running"] and result["reached"]["state"] == "paused"
        bindir = PostgresCluster().bindir
        done = subprocess.run([str(bindir / "psql"), "-X", "-At", "-h", result["socket_dir"], "-p", str(result["port"]),
                               "-U", "postgres", "-d", "postgres", "-c",
                               "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state(), "
                               "string_agg(DISTINCT batch, ',' ORDER BY batch) FROM ledger"],
                              capture_output=True, text=True, check=False)
        assert done.stdout.strip() == "t|paused|before-base,one,two", done.stderr
    finally:
        if result is not None and result.get("running"):
            bindir = PostgresCluster().bindir
            argv = [str(bindir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w"]
            subprocess.run((["runuser", "-u", "postgres", "--"] if _owner() else []) + argv, capture_output=True,
                           check=False)
            shutil.rmtree(result["socket_dir"], ignore_errors=True)
            shutil.rmtree(result["spool_dir"], ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_pitr_to_a_restore_point(archive):
    data_dir = _new_dir("quankey-pitr-data-")
    try:
        result = json.loads(_restore(archive.env, data_dir, "--target-name", "after-one", "--no-archive").stdout)
        assert result["target"] == {"kind": "name", "value": "after-one", "inclusive": True, "timeline": "latest"}
        assert any("recovery stopping at restore point \"after-one\"" in line for line in result["recovery_log"])
        restored = Restored(data_dir, archive.cluster.password).start()
        try:
            assert _batches(restored.psql) == [("before-base", "50"), ("one", "50")]
        finally:
            restored.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_segment_missing_in_the_middle_stops_recovery_naming_it(archive, testbed):
    s3 = testbed.moto.client()
    bucket, prefix = archive.env["S3_BUCKET"], archive.env["S3_PREFIX"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="%swal/%s/00000001/" % (prefix, HOST))["Contents"]
    segments = sorted(item["Key"] for item in listed if len(item["Key"].rsplit("/", 1)[1]) == 24)
    assert len(segments) >= 3
    hidden = segments[1]  # after the base backup's first segment, before the archive's end
    name = hidden.rsplit("/", 1)[1]
    s3.copy_object(Bucket=bucket, Key=hidden + ".hidden", CopySource={"Bucket": bucket, "Key": hidden})
    s3.delete_object(Bucket=bucket, Key=hidden)
    data_dir = _new_dir("quankey-pitr-data-")
    try:
        failed = _restore(archive.env, data_dir, "--target-timeline", "1", "--no-archive", check=None)
        assert failed.returncode != 0
        assert "WAL segment %s is MISSING from the archive" % name in failed.stderr, failed.stderr
        assert "Nothing was promoted" in failed.stderr
        assert (data_dir / "recovery.signal").exists()  # a start without us cannot promote it by mistake
    finally:
        s3.copy_object(Bucket=bucket, Key=hidden, CopySource={"Bucket": bucket, "Key": hidden + ".hidden"})
        s3.delete_object(Bucket=bucket, Key=hidden + ".hidden")
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_data_directory_that_is_not_empty_is_refused_before_anything_is_written(archive, tmp_path):
    (tmp_path / "PG_VERSION").write_text("15\n")
    refused = _restore(archive.env, tmp_path, check=8)
    assert "is not empty (it holds PG_VERSION)" in refused.stderr and "never writes over a data directory" in refused.stderr
    assert sorted(os.listdir(tmp_path)) == ["PG_VERSION"]
    two_targets = _restore(archive.env, tmp_path / "new", "--target-time", archive.between, "--target-lsn", "0/1",
                           check=3)
    assert "give one recovery target" in two_targets.stderr
    assert not (tmp_path / "new").exists()


def test_a_db_user_the_restored_cluster_lacks_fails_at_once_instead_of_waiting_for_the_timeout(archive):
    """The server answers, but as a role it does not have: waiting would last --timeout (6 h by default)."""
    data_dir = _new_dir("quankey-pitr-data-")
    try:
        failed = _restore(dict(archive.env, DB_USER="no_such_role"), data_dir, "--target-name", "after-one",
                          "--no-archive", check=None)
        assert failed.returncode != 0
        assert "not as role 'no_such_role', which does not exist in the restored cluster" in failed.stderr, failed.stderr
        assert "set DB_USER" in failed.stderr and "Nothing was promoted" in failed.stderr
        assert "did not reach" not in failed.stderr  # not the timeout's message
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_point_in_time_drill_recovers_a_scratch_copy_proves_it_and_stores_its_report(archive, testbed):
    tmp_path = _new_dir("quankey-pitr-scratch-")  # the postgres OS user reaches the scratch data directory under it
    done = run_cli(archive.env, "drill", "--pitr", "--target-time", archive.between, "--scratch-dir", str(tmp_path),
                   "--json", check=0)
    drilled = json.loads(done.stdout)
    assert drilled["status"] == "passed"
    report = drilled["drills"][0]
    assert report["database"] == "@cluster" and report["backup"] == archive.base and report["result"] == "passed"
    assert {check["name"] for check in report["checks"]} >= {"base_backup", "signature", "recovery", "consistency"}
    assert all(check["ok"] for check in report["checks"]) and report["rto_seconds"] > 0 and report["rpo_seconds"] > 0
    assert os.listdir(tmp_path) == []  # the scratch data directory is gone
    stored = testbed.moto.client().get_object(Bucket=archive.env["S3_BUCKET"], Key=report["report_key"])
    document = json.loads(stored["Body"].read())
    assert report["report_key"].startswith("%sdrills/%s/@cluster/" % (archive.env["S3_PREFIX"], HOST))
    assert document["result"] == "passed" and document["signature"]["key_id"]

    # a target before every base backup: a failed drill, reported as such (exit 2), nothing left behind
    failed = run_cli(archive.env, "drill", "--pitr", "--target-time", "2001-01-01T00:00:00Z", "--scratch-dir",
                     str(tmp_path), "--json", check=2)
    report = json.loads(failed.stdout)["drills"][0]
    assert report["result"] == "failed" and "no base backup ended before" in report["error"]
    assert os.listdir(tmp_path) == []
    shutil.rmtree(tmp_path)


def test_a_data_directory_the_servers_user_cannot_reach_is_refused_before_the_download(archive, tmp_path):
    if not _owner():
        pytest.skip("only root restores for another OS user")
    refused = _restore(archive.env, tmp_path / "data", check=3)  # pytest's tmp_path is under a 0700 directory
    assert "the OS user postgres cannot reach --data-dir" in refused.stderr
    assert not (tmp_path / "data").exists()


def test_pitr_rides_out_a_cut_download_and_throttled_wal_reads(archive, testbed):
    data_dir = _new_dir("quankey-pitr-data-")
    try:
        with FaultProxy(testbed.moto.endpoint_url) as proxy:
            env = dict(archive.env, S3_ENDPOINT_URL=proxy.endpoint_url, S3_RETRY_WINDOW_SECONDS="60")
            cut = proxy.reset_body(256 * 1024, method="GET", path="/base/%s/" % HOST)  # the base backup, cut once
            slow = proxy.fail(503, "SlowDown", count=3, method="GET", path="/wal/%s/" % HOST)  # WAL reads throttled
            result = json.loads(_restore(env, data_dir, "--target-time", archive.between, "--no-archive").stdout)
            assert cut.hits == 1 and slow.hits == 3
        assert result["reached"]["state"] == "promoted"
        restored = Restored(data_dir, archive.cluster.password).start()
        try:
            assert _batches(restored.psql) == [("before-base", "50"), ("one", "50")]
        finally:
            restored.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_restore_killed_during_recovery_never_leaves_a_promoted_cluster(archive, testbed):
    parent = _new_dir("quankey-pitr-killed-")  # its own: the spool the killed restore leaves goes beside data_dir
    data_dir = parent / "data"
    try:
        with FaultProxy(testbed.moto.endpoint_url) as proxy:
            env = dict(archive.env, S3_ENDPOINT_URL=proxy.endpoint_url, S3_RETRY_WINDOW_SECONDS="60",
                       WAL_PREFETCH="0")
            proxy.stall(30, method="GET", path="/wal/%s/0" % HOST)  # every WAL segment read hangs: recovery waits
            full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
            full_env.update(env)
            # the archive's end: a restore that "ran out of WAL" early would promote where it stopped
            restore = subprocess.Popen([CLI, "restore", "--pitr", "--data-dir", str(data_dir), "--no-archive"],
                                       env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 120
            while not (data_dir / "postmaster.pid").exists() and time.monotonic() < deadline:
                assert restore.poll() is None, restore.stderr.read().decode()
                time.sleep(0.2)
            assert (data_dir / "postmaster.pid").exists()
            time.sleep(2)  # the server asked for its first segment and waits on the feeder
            restore.kill()  # as when the on-call engineer's SSH session drops
            restore.wait()
            deadline = time.monotonic() + 60
            while (data_dir / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.3)
        assert not (data_dir / "postmaster.pid").exists(), "the server kept running without its feeder"
        log = (data_dir / "log" / "quankey-restore-pitr.log").read_text()
        assert "no longer running" in log and "selected new timeline ID" not in log  # stopped, never promoted
        assert (data_dir / "recovery.signal").exists()
        bindir = PostgresCluster().bindir
        control = subprocess.run([str(bindir / "pg_controldata"), str(data_dir)], capture_output=True, text=True,
                                 check=False).stdout
        # still timeline 1 (a promotion picks 2); its state is the base backup's own until a restartpoint
        assert re.search(r"Latest checkpoint's TimeLineID:\s+1$", control, re.M), control
    finally:
        bindir = PostgresCluster().bindir
        subprocess.run((["runuser", "-u", "postgres", "--"] if _owner() else []) + [
            str(bindir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w"], capture_output=True,
            check=False)
        shutil.rmtree(parent, ignore_errors=True)  # the data directory and the spool, not another test's
