"""The test bed itself: real PostgreSQL with password auth, real S3 (moto), and nothing left behind."""

import base64
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from testbed import MotoServer, PostgresCluster, port_is_open, write_env_file

TESTBED_CLI = Path(__file__).resolve().parents[1] / "testbed.py"


def _psql(cluster, password, *args):
    """Run psql against cluster with the given password (None: no password at all)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(PGUSER=cluster.user, PGPASSFILE=os.devnull)
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run([str(cluster.bindir / "psql"), "-X", "-At", "-d", "postgres", *args, "-c", "SELECT 1"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("where", ["tcp", "socket"])
def test_postgres_requires_the_password(pg_cluster, where):
    """Only the right password gets in, over TCP and over the Unix socket alike."""
    host = ["-h", pg_cluster.host, "-p", str(pg_cluster.port)] if where == "tcp" else ["-h", str(pg_cluster.socket_dir), "-p", str(pg_cluster.port)]

    wrong = _psql(pg_cluster, "not-the-password", *host)
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr

    missing = _psql(pg_cluster, None, *host)
    assert missing.returncode != 0
    assert "no password supplied" in missing.stderr

    right = _psql(pg_cluster, pg_cluster.password, *host)
    assert right.returncode == 0, right.stderr
    assert right.stdout.strip() == "1"


def test_postgres_database_and_table(pg_cluster):
    """create_database/psql/drop_database work and psql errors carry the server's message."""
    pg_cluster.create_database("testbed_check")
    try:
        pg_cluster.psql("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'a'), (2, 'b')", db="testbed_check")
        assert pg_cluster.psql("SELECT count(*), string_agg(note, ',' ORDER BY id) FROM t", db="testbed_check") == "2|a,b\n"
        with pytest.raises(RuntimeError, match="does not exist"):
            pg_cluster.psql("SELECT * FROM no_such_table", db="testbed_check")
    finally:
        pg_cluster.drop_database("testbed_check")
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'testbed_check'") == "0\n"


def test_postgres_settings_for_tests(pg_cluster):
    """The cluster listens on loopback only and trades durability for speed."""
    settings = pg_cluster.psql("SELECT current_setting('listen_addresses'), current_setting('fsync'), "
                               "current_setting('synchronous_commit'), current_setting('full_page_writes')")
    assert settings == "127.0.0.1|off|off|off\n"


def test_moto_put_and_get(moto):
    """A bucket and an object round-trip through boto3 against moto_server."""
    s3 = moto.client("s3")
    moto.create_bucket("testbed-put-get")
    s3.put_object(Bucket="testbed-put-get", Key="backups/hello.txt", Body=b"hello backup")
    assert s3.get_object(Bucket="testbed-put-get", Key="backups/hello.txt")["Body"].read() == b"hello backup"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="testbed-put-get")["Contents"]] == ["backups/hello.txt"]


def test_testbed_backup_env(testbed):
    """backup_env names the seed's variables and they reach the real services."""
    env = testbed.backup_env("some_db")
    assert set(env) == {"DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                        "AWS_DEFAULT_REGION", "S3_BUCKET", "S3_ENDPOINT_URL", "BACKUP_ENCRYPTION_KEY", "BACKUP_RETENTION_DAYS"}
    assert env["DB_NAME"] == "some_db" and env["BACKUP_RETENTION_DAYS"] == "30"
    assert len(base64.b64decode(env["BACKUP_ENCRYPTION_KEY"], validate=True)) == 32
    assert testbed.backup_env("other")["BACKUP_ENCRYPTION_KEY"] == env["BACKUP_ENCRYPTION_KEY"]
    assert port_is_open(int(env["DB_PORT"]), env["DB_HOST"])
    testbed.moto.client("s3").head_bucket(Bucket=env["S3_BUCKET"])


def test_write_env_file_is_private_and_shell_quoted(tmp_path):
    """The env file is 0600 (even when it existed with wider modes) and parses back with shell rules."""
    path = tmp_path / "backup.env"
    path.write_text("OLD=1\n", encoding="utf-8")
    path.chmod(0o644)
    env = {"PLAIN": "abc", "SPACES": "a b  c", "QUOTE": "it's $HOME `x`", "EMPTY": ""}
    write_env_file(path, env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    parsed = dict(shlex.split(line)[0].split("=", 1) for line in path.read_text(encoding="utf-8").splitlines())
    assert parsed == env


def test_moto_enforces_iam_after_the_free_requests():
    """With initial_no_auth_action_count, waiting for the server uses none of the free requests."""
    with MotoServer(initial_no_auth_action_count=1) as server:
        server.create_bucket("testbed-iam")  # the one free request
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            server.client("s3").list_objects_v2(Bucket="testbed-iam")


def test_stop_leaves_nothing_behind():
    """After stop() the ports are closed and the temp dirs are gone; stop() twice is fine."""
    cluster, server = PostgresCluster().start(), MotoServer().start()
    dirs, ports = [cluster.tmpdir, server.tmpdir], [cluster.port, server.port]
    assert all(Path(d).is_dir() for d in dirs) and all(port_is_open(p) for p in ports)
    for service in (cluster, server):
        service.stop()
        service.stop()
    assert not any(Path(d).exists() for d in dirs)
    assert not any(port_is_open(p) for p in ports)


def test_cli_run_passes_env_and_exit_status(tmp_path):
    """`testbed.py run -- CMD` gives CMD the backup environment, returns its status and tears down."""
    report = tmp_path / "seen"
    script = ("import os, sys; keys = ('DB_PORT', 'DB_NAME', 'S3_ENDPOINT_URL', 'S3_BUCKET');"
              f"open({str(report)!r}, 'w').write(' '.join(os.environ[k] for k in keys)); sys.exit(7)")
    done = subprocess.run([sys.executable, str(TESTBED_CLI), "run", "--db", "cli_db", "--", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 7, done.stderr
    db_port, db_name, endpoint, bucket = report.read_text(encoding="utf-8").split()
    assert (db_name, bucket) == ("cli_db", "quankey-backups-test")
    assert not port_is_open(int(db_port))
    assert not port_is_open(int(endpoint.rsplit(":", 1)[1]))


def test_services_left_running_are_stopped_at_exit():
    """A script that starts services and dies of an exception leaves no server and no temp dir."""
    script = (f"import sys; sys.path.insert(0, {str(TESTBED_CLI.parent)!r}); import testbed;"
              "c = testbed.PostgresCluster().start(); m = testbed.MotoServer().start();"
              "print(c.port, c.tmpdir, m.port, m.tmpdir, flush=True); raise RuntimeError('boom')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "RuntimeError: boom" in done.stderr, done.stderr
    pg_port, pg_dir, moto_port, moto_dir = done.stdout.split()
    assert not port_is_open(int(pg_port)) and not port_is_open(int(moto_port))
    assert not Path(pg_dir).exists() and not Path(moto_dir).exists()


def test_cli_ctrl_c_tears_everything_down(tmp_path):
    """Ctrl-C (SIGINT to the whole process group) while CMD runs: exit 130, nothing left running."""
    report = tmp_path / "seen"
    command = f"import os, time; open({str(report)!r}, 'w').write(os.environ['DB_PORT'] + ' ' + os.environ['S3_ENDPOINT_URL']); time.sleep(60)"
    # a caught signal is reset to default across exec: this undoes a SIGINT ignored by whoever started pytest
    launcher = "import os, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); os.execv(sys.executable, sys.argv[1:])"
    with subprocess.Popen([sys.executable, "-c", launcher, sys.executable, str(TESTBED_CLI), "run", "--", sys.executable, "-c", command],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) as cli:
        deadline = time.monotonic() + 60
        while not (report.exists() and report.read_text(encoding="utf-8")) and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.1)
        os.killpg(cli.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        assert cli.wait(timeout=60) == 130
    db_port, endpoint = report.read_text(encoding="utf-8").split()
    assert not port_is_open(int(db_port))
    assert not port_is_open(int(endpoint.rsplit(":", 1)[1]))
