#!/usr/bin/env python
"""`make bench` / `make bench-smoke`: quankey-backup against raw pg_dump, the seed's pipeline, pgBackRest, barman-cloud.

One run, one machine, one PostgreSQL cluster and one S3 endpoint (moto_server on loopback, from
tests/testbed.py), every method repeated and interleaved (rep 1: a b c d, rep 2: a b c d, ...)
so drift hits all alike; medians are reported. See docs/benchmarks.md for what each method is.

    .venv/bin/python bench/run.py                  # full: ~1 GB database, 3 repetitions -> docs/benchmarks.md
                                                   #   and its chart docs/images/benchmarks.png
    .venv/bin/python bench/run.py --smoke          # tiny, < 1 minute, for CI -> build/bench/smoke/
    .venv/bin/python bench/run.py --size 500M --flat-size 2G --repeat 5
"""

import argparse
import datetime
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import barman  # noqa: E402  pylint: disable=wrong-import-position
import datagen  # noqa: E402  pylint: disable=wrong-import-position
import fleet  # noqa: E402  pylint: disable=wrong-import-position
import measure  # noqa: E402  pylint: disable=wrong-import-position
import report  # noqa: E402  pylint: disable=wrong-import-position
from testbed import Testbed, free_port  # noqa: E402  pylint: disable=wrong-import-position

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "quankey-backup")
AWS = str(VENV_BIN / "aws")
DB = "benchdb"
BUCKET = "quankey-bench"
STANZA = "bench"
HOST_ID = "bench-db1"


def log(message):
    print("bench: %s" % message, file=sys.stderr, flush=True)


def ensure_tool(program, package, install=True):
    """The path of ``program``; apt-get installs ``package`` when it is missing (None if that fails)."""
    found = shutil.which(program)
    if found:
        return found
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    log("installing %s (apt-get install %s)" % (program, package))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env,
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log("could not install %s: %s" % (package, done.stderr.strip()[-300:]))
    return shutil.which(program)


class Bench:  # pylint: disable=too-many-instance-attributes
    """The services, the environments of each method, and the measurements."""

    def __init__(self, bed, work, args):
        self.bed = bed
        self.pg = bed.pg
        self.work = Path(work)
        self.args = args
        self.bindir = str(self.pg.bindir)
        self.results = {"backup": {}, "restore": {}, "extra": {}, "flat": {}, "notes": [], "disturbed": [],
                        "unavailable": {}}
        self.postmaster = None
        self.moto_pid = bed.moto._process.pid  # pylint: disable=protected-access  # its CPU is measured
        self.shim = None
        self.pgbackrest = self.pgbackrest_conf = self.posix_repo = None
        self.repos = {}
        self.bucket = BUCKET
        self.barmans = []
        self.cipher_pass = secrets.token_urlsafe(24)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "DB_", "S3_", "BACKUP_"))}
        base["PATH"] = "%s:%s" % (VENV_BIN, base.get("PATH", "/usr/bin:/bin"))
        self.env = dict(base, **bed.backup_env(DB))
        self.env.update(self.pg.env())
        self.env.update(S3_PREFIX="quankey", BACKUP_HOST_ID=HOST_ID, PGDATABASE=DB)
        self.s3 = bed.moto.client("s3")
        self.restore_counter = 0

    # -- helpers ---------------------------------------------------------------------------------

    def boost(self):
        """Favour our sessions (this one, PostgreSQL's, moto's, the TLS terminator's) over other jobs."""
        if not self.args.nice or os.geteuid() != 0:
            return
        pids = [self.postmaster_pid()] + self.s3_servers()
        if os.getsid(0) == os.getpid():  # our own session (see main): its autogroup is ours alone
            pids.append(os.getpid())
        done = [measure.boost(pid, self.args.nice) for pid in pids]
        if not all(done):
            self.results["notes"].append("could not set the scheduler autogroup niceness of every service")

    def servers(self):
        return [self.postmaster_pid()]

    def s3_servers(self):
        return [self.moto_pid] + ([self.shim.pid] if self.shim else [])

    def postmaster_pid(self):
        with open(self.pg.datadir / "postmaster.pid", encoding="utf-8") as handle:
            return int(handle.readline())

    def measure(self, argv, **kwargs):
        kwargs.setdefault("env", self.env)
        nice = self.args.nice if os.geteuid() == 0 else None
        return measure.run(argv, servers=self.servers(), s3_servers=self.s3_servers(), nice=nice, **kwargs)

    def tool(self, name):
        return os.path.join(self.bindir, name)

    def prefix_bytes(self, prefix, contains=None):
        total = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                if contains is None or contains(item["Key"]):
                    total += item["Size"]
        return total

    def list_keys(self, prefix):
        return [item["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                for item in page.get("Contents", [])]

    def read_object(self, key):
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8", "replace")

    def postgres_ids(self):
        """(uid, gid) that own the cluster's files (the postgres user when we are root)."""
        return self.pg._run_as or (os.getuid(), os.getgid())  # pylint: disable=protected-access

    def delete_prefix(self, prefix):
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})

    def new_db_name(self, tag):
        self.restore_counter += 1
        return "restored_%s_%d" % (tag, self.restore_counter)

    def wait_for_quiet(self):
        """Wait (up to --quiet-wait seconds) until the machine is nearly idle: other jobs distort every number."""
        waited, limit_s, busy = 0.0, self.args.quiet_wait, 0.0
        while waited < limit_s:
            before = measure.machine_busy_seconds()
            time.sleep(1.0)
            waited += 1.0
            busy = (measure.machine_busy_seconds() - before) / os.cpu_count()
            if busy < self.args.max_foreign_load:
                return waited
        if limit_s > 0:
            log("the machine stayed busy (%.0f%% of its CPU) for %.0fs: measuring anyway" % (busy * 100, waited))
        return waited

    def measured(self, kind, method, func):
        """Run one measurement; again (up to --retries times) when foreign load disturbed it."""
        for attempt in range(1 + self.args.retries):
            os.sync()  # what the last step left dirty is written now, not during this measurement
            self.wait_for_quiet()
            result = func()
            result["foreign_load"] = result["other_cpu_s"] / max(result["wall_s"] * os.cpu_count(), 1e-9)
            result["attempts"] = attempt + 1
            if result["foreign_load"] <= self.args.max_foreign_load:
                break
            self.results["disturbed"].append({"kind": kind, "method": method, "foreign_load": result["foreign_load"],
                                              "wall_s": result["wall_s"]})
            log("%s %s: %.0f%% of the machine went to other processes meanwhile (%.1fs wall): %s"
                % (kind, method, result["foreign_load"] * 100, result["wall_s"],
                   "measuring again" if attempt < self.args.retries else "keeping it, marked"))
        self.record(kind, method, result)
        return result

    def record(self, kind, method, result):
        self.results[kind].setdefault(method, []).append(dict(result))
        log("%-8s %-28s wall %6.2fs  client cpu %6.2fs  server cpu %6.2fs  s3 cpu %6.2fs  peak rss %5.0f MB%s"
            % (kind, method, result["wall_s"], result["client_cpu_s"], result["server_cpu_s"], result["s3_cpu_s"],
               result["peak_rss_bytes"] / 1e6,
               "  stored %.1f MB" % (result["stored_bytes"] / 1e6) if result.get("stored_bytes") else ""))

    # -- set-up ----------------------------------------------------------------------------------

    def setup_pgbackrest(self):
        """Archiving for pgBackRest (archive_command swapped in only around its own backups), its repos, its stanza.

        repo1: the same S3 endpoint (through a TLS terminator: pgBackRest speaks only HTTPS to S3),
        unless --pgbackrest-posix-only; then (or as repo2) a local posix repository, to show what
        pgBackRest does without the S3 endpoint's per-request cost.
        """
        if self.args.no_pgbackrest:
            self.results["notes"].append("pgBackRest skipped (--no-pgbackrest)")
            return
        program = ensure_tool("pgbackrest", "pgbackrest")
        if not program:
            self.results["notes"].append("pgBackRest not installed and could not be installed: (d) skipped")
            return
        self.pgbackrest = program
        pgdir = self.work / "pgbackrest"
        for sub in ("log", "lock", "spool", "posix-repo"):
            (pgdir / sub).mkdir(parents=True, exist_ok=True)
        uid, gid = self.postgres_ids()
        for path in [self.work, pgdir] + list(pgdir.iterdir()):
            os.chown(path, uid, gid)
        repos = []
        if not self.args.pgbackrest_posix_only:
            socat = ensure_tool("socat", "socat")
            s3_repo = self._s3_repo_via_tls_shim(pgdir, socat) if socat else None
            if s3_repo is None:
                self.results["notes"].append("no TLS terminator (socat) for pgBackRest's S3 repository: posix only")
            else:
                repos.append(("d", s3_repo))
        self.posix_repo = pgdir / "posix-repo"
        repos.append(("d-posix", ["type=posix", "path=%s" % self.posix_repo]))
        conf = ["[global]"]
        for index, (method, options) in enumerate(repos, 1):
            self.repos[method] = index
            conf += ["repo%d-%s" % (index, option) for option in options + [
                "cipher-type=aes-256-cbc", "cipher-pass=%s" % self.cipher_pass, "retention-full=1"]]
        conf += ["compress-type=zst", "process-max=%d" % self.args.pgbackrest_processes, "start-fast=y",
                 "log-level-console=warn", "log-level-file=info", "log-path=%s" % (pgdir / "log"),
                 "lock-path=%s" % (pgdir / "lock"), "spool-path=%s" % (pgdir / "spool"),
                 "", "[%s]" % STANZA, "pg1-path=%s" % self.pg.datadir, "pg1-port=%d" % self.pg.port,
                 "pg1-socket-path=%s" % self.pg.socket_dir, "pg1-user=postgres"]
        self.pgbackrest_conf = pgdir / "pgbackrest.conf"
        self.pgbackrest_conf.write_text("\n".join(conf) + "\n", encoding="utf-8")
        os.chmod(self.pgbackrest_conf, 0o600)
        os.chown(self.pgbackrest_conf, uid, gid)
        self.pg.psql("ALTER SYSTEM SET archive_mode = on")
        self.pg.psql("ALTER SYSTEM SET archive_command = '/bin/true'")
        restarted = self.pg._pg_ctl("restart", "-w", "-t", "60", "-l", str(self.pg.logfile))  # pylint: disable=protected-access
        if restarted.returncode != 0:
            raise RuntimeError("could not restart PostgreSQL with archive_mode=on: %s" % restarted.stderr)
        self.pgbackrest_run(["stanza-create"])

    def _s3_repo_via_tls_shim(self, pgdir, socat):
        """pgBackRest speaks only HTTPS to S3: a socat TLS terminator in front of the same moto endpoint."""
        cert, key = pgdir / "shim.crt", pgdir / "shim.key"
        made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                               "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], capture_output=True, check=False)
        if made.returncode != 0:
            return None
        port = free_port()
        self.shim = subprocess.Popen(  # pylint: disable=consider-using-with  # stopped in close()
            [socat, "OPENSSL-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,nodelay,cert=%s,key=%s,verify=0" % (port, cert, key),
             "TCP:127.0.0.1:%d,nodelay" % self.bed.moto.port], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        for _attempt in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        self.results["extra"]["pgbackrest_s3"] = ("the same moto endpoint and bucket, through a socat TLS terminator "
                                                  "(`OPENSSL-LISTEN:...,fork,nodelay` -> `TCP:moto,nodelay`): pgBackRest "
                                                  "2.45 has no plain-HTTP S3 option")
        return ["type=s3", "path=/pgbackrest", "s3-bucket=%s" % BUCKET,
                "s3-endpoint=127.0.0.1", "storage-port=%d" % port, "s3-uri-style=path",
                "storage-verify-tls=n", "s3-region=%s" % self.bed.moto.region,
                "s3-key=%s" % self.bed.moto.access_key, "s3-key-secret=%s" % self.bed.moto.secret_key]

    def pgbackrest_argv(self, args):
        return ["runuser", "-u", "postgres", "--", self.pgbackrest, "--config=%s" % self.pgbackrest_conf,
                "--stanza=%s" % STANZA] + list(args)

    def pgbackrest_run(self, args):
        done = subprocess.run(self.pgbackrest_argv(args), env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError("pgbackrest %s failed: %s %s" % (" ".join(args), done.stdout, done.stderr))
        return done.stdout

    def set_archive_command(self, command):
        self.pg.psql("ALTER SYSTEM SET archive_command = '%s'" % command.replace("'", "''"))
        self.pg.psql("SELECT pg_reload_conf()")
        time.sleep(0.3)

    def make_dataset(self, size):
        def run(sql):
            return self.pg.psql(sql, db=DB).strip()

        started = time.time()
        info = datagen.grow(run, size, log=log)
        info["seconds"] = round(time.time() - started, 1)
        return info

    # -- backups ---------------------------------------------------------------------------------

    def backup_limit(self):
        """(a) pg_dump -Fc -Z0 > /dev/null"""
        return self.measure([self.tool("pg_dump"), "-Fc", "-Z0", "-d", DB], stdout_path="/dev/null")

    SEED_BACKUP = r"""
set -euo pipefail
name=quankey_backup_$(date -u +%Y%m%d_%H%M%S)
"$PGBIN/pg_dump" -Fc -d "$PGDATABASE" \
  | gzip \
  | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY \
  | tee >(sha256sum | cut -d' ' -f1 > "$W/sum") >(wc -c > "$W/size") \
  | aws --endpoint-url "$S3_ENDPOINT_URL" s3 cp - "s3://$S3_BUCKET/seed/backups/postgresql/$name.encrypted" \
        --storage-class STANDARD_IA --only-show-errors
wait
fmt='{"backup_type": "postgresql_full", "database": "%s", "timestamp": "%s", "size_bytes": %s, "checksum_sha256": "%s", '
fmt="$fmt"'"encryption": "aes-256-cbc", "format": "pg_dump_custom", "retention_days": 30, "quantum_safe": true}\n'
printf "$fmt" \
  "$PGDATABASE" "${name#quankey_backup_}" "$(cat "$W/size")" "$(cat "$W/sum")" > "$W/$name.meta"
aws --endpoint-url "$S3_ENDPOINT_URL" s3 cp "$W/$name.meta" "s3://$S3_BUCKET/seed/metadata/$name.meta" --only-show-errors
echo "$name" > "$W/last"
"""

    def seed_env(self):
        seed_dir = self.work / "seed"
        seed_dir.mkdir(exist_ok=True)
        return dict(self.env, PGBIN=self.bindir, W=str(seed_dir))

    def backup_seed(self):
        """(b) the seed's pipeline, its checksum and its metadata upload"""
        self.delete_prefix("seed/")
        result = self.measure(self.SEED_BACKUP, shell=True, env=self.seed_env())
        result["stored_bytes"] = self.prefix_bytes("seed/backups/")
        return result

    def backup_quankey(self, zstd_level=None):
        """(c) quankey-backup backup (``zstd_level``: the engine with that zstd level instead, for comparison)"""
        self.delete_prefix("quankey/")
        argv = [CLI, "-q", "backup", "--json"]
        if zstd_level is not None:
            argv = [sys.executable, str(ROOT / "bench" / "engine_variant.py"), str(zstd_level), "--"] + argv[1:]
        result = self.measure(argv)
        result["stored_bytes"] = self.prefix_bytes("quankey/backups/")
        return result

    def backup_pgbackrest(self, method):
        """(d) pgBackRest full backup, to the S3 repository ("d") or the posix one ("d-posix")"""
        repo = self.repos[method]
        self.set_archive_command("%s --config=%s --stanza=%s archive-push %%p" % (self.pgbackrest, self.pgbackrest_conf, STANZA))
        try:
            result = self.measure(self.pgbackrest_argv(["--repo=%d" % repo, "--type=full", "backup"]))
        finally:
            self.set_archive_command("/bin/true")
        info = json.loads(self.pgbackrest_run(["--repo=%d" % repo, "info", "--output=json"]))[0]
        last = info["backup"][-1]
        label = last["label"]
        start, stop = last["archive"]["start"], last["archive"]["stop"]

        def in_range(key):
            return start <= key.rsplit("/", 1)[-1][:24] <= stop

        if method == "d":
            backup_bytes = self.prefix_bytes("pgbackrest/backup/%s/%s/" % (STANZA, label))
            wal_bytes = self.prefix_bytes("pgbackrest/archive/%s/" % STANZA, in_range)
        else:
            backup_bytes = sum(path.stat().st_size for path in (self.posix_repo / "backup" / STANZA / label).rglob("*")
                               if path.is_file())
            wal_bytes = sum(path.stat().st_size for path in (self.posix_repo / "archive" / STANZA).rglob("*")
                            if path.is_file() and in_range(str(path)))
        result.update(stored_bytes=backup_bytes + wal_bytes, read_bytes=last["info"]["size"],
                      repo_backup_bytes=last["info"]["repository"]["size"], wal_bytes=wal_bytes, label=label)
        return result

    # -- restores --------------------------------------------------------------------------------

    def drop(self, name):
        self.pg.drop_database(name)

    def restore_limit(self, dump_file, jobs=1):
        """(a) createdb + pg_restore from a local plaintext dump file"""
        target = self.new_db_name("a")
        script = '"$PGBIN/createdb" -T template0 %s && "$PGBIN/pg_restore" --exit-on-error -j %d -d %s %s' % (
            target, jobs, target, shlex.quote(str(dump_file)))
        result = self.measure(script, shell=True, env=dict(self.env, PGBIN=self.bindir))
        self.drop(target)
        return result

    SEED_RESTORE = r"""
set -euo pipefail
name=$(cat "$W/last")
aws --endpoint-url "$S3_ENDPOINT_URL" s3 cp "s3://$S3_BUCKET/seed/metadata/$name.meta" "$W/restore.meta" --only-show-errors
aws --endpoint-url "$S3_ENDPOINT_URL" s3 cp "s3://$S3_BUCKET/seed/backups/postgresql/$name.encrypted" "$W/restore.encrypted" --only-show-errors
want=$(sed -n 's/.*"checksum_sha256": "\([0-9a-f]*\)".*/\1/p' "$W/restore.meta")
echo "$want  $W/restore.encrypted" | sha256sum -c --quiet
"$PGBIN/createdb" -T template0 "$TARGET"
openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY -in "$W/restore.encrypted" \
  | gunzip | "$PGBIN/pg_restore" --exit-on-error -d "$TARGET"
tables=$("$PGBIN/psql" -X -At -d "$TARGET" -c "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
test "$tables" -gt 0
rm -f "$W/restore.encrypted"
"""

    def restore_seed(self):
        """(b) the seed's restore: download, verify SHA-256, openssl enc -d, gunzip, pg_restore"""
        target = self.new_db_name("b")
        result = self.measure(self.SEED_RESTORE, shell=True, env=dict(self.seed_env(), TARGET=target))
        self.drop(target)
        return result

    def restore_quankey(self, extra=()):
        """(c) quankey-backup restore (its default --jobs; ``extra``: more options, e.g. --jobs 1)"""
        target = self.new_db_name("c")
        result = self.measure([CLI, "-q", "restore", "--backup", "latest", "--target-db", target, "--json"] + list(extra))
        self.drop(target)
        return result

    def restore_has_jobs(self):
        done = subprocess.run([CLI, "restore", "--help"], env=self.env, capture_output=True, text=True, check=False)
        return "--jobs" in done.stdout

    def restore_pgbackrest(self, method):
        """(d) pgbackrest restore into an empty data directory (files only; then, separately, start + recovery)"""
        target = self.work / "pgbackrest-restore"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(mode=0o700)
        uid, gid = self.postgres_ids()
        os.chown(target, uid, gid)
        result = self.measure(self.pgbackrest_argv(["--repo=%d" % self.repos[method], "--pg1-path=%s" % target, "restore"]))
        result["start_recovery_s"], result["start_ok"] = self.start_restored_cluster(target, "pgbackrest-restore")
        shutil.rmtree(target, ignore_errors=True)
        return result

    def start_restored_cluster(self, target, tag):
        """Start a restored data directory until it accepts connections (WAL replayed to consistency), then stop it.

        Returns (seconds, started): the wall time of `pg_ctl start -w` (measured like every command), and whether
        it started. Used alike for pgBackRest's and barman-cloud's restores, which lay down files only.
        """
        uid, gid = self.postgres_ids()
        sock = self.work / ("%s-sock" % tag)
        sock.mkdir(exist_ok=True)
        os.chown(sock, uid, gid)
        port = free_port()
        log_file = self.work / ("%s.log" % tag)
        start = self.measure(["runuser", "-u", "postgres", "--", self.tool("pg_ctl"), "-D", str(target), "-w", "-t", "300",
                              "-l", str(log_file), "-o",
                              "-p %d -k %s -c archive_mode=off" % (port, sock), "start"], check=False)
        subprocess.run(["runuser", "-u", "postgres", "--", self.tool("pg_ctl"), "-D", str(target), "-m", "immediate",
                        "-w", "stop"], capture_output=True, check=False)
        if start["status"] != 0:
            tail = log_file.read_text(encoding="utf-8", errors="replace")[-1500:] if log_file.exists() else ""
            log("%s: the restored cluster did not start (pg_ctl exit %d): %s" % (tag, start["status"], tail))
            self.results["notes"].append("%s: the restored cluster did not start (pg_ctl exit %d)" % (tag, start["status"]))
        return start["wall_s"], start["status"] == 0

    def setup_barman(self):
        """(e) barman-cloud, one method per --barman-compression (e-gzip, e-none, ...): installed if missing
        (not in --smoke, which runs it only if it is installed already); why not, in the report, if it cannot run."""
        if self.args.no_barman or not self.args.barman_compression:
            self.results["unavailable"]["e"] = "skipped (--no-barman, or an empty --barman-compression)"
            return
        why = barman.install(lambda program, package: ensure_tool(program, package, install=not self.args.smoke),
                             smoke=self.args.smoke)
        if why:
            self.results["unavailable"]["e"] = why
            log("barman-cloud not available: %s" % why)
            return
        for compression in self.args.barman_compression:
            candidate = barman.Barman(self, compression, self.args.barman_jobs)
            why = candidate.setup()
            if why:
                self.results["unavailable"][candidate.method] = why
                log("barman-cloud (%s) not available: %s" % (compression, why))
            else:
                self.barmans.append(candidate)
        if self.barmans:
            self.results["extra"]["barman"] = {"version": self.barmans[0].version(), "jobs": self.args.barman_jobs,
                                               "compressions": [b.compression for b in self.barmans]}

    def download_alone(self):
        """A single-stream GET of (c)'s object to nowhere, with the engine's S3 client."""
        script = ("import os, sys\n"
                  "from quankey_backup.config import Settings\n"
                  "from quankey_backup.adapters.s3 import S3Store\n"
                  "store = S3Store(os.environ['S3_BUCKET'], endpoint_url=os.environ['S3_ENDPOINT_URL'])\n"
                  "key = [o['key'] for o in store.list_objects('quankey/backups/')][0]\n"
                  "print(sum(len(c) for c in store.iter_object(key)))\n")
        return self.measure([sys.executable, "-c", script])

    def upload_alone(self, size):
        """The engine's multipart upload of ``size`` bytes from a local file (no dump, no compression)."""
        path = self.work / "upload-alone.bin"
        with open(path, "wb") as handle:
            left = size
            while left > 0:
                handle.write(os.urandom(min(left, 1 << 24)))
                left -= 1 << 24
        script = ("import os\n"
                  "from quankey_backup.adapters.s3 import S3Store, choose_part_size\n"
                  "store = S3Store(os.environ['S3_BUCKET'], endpoint_url=os.environ['S3_ENDPOINT_URL'])\n"
                  "up = store.open_multipart('upload-alone/x', choose_part_size(%d))\n"
                  "with open(%r, 'rb') as f:\n"
                  "    for chunk in iter(lambda: f.read(1 << 20), b''):\n"
                  "        up.write(chunk)\n"
                  "import time\n"
                  "started = time.monotonic()\n"
                  "up.complete()\n"
                  "print(time.monotonic() - started)\n" % (size * 2, str(path)))
        out_path = self.work / "upload-alone.out"
        result = self.measure([sys.executable, "-c", script], stdout_path=str(out_path))
        # the last request (CompleteMultipartUpload + HEAD): the store assembling the object
        result["complete_s"] = float(out_path.read_text(encoding="utf-8").strip())
        path.unlink()
        self.delete_prefix("upload-alone/")
        return result

    # -- the run ---------------------------------------------------------------------------------

    def run(self):
        args = self.args
        self.pg.create_database(DB)
        self.setup_pgbackrest()
        self.setup_barman()
        self.boost()
        log("generating the dataset (%.0f MB on disk)" % (args.size / 1e6))
        self.results["dataset"] = self.make_dataset(args.size)
        dump_file = self.work / "plain.dump"
        log("warm-up: a local plaintext dump (also restore (a)'s input)")
        warm = self.measure([self.tool("pg_dump"), "-Fc", "-Z0", "-d", DB], stdout_path=str(dump_file))
        self.results["dataset"]["dump_bytes"] = dump_file.stat().st_size
        self.results["extra"]["dump_to_local_file"] = dict(warm)

        backups = [("a", self.backup_limit), ("b", self.backup_seed)]
        if args.variant_zstd_level:
            backups.append(("c-zstd%d" % args.variant_zstd_level,
                            lambda: self.backup_quankey(zstd_level=args.variant_zstd_level)))
        restores = [("a", lambda: self.restore_limit(dump_file)), ("a-j2", lambda: self.restore_limit(dump_file, 2)),
                    ("b", self.restore_seed), ("c", self.restore_quankey)]
        for method in self.repos:
            backups.append((method, lambda method=method: self.backup_pgbackrest(method)))
            restores.append((method, lambda method=method: self.restore_pgbackrest(method)))
        for variant in self.barmans:
            backups.append((variant.method, variant.backup))
            restores.append((variant.method, variant.restore))
        if args.restore_jobs_1:
            if self.restore_has_jobs():
                restores.append(("c-j1", lambda: self.restore_quankey(["--jobs", "1"])))
            else:
                self.results["notes"].append("--restore-jobs-1: `quankey-backup restore --help` has no --jobs: not measured")
        backups.append(("c", self.backup_quankey))  # last, so that restore (c) reads the default engine's backup
        for rep in range(args.repeat):
            for method, func in backups:
                log("backup %s, repetition %d/%d" % (method, rep + 1, args.repeat))
                self.measured("backup", method, func)
        for rep in range(args.repeat):
            for method, func in restores:
                log("restore %s, repetition %d/%d" % (method, rep + 1, args.repeat))
                self.measured("restore", method, func)
        stored_c = statistics.median(r["stored_bytes"] for r in self.results["backup"]["c"])
        for rep in range(args.repeat):
            self.measured("restore", "download", self.download_alone)
            self.measured("backup", "upload", lambda: self.upload_alone(int(stored_c)))

        if args.flat_size:
            self.flatness(args.flat_size)
        self.results["moto_rss_bytes"] = measure.rss_bytes(self.moto_pid)
        self.results["bench_process_cpu_s"] = measure.self_cpu_seconds()

    def flatness(self, size):
        """The same backup and restore on the database grown to ``size``: peak RSS must not grow."""
        log("growing the dataset to %.0f MB for the memory-flatness runs" % (size / 1e6))
        self.results["flat_dataset"] = self.make_dataset(size)
        with subprocess.Popen([self.tool("pg_dump"), "-Fc", "-Z0", "-d", DB], env=self.env,
                              stdout=subprocess.PIPE) as dump:  # counted as it streams: never held in memory
            size = sum(len(chunk) for chunk in iter(lambda: dump.stdout.read(1 << 20), b""))
        self.results["flat_dataset"]["dump_bytes"] = size
        for rep in range(self.args.flat_repeat):
            log("flatness, repetition %d/%d" % (rep + 1, self.args.flat_repeat))
            self.measured("flat", "backup a", self.backup_limit)
            self.measured("flat", "backup c", self.backup_quankey)
            self.measured("flat", "restore c", self.restore_quankey)

    def close(self):
        if self.shim is not None:
            try:
                os.killpg(self.shim.pid, 15)
            except ProcessLookupError:
                pass
            self.shim.wait(timeout=10)


def machine_info(bench):
    def version(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False, env=bench.env)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "n/a"

    cpu = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as handle:
        mem_kb = int(handle.readline().split()[1])
    try:
        distro = dict(line.rstrip().split("=", 1) for line in open("/etc/os-release", encoding="utf-8") if "=" in line)
        distro = distro.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        distro = "?"
    import zstandard  # pylint: disable=import-outside-toplevel
    import cryptography  # pylint: disable=import-outside-toplevel
    import moto  # pylint: disable=import-outside-toplevel
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1e6, 1), "os": distro,
        "kernel": platform.release(), "python": platform.python_version(),
        "postgresql": version([bench.tool("postgres"), "--version"]),
        "pg_dump": version([bench.tool("pg_dump"), "--version"]),
        "pgbackrest": version(["pgbackrest", "version"]) if bench.pgbackrest else "not used",
        "barman-cloud": bench.barmans[0].version() if bench.barmans else "not used",
        "openssl": version(["openssl", "version"]), "gzip": version(["gzip", "--version"]),
        "awscli": version([AWS, "--version"]), "moto": moto.__version__, "zstandard": zstandard.__version__,
        "cryptography": cryptography.__version__, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fleet_status():
    """Whether the fleet timing can run: playbooks/setup_backups.yml and a Molecule scenario committed (landed)."""
    def landed(pattern):
        done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", pattern], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:  # not a git checkout: judge by the files present
            return bool(list(ROOT.glob(pattern)))
        return bool(done.stdout.strip())

    playbook = landed("playbooks/setup_backups.yml")
    scenario = landed("molecule/*/molecule.yml")
    if playbook and scenario:
        return "possible now (playbooks/setup_backups.yml and a Molecule scenario have landed) but not yet timed by this bench"
    missing = [name for name, there in (("playbooks/setup_backups.yml", playbook), ("a Molecule scenario", scenario))
               if not there]
    return "pending: %s not landed yet (another engineer's roles/Molecule work)" % " and ".join(missing)


class Stopped(Exception):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so that the test bed and the TLS terminator are stopped."""


def _stop(signum, _frame):
    raise Stopped("signal %d" % signum)


def _stop_with_parent():
    """SIGTERM ourselves when the process that started us goes away (e.g. `make bench` interrupted)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv=None):
    # Ctrl-C and SIGTERM must unwind through the `with Testbed` (a background job starts with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition, output to build/bench/smoke/")
    parser.add_argument("--fleet-hosts", type=int, default=8,
                        help="hosts for the fleet timing of playbooks/setup_backups.yml (default 8; 0 to skip; never "
                             "in --smoke)")
    parser.add_argument("--fleet-only", action="store_true",
                        help="only the fleet timing, added to the results dir's results.json, then --render")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: redo the table, chart and markdown from the results dir's results.json")
    parser.add_argument("--size", type=datagen.parse_size, default=None, help="database size on disk (default 1G)")
    parser.add_argument("--flat-size", type=datagen.parse_size, default=None,
                        help="second, larger size for the memory-flatness runs (default 2.5G; 0 to skip)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions of each method (default 3)")
    parser.add_argument("--flat-repeat", type=int, default=None, help="repetitions at the flatness size (default 2)")
    parser.add_argument("--pgbackrest-processes", type=int, default=2, help="pgBackRest process-max (default 2)")
    parser.add_argument("--no-pgbackrest", action="store_true", help="skip (d)")
    parser.add_argument("--no-barman", action="store_true", help="skip (e) barman-cloud")
    parser.add_argument("--barman-compression", type=barman.parse_compressions, default=None,
                        help="barman-cloud's compressions of the backup and its WAL, each measured as its own method "
                             "(comma-separated of %s; default gzip,none: gzip is level 9 in one Python thread, not "
                             "configurable, and none is its fastest; snappy fails with Debian 12's python3-snappy; "
                             "--smoke: none); the targets compare with the fastest" % ",".join(barman.COMPRESSIONS))
    parser.add_argument("--barman-jobs", type=int, default=2,
                        help="barman-cloud-backup --jobs, its parallel uploads (default 2, like pgBackRest's process-max)")
    parser.add_argument("--restore-jobs-1", action="store_true",
                        help="also measure quankey-backup restore --jobs 1 beside its default (skipped when the CLI "
                             "has no --jobs)")
    parser.add_argument("--max-foreign-load", type=float, default=0.15,
                        help="share of the machine's CPU other processes may take during a measurement before it is "
                             "taken again (default 0.10)")
    parser.add_argument("--retries", type=int, default=None, help="measurements taken again at most (default 1)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="seconds to wait for an idle machine before each measurement (default 30)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness for the bench and everything it starts, root only (default -10: other jobs on a "
                             "shared machine then disturb the measurements less)")
    parser.add_argument("--variant-zstd-level", type=int, default=None,
                        help="also measure the backup with this zstd level beside the engine's own (level 2): "
                             "default 3, the level before issue 15; 0 to skip")
    parser.add_argument("--pgbackrest-posix-only", action="store_true",
                        help="(d) to a local posix repository only, not to the S3 endpoint (smoke)")
    parser.add_argument("--out", default=None, help="markdown report (default docs/benchmarks.md; smoke: build/bench/smoke/)")
    parser.add_argument("--results-dir", default=None, help="raw results, results.json (default bench/results; smoke: "
                                                            "build/bench/smoke)")
    parser.add_argument("--chart", default=None,
                        help="the chart (default: images/benchmarks.png beside --out, i.e. docs/images/benchmarks.png, "
                             "which the built collection ships with docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pgbackrest_posix_only = True
        defaults = dict(size=datagen.parse_size("24M"), flat_size=datagen.parse_size("48M"), repeat=1, flat_repeat=1,
                        retries=0, quiet_wait=0, variant_zstd_level=0, barman_compression=["none"],
                        out=str(ROOT / "build/bench/smoke/benchmarks.md"), results_dir=str(ROOT / "build/bench/smoke"))
    else:
        defaults = dict(size=datagen.parse_size("1G"), flat_size=datagen.parse_size("2.5G"), repeat=3, flat_repeat=2,
                        retries=1, quiet_wait=30, variant_zstd_level=3, barman_compression=["gzip", "none"],
                        out=str(ROOT / "docs/benchmarks.md"), results_dir=str(ROOT / "bench/results"))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.nice and os.geteuid() == 0 and not args.render:
        try:
            os.setsid()  # a session (scheduler autogroup) of our own, to raise without raising our caller's
            _stop_with_parent()  # the terminal's Ctrl-C no longer reaches us: follow make/the shell instead
        except OSError:
            pass  # already a process group leader: we stay in the caller's autogroup, unraised
        os.nice(args.nice)  # inherited by PostgreSQL, moto and every measured command
    if args.render or args.fleet_only:
        results = json.loads((results_dir / "results.json").read_text(encoding="utf-8"))
        if args.fleet_only:
            results["fleet"] = time_fleet(args)
            (results_dir / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n",
                                                      encoding="utf-8")
        return render(results, args.out, args.chart)
    started = time.time()
    command = "bench/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    work = tempfile.mkdtemp(prefix="quankey-bench-", dir="/tmp")
    os.chmod(work, 0o755)
    bench = None
    try:
        with Testbed(bucket=BUCKET) as bed:
            bench = Bench(bed, work, args)
            try:
                bench.run()
                results = bench.results
                results["machine"] = machine_info(bench)
                results["fleet"] = fleet_status()
                results["config"] = {"size": args.size, "flat_size": args.flat_size, "repeat": args.repeat,
                                     "flat_repeat": args.flat_repeat, "pgbackrest_processes": args.pgbackrest_processes,
                                     "smoke": args.smoke, "command": command.strip(), "retries": args.retries,
                                     "quiet_wait": args.quiet_wait, "max_foreign_load": args.max_foreign_load,
                                     "variant_zstd_level": args.variant_zstd_level, "nice": os.nice(0),
                                     "barman_compression": args.barman_compression, "barman_jobs": args.barman_jobs,
                                     "seed_backup_script": Bench.SEED_BACKUP.strip(),
                                     "seed_restore_script": Bench.SEED_RESTORE.strip()}
                results["seconds"] = round(time.time() - started, 1)
            finally:
                bench.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["fleet"] = time_fleet(args)
    json_path = results_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    render(results, args.out, args.chart)
    log("done in %.0fs: %s, %s" % (time.time() - started, args.out, json_path))
    return 0


def time_fleet(args):
    """The fleet timing when it can run (see bench/fleet.py), else why not."""
    if args.smoke or not args.fleet_hosts:
        return "not measured in this run (--smoke or --fleet-hosts 0)"
    if not fleet.landed():
        return fleet_status()
    if os.geteuid() != 0:
        return "not measured: the chroot test hosts need root"
    try:
        return fleet.run_fleet(args.fleet_hosts, log=log)
    except RuntimeError as error:
        log(str(error))
        return "failed: %s" % str(error).splitlines()[0]


def render(results, out, chart_path=None):
    """The stdout table, the chart (default images/benchmarks.png beside ``out``) and the markdown report."""
    summary = report.summarize(results)
    print(report.table(summary))
    chart_path = Path(chart_path) if chart_path else Path(out).parent / "images" / "benchmarks.png"
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    chart = report.chart(summary, chart_path)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(report.markdown(results, summary, chart, Path(out)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
