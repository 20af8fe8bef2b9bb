#!/usr/bin/env python
"""Real services for tests, the demo and benchmarks: a throwaway PostgreSQL cluster and an S3 endpoint.

``PostgresCluster`` runs ``initdb`` + ``pg_ctl`` in a temporary directory with password (SCRAM) auth
on a free loopback port; ``MotoServer`` runs ``moto_server`` (a real S3 HTTP endpoint) on another;
``Testbed`` starts both, creates a bucket and gives the environment a user of ``quankey-backup``
would set. Everything started is stopped again: by the context managers, by ``stop()``, and by an
exit hook for whatever is still running when the interpreter exits.

Command line::

    python tests/testbed.py run [--db NAME] -- CMD ARGS...   # CMD runs with the backup environment
    python tests/testbed.py up --env-file PATH               # keep it up until Ctrl-C or SIGTERM
"""

import argparse
import atexit
import base64
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

DEFAULT_BUCKET = "quankey-backups-test"
DEFAULT_DB = "quankey_test"
LOOPBACK = "127.0.0.1"
SECRET_VARIABLES = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "BACKUP_ENCRYPTION_KEY")

_LIVE = []  # services started and not yet stopped (stopped at interpreter exit)


class TestbedError(RuntimeError):
    """A test bed service could not be found, started or used; the message says why."""

    __test__ = False  # not a pytest test class despite the name


def _stop_all_at_exit():
    """Stop every service this process started and did not stop (atexit hook)."""
    for service in reversed(list(_LIVE)):
        if service.owner_pid == os.getpid():  # never a parent's services in a forked child
            try:
                service.stop()
            except Exception as error:  # pylint: disable=broad-exception-caught
                print(f"testbed: could not stop {service!r}: {error}", file=sys.stderr)


atexit.register(_stop_all_at_exit)


def _tail(path, lines=20):
    """Return the last lines of a log file (or a note that there is none)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _environ_without(*prefixes):
    """Return this process's environment without the variables starting with one of prefixes."""
    return {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}


def find_pg_bindir():
    """Return the newest PostgreSQL server bin directory (with initdb and pg_ctl), or $PG_BINDIR."""
    def has_server(path):
        return all(os.access(path / name, os.X_OK) for name in ("initdb", "pg_ctl", "psql"))

    if os.environ.get("PG_BINDIR"):
        bindir = Path(os.environ["PG_BINDIR"])
        if has_server(bindir):
            return bindir
        raise TestbedError(f"PG_BINDIR={bindir} has no initdb/pg_ctl/psql: point it at a PostgreSQL server's bin directory")
    found = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            version = tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            continue
        if has_server(bindir):
            found.append((version, bindir))
    if not found:
        raise TestbedError("no PostgreSQL server binaries in /usr/lib/postgresql/<N>/bin: run `make setup` "
                           "(or apt-get install postgresql), or set PG_BINDIR")
    return max(found)[1]


def free_port():
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_is_open(port, host=LOOPBACK):
    """Tell whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _quote_identifier(name):
    """Quote an SQL identifier (database name)."""
    return '"' + name.replace('"', '""') + '"'


def _world_traversable(path):
    """Tell whether every directory from / down to path can be entered by any user."""
    path = Path(path).resolve()
    return all(part.stat().st_mode & stat.S_IXOTH for part in (path, *path.parents))


class PostgresCluster:  # pylint: disable=too-many-instance-attributes  # its attributes are what tests read
    """A throwaway PostgreSQL cluster: password (SCRAM) auth, free loopback port, temp dir.

    As root (initdb refuses to run as root) the server runs as the ``postgres`` OS user.
    With ``tls`` (a tests/testca.py TestCA) it is a TLS-only server: see ``_configure_tls``.
    """

    host = LOOPBACK
    user = "postgres"

    def __init__(self, bindir=None, port=None, tls=None, cert_users=()):
        self.bindir = Path(bindir) if bindir else find_pg_bindir()
        self.port = port
        # tls: a tests/testca.py TestCA. The server then takes TCP connections over TLS only (its certificate for
        # localhost and 127.0.0.1, hostssl lines only, hostnossl rejected); cert_users log in by client certificate.
        self.tls = tls
        self.cert_users = tuple(cert_users)
        self.password = secrets.token_urlsafe(24)
        self.tmpdir = self.datadir = self.socket_dir = self.logfile = None
        self.owner_pid = os.getpid()
        self._run_as = None  # (uid, gid) of the postgres OS user when we are root

    def __repr__(self):
        return f"PostgresCluster(port={self.port}, datadir={self.datadir})"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def version(self):
        """The major version, from the bin directory's parent (e.g. "15")."""
        return self.bindir.parent.name

    def start(self):
        """Create and start the cluster (no-op when running); returns self."""
        if self.tmpdir is not None:
            return self
        try:
            self._make_dirs()
            self._initdb()
            self._configure()
            started = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile))
            if started.returncode != 0:
                raise TestbedError(f"pg_ctl start failed on port {self.port} (exit {started.returncode}): "
                                   f"{started.stderr.strip()}\n{_tail(self.logfile)}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Stop the server at once and delete its directory; safe to call twice."""
        if self.tmpdir is None:
            return
        try:
            pidfile = self.datadir / "postmaster.pid"
            if pidfile.exists():
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
            if pidfile.exists():  # pg_ctl could not stop it: make sure no server outlives us
                self._kill_postmaster(pidfile)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
            if self in _LIVE:
                _LIVE.remove(self)

    def env(self):
        """Return the libpq environment for this cluster (PGHOST, PGPORT, PGUSER, PGPASSWORD; for a TLS cluster
        PGSSLMODE=verify-full and PGSSLROOTCERT, its CA)."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGPASSWORD": self.password}
        if self.tls is not None:
            env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(self.tls.cert))
        return env

    def psql(self, sql, db="postgres"):
        """Run SQL with psql (password in the environment only) and return its stdout; raise on failure."""
        command = [str(self.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At", "--dbname", db, "-c", sql]
        done = subprocess.run(command, env={**_environ_without("PG"), **self.env()}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise TestbedError(f"psql on database {db} failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name):
        """Create a database named name."""
        self.psql(f"CREATE DATABASE {_quote_identifier(name)}")

    def drop_database(self, name):
        """Drop the database named name if it exists, disconnecting its sessions."""
        self.psql(f"DROP DATABASE IF EXISTS {_quote_identifier(name)} WITH (FORCE)")

    # -- internals -------------------------------------------------------------------------

    def _make_dirs(self):
        base = None
        if os.geteuid() == 0:
            self._run_as = _postgres_os_user()
            if not _world_traversable(tempfile.gettempdir()):
                base = "/tmp"  # the postgres user must reach the cluster's directory
        self.tmpdir = Path(tempfile.mkdtemp(prefix="quankey-pg-", dir=base))
        _LIVE.append(self)
        self.datadir = self.tmpdir / "data"
        self.socket_dir = self.tmpdir / "sock"
        self.logfile = self.tmpdir / "postgres.log"
        self.socket_dir.mkdir()
        if self._run_as:
            for path in (self.tmpdir, self.socket_dir):
                os.chown(path, *self._run_as)

    def _server_command(self, program, *args):
        command = [str(self.bindir / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self._run_as else command

    def _run_server_tool(self, program, *args):
        return subprocess.run(self._server_command(program, *args), cwd=self.tmpdir, env=_environ_without("PG"),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
                              start_new_session=True)  # the postmaster must not get our terminal's Ctrl-C

    def _pg_ctl(self, action, *args):
        return self._run_server_tool("pg_ctl", action, "-D", str(self.datadir), *args)

    def _initdb(self):
        pwfile = self.tmpdir / "pwfile"
        descriptor = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(self.password + "\n")
        try:
            if self._run_as:
                os.chown(pwfile, *self._run_as)
            done = self._run_server_tool("initdb", "-D", str(self.datadir), "-A", "scram-sha-256", "--pwfile", str(pwfile),
                                         "-U", self.user, "-E", "UTF8", "--locale=C", "--no-sync")
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise TestbedError(f"initdb failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def _configure(self):
        """Append the port, sockets and test-speed settings to postgresql.conf (no shell quoting needed)."""
        self.port = self.port or free_port()
        socket_dir = str(self.socket_dir).replace("'", "''")
        settings = (f"port = {self.port}", f"listen_addresses = '{LOOPBACK}'", f"unix_socket_directories = '{socket_dir}'",
                    "fsync = off", "synchronous_commit = off", "full_page_writes = off")
        if self.tls is not None:
            settings += self._configure_tls()
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# quankey test bed\n" + "\n".join(settings) + "\n")

    def _configure_tls(self):
        """Give the server its certificate (copies it may read: the key mode 0600, its own) and a pg_hba.conf of
        hostssl lines only; returns the postgresql.conf lines that turn TLS on."""
        issued = self.tls.server("pg-server")
        files = {"server.crt": (issued.cert, 0o644), "server.key": (issued.key, 0o600), "root.crt": (self.tls.cert, 0o644)}
        for name, (source, mode) in files.items():
            target = self.datadir / name
            shutil.copyfile(source, target)
            os.chmod(target, mode)
            if self._run_as:
                os.chown(target, *self._run_as)
        lines = ["# quankey test bed: TCP over TLS only",
                 "hostnossl all all 0.0.0.0/0 reject", "hostnossl all all ::/0 reject"]
        lines += [f"hostssl all {user} 127.0.0.1/32 cert" for user in self.cert_users]
        lines += ["hostssl all all 127.0.0.1/32 scram-sha-256", "hostssl all all ::1/128 scram-sha-256"]
        (self.datadir / "pg_hba.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return ("ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'", "ssl_ca_file = 'root.crt'")

    @staticmethod
    def _kill_postmaster(pidfile):
        try:
            pid = int(pidfile.read_text(encoding="utf-8").splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


class ArchivingCluster(PostgresCluster):
    """A throwaway cluster with WAL archiving on: its archive_command copies each completed WAL file into ``staging``
    (a directory the server's OS user may write), under a temporary name, then renamed, so that a listing of
    ``staging`` shows only whole files. Tests then push them with ``quankey-backup wal-push``."""

    def __init__(self, staging, **kwargs):
        super().__init__(**kwargs)
        self.staging = staging

    def _configure(self):
        super()._configure()
        command = "test ! -f {0}/%f && cp %p {0}/%f.tmp && mv {0}/%f.tmp {0}/%f".format(self.staging)
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("archive_mode = on\narchive_command = '%s'\nwal_level = replica\n" % command)


def _postgres_os_user():
    """Return (uid, gid) of the postgres OS user, creating a system user if it is missing."""
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "postgres"], check=True, capture_output=True)
        entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _moto_server_executable():
    """Return moto_server from the running interpreter's bin directory (the venv), else from PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("moto_server")
    if not found:
        raise TestbedError("moto_server not found next to this Python or on PATH: run `make setup` (moto[server])")
    return found


class MotoServer:  # pylint: disable=too-many-instance-attributes  # its attributes are what tests read
    """``moto_server`` on a free loopback port: a real S3 (and IAM, ...) HTTP endpoint, in memory.

    initial_no_auth_action_count=N makes it enforce IAM after its first N requests
    (use those to create the bucket, users, policies and keys).
    """

    host = LOOPBACK
    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self, port=None, initial_no_auth_action_count=None, start_timeout=30.0):
        self.port = port
        self.initial_no_auth_action_count = initial_no_auth_action_count
        self.start_timeout = start_timeout
        self.endpoint_url = self.tmpdir = self.log_path = None
        self.owner_pid = os.getpid()
        self._process = None

    def __repr__(self):
        return f"MotoServer(endpoint_url={self.endpoint_url})"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def start(self):
        """Start moto_server and wait until it answers HTTP (no-op when running); returns self."""
        if self.tmpdir is not None:
            return self
        try:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="quankey-moto-"))
            _LIVE.append(self)
            self.log_path = self.tmpdir / "moto_server.log"
            self.port = self.port or free_port()
            self.endpoint_url = f"http://{self.host}:{self.port}"
            environment = _environ_without("AWS_")
            environment.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                               AWS_DEFAULT_REGION=self.region)
            if self.initial_no_auth_action_count is not None:
                environment["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.initial_no_auth_action_count)
            with open(self.log_path, "wb") as log:
                self._process = subprocess.Popen(  # pylint: disable=consider-using-with  # lives until stop()
                    [_moto_server_executable(), "-H", self.host, "-p", str(self.port)], cwd=self.tmpdir, env=environment,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Terminate moto_server (kill it if it does not exit) and delete its directory; safe to call twice."""
        if self.tmpdir is None:
            return
        try:
            if self._process is not None and self._process.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self._process.wait(timeout=10)
        finally:
            self._process = None
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
            if self in _LIVE:
                _LIVE.remove(self)

    def client(self, service="s3"):
        """Return a boto3 client for service on this endpoint (path-style S3 addressing)."""
        session = boto3.session.Session(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                                        region_name=self.region)
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"})
        return session.client(service, endpoint_url=self.endpoint_url, config=config)

    def create_bucket(self, name, **kwargs):
        """Create a bucket (kwargs go to create_bucket, e.g. ObjectLockEnabledForBucket=True); returns its name."""
        self.client("s3").create_bucket(Bucket=name, **kwargs)
        return name

    def env(self):
        """Return the AWS_* variables and S3_ENDPOINT_URL that point a client at this endpoint."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "S3_ENDPOINT_URL": self.endpoint_url}

    def _signal_group(self, signum):
        try:
            os.killpg(self._process.pid, signum)  # its own session: the group is moto_server and its children
        except ProcessLookupError:
            pass

    def _wait_until_answering(self):
        # /moto-api/ is not an AWS action: polling it uses none of INITIAL_NO_AUTH_ACTION_COUNT
        probe = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TestbedError(f"moto_server exited with {self._process.returncode} on port {self.port}:\n{_tail(self.log_path)}")
            try:
                with probe.open(f"{self.endpoint_url}/moto-api/config", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise TestbedError(f"moto_server did not answer on {self.endpoint_url} within {self.start_timeout:.0f}s:\n{_tail(self.log_path)}")


class Testbed:
    """PostgreSQL and S3 together, with a bucket: what a user of ``quankey-backup`` points it at.

    Pass running pg/moto services to share them (they are then left running by stop()).
    The encryption key is fresh for each test bed and the same for every backup_env() call on it.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, bucket=DEFAULT_BUCKET, pg=None, moto=None, initial_no_auth_action_count=None):
        self.bucket = bucket
        self.pg = pg or PostgresCluster()
        self.moto = moto or MotoServer(initial_no_auth_action_count=initial_no_auth_action_count)
        self._owned = [service for service, given in ((self.pg, pg), (self.moto, moto)) if given is None]
        self.encryption_key = base64.b64encode(os.urandom(32)).decode("ascii")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def start(self):
        """Start PostgreSQL and S3 (unless running) and create the bucket; returns self."""
        try:
            self.pg.start()
            self.moto.start()
            self.moto.create_bucket(self.bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Stop the services this test bed started itself; safe to call twice."""
        try:
            if self.moto in self._owned:
                self.moto.stop()
        finally:
            if self.pg in self._owned:
                self.pg.stop()

    def backup_env(self, db_name):
        """Return the environment a user of the product would set (the seed's variable names) for db_name."""
        return {
            "DB_HOST": self.pg.host,
            "DB_PORT": str(self.pg.port),
            "DB_NAME": db_name,
            "DB_USER": self.pg.user,
            "PGPASSWORD": self.pg.password,
            "AWS_ACCESS_KEY_ID": self.moto.access_key,
            "AWS_SECRET_ACCESS_KEY": self.moto.secret_key,
            "AWS_DEFAULT_REGION": self.moto.region,
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.moto.endpoint_url,
            "BACKUP_ENCRYPTION_KEY": self.encryption_key,
            "BACKUP_RETENTION_DAYS": "30",
        }


def _single_quote(value):
    """Quote value for a shell-style KEY=VALUE parser: '...' with ' written as '\\''."""
    if "\n" in value or "\r" in value:
        raise ValueError("env file values cannot span lines")
    return "'" + value.replace("'", "'\\''") + "'"


def write_env_file(path, env):
    """Write env as KEY='VALUE' lines to path, mode 0600 from the moment the file exists."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its mode on open: tighten it
        handle.writelines(f"{key}={_single_quote(str(value))}\n" for key, value in env.items())


def masked(env):
    """Return env with the values of secret variables replaced by ***."""
    return {key: "***" if key in SECRET_VARIABLES else value for key, value in env.items()}


# -- command line ------------------------------------------------------------------------------

class _Stopped(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP so that teardown runs as for Ctrl-C."""


def _raise_stopped(signum, _frame):
    raise _Stopped(signum)


def _start(args):
    testbed = Testbed(bucket=args.bucket)
    testbed.start()
    if args.db != "postgres":
        testbed.pg.create_database(args.db)
    print(f"testbed: PostgreSQL {testbed.pg.version} at {testbed.pg.host}:{testbed.pg.port}, "
          f"S3 at {testbed.moto.endpoint_url}, bucket {testbed.bucket}, database {args.db}", file=sys.stderr, flush=True)
    return testbed


def _command_run(args):
    """Run CMD with the backup environment; return its exit status (128+N if killed by signal N).

    Like a shell, we wait for CMD to end: Ctrl-C reaches it from the terminal (same process group),
    SIGTERM/SIGHUP sent to us are passed on to it. (Waiting through a KeyboardInterrupt instead can
    lose the child's status: Python may reap it and raise before recording what it reaped.)
    """
    with _start(args) as testbed:
        environment = {**_environ_without("PG", "AWS_"), **testbed.backup_env(args.db)}
        child = None

        def pass_on(signum, _frame):
            if child is None:
                raise _Stopped(signum)
            if signum != signal.SIGINT:
                child.send_signal(signum)

        previous = {signum: signal.signal(signum, pass_on) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            child = subprocess.Popen(args.cmd, env=environment)  # pylint: disable=consider-using-with  # waited below
            status = child.wait()
        except OSError as error:
            print(f"testbed: cannot run {args.cmd[0]}: {error}", file=sys.stderr)
            return 127
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 128 - status if status < 0 else status


def _command_up(args):
    """Keep the test bed up, its environment in an env file, until Ctrl-C or SIGTERM."""
    env_file = Path(args.env_file)
    with _start(args) as testbed:
        environment = testbed.backup_env(args.db)
        write_env_file(env_file, environment)
        try:
            print(f"# written to {env_file} (mode 0600; secrets shown as ***)")
            for key, value in masked(environment).items():
                print(f"{key}={value}")
            print("# Ctrl-C or SIGTERM stops the test bed and deletes the env file", flush=True)
            while True:
                signal.pause()
        except (KeyboardInterrupt, _Stopped):
            return 0
        finally:
            env_file.unlink(missing_ok=True)  # its credentials die with the test bed


def main(argv=None):
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="testbed.py", description="Real PostgreSQL and S3 (moto) for tests and demos.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the test bed, run CMD with the backup environment, stop it; exit with CMD's status")
    run.add_argument("cmd", nargs="+", metavar="-- CMD", help="the command and its arguments, after --")
    up = commands.add_parser("up", help="start the test bed, write its environment to an env file, wait for Ctrl-C/SIGTERM")
    up.add_argument("--env-file", required=True, help="where to write the KEY='VALUE' environment (mode 0600)")
    for command in (run, up):
        command.add_argument("--db", default=DEFAULT_DB, help=f"database to create and name in DB_NAME (default {DEFAULT_DB})")
        command.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"bucket to create (default {DEFAULT_BUCKET})")
    args = parser.parse_args(argv)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    try:
        return _command_run(args) if args.command == "run" else _command_up(args)
    except TestbedError as error:
        print(f"testbed: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stopped) as stop:
        return 128 + (stop.args[0] if isinstance(stop, _Stopped) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
