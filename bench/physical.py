#!/usr/bin/env python
"""Physical base backups and point-in-time restores (issue 18 item 8): quankey-backup against pgBackRest and
barman-cloud, same cluster, same S3 endpoint, same run.

One PostgreSQL cluster (tests/testbed.py, archive_mode on) holding a bench/datagen.py database, one moto_server
bucket. Each round, for each tool in turn (quankey, pgBackRest, barman-cloud per --barman-compression; each round
another tool goes first, and every measurement starts after a sync(2), so none pays for the writeback of the one
before it):

1. archive_command becomes the tool's own WAL push (PostgreSQL runs it as the postgres OS user): `quankey-backup
   wal-push %p` from an engine installed for that user as the pg_backup role installs it (a venv of /usr/bin/python3
   from the wheelhouse), `pgbackrest archive-push %p`, barman-cloud-wal-archive (bench/barman.py's wrapper);
2. its base backup is timed (wall, CPU, stored bytes: the backup plus the WAL of its own start..stop range);
3. --wal-segments segments of WAL are written, a row marked "before" is committed, the target time T read from
   the server, a row marked "after" committed, the segment switched and waited for in the tool's archive; the
   load table is emptied again, so every tool's base backup copies the same database.

Then the source cluster is stopped (its port is free, nothing else runs) and each tool restores its backup to its
own T into an empty data directory, timed until the server has replayed to T and is promoted, then to a clean
stop (`quankey-backup restore --pitr` stops the server itself after promoting, so the ratios compare that, like
for like). Every restored cluster is started once more, untimed, and must hold the "before" row and not the
"after" one: a restore that recovered the wrong point is reported as such, never as a time.

The restores write onto a file system of their own (RestoreDisk: a loop-mounted, journaled ext4 image, as a database
host's data disk; bench/analysis.md says why), and restored clusters are deleted at the end, not between
measurements.

    .venv/bin/python bench/physical.py                       # 64 MB database, 1 round -> build/bench/physical.json
    .venv/bin/python bench/physical.py --scale 1G --rounds 3
"""

import argparse
import datetime
import glob
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import barman  # noqa: E402  pylint: disable=wrong-import-position
import datagen  # noqa: E402  pylint: disable=wrong-import-position
import measure  # noqa: E402  pylint: disable=wrong-import-position
import run as benchrun  # noqa: E402  pylint: disable=wrong-import-position
from testbed import PostgresCluster, Testbed, free_port, write_env_file  # noqa: E402  pylint: disable=wrong-import-position

CLI = benchrun.CLI
DB = benchrun.DB
HOST_ID = "physical-db1"
QK_PREFIX = "quankey-pitr/"
SEGMENT = 16 * 1024 * 1024
SYSTEM_PYTHON = "/usr/bin/python3"
NOT_BUILT = "not available: restore --pitr not built yet"


def log(message):
    print("bench/physical: %s" % message, file=sys.stderr, flush=True)


def parse_scale(text):
    """--scale: a size as bench/datagen.py reads it (64M, 1G); a bare number is megabytes."""
    return datagen.parse_size(text + "M" if str(text).isdigit() else text)


def segment_of(timeline, lsn):
    """The WAL file name holding ``lsn`` ("0/5000100") on ``timeline`` (16 MiB segments)."""
    high, low = (int(part, 16) for part in lsn.split("/"))
    segno = ((high << 32) | low) // SEGMENT
    return "%08X%08X%08X" % (timeline, segno // 256, segno % 256)


class ArchivingCluster(PostgresCluster):
    """The test bed's cluster with archive_mode on from its first start (archive_command swapped in per tool)."""

    def _configure(self):
        super()._configure()
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("archive_mode = on\nwal_level = replica\narchive_command = '/bin/true'\n")


def engine_for_postgres(work_root):
    """``quankey-backup`` the postgres OS user can run (this venv's interpreter is under root's 0700 home): a venv of
    /usr/bin/python3 with the pinned requirements from Molecule's wheelhouse (QUANKEY_WHEELHOUSE, or
    build/molecule/wheelhouse) and this checkout's engine, as tests/functional/test_wal_archiving.py installs it.
    Cached under build/bench/ by the engine's sources' SHA-256. Its path, or RuntimeError saying why not."""
    if os.geteuid() != 0:  # the cluster runs as ourselves: our own venv will do
        return CLI
    digest = hashlib.sha256()
    sources = sorted(glob.glob(str(ROOT / "plugins" / "module_utils" / "**" / "*.py"), recursive=True))
    for path in sources + [str(ROOT / name) for name in ("pyproject.toml", "requirements.txt", "constraints.txt")]:
        digest.update(path.encode() + b"\0" + Path(path).read_bytes())
    base = work_root / ("engine-%s" % digest.hexdigest()[:12])
    program = base / "venv" / "bin" / "quankey-backup"
    if program.exists():
        return str(program)
    wheels = [path for path in (os.environ.get("QUANKEY_WHEELHOUSE"), str(ROOT / "build" / "molecule" / "wheelhouse"))
              if path and glob.glob(os.path.join(path, "boto3-*.whl"))]
    index = ["--no-index", "--find-links", wheels[0]] if wheels else []
    log("installing the engine for the postgres OS user in %s (%s)"
        % (base, "wheelhouse %s" % wheels[0] if wheels else "no wheelhouse: from the package index"))
    shutil.rmtree(base, ignore_errors=True)
    source = base / "src"
    shutil.copytree(ROOT / "plugins" / "module_utils", source / "plugins" / "module_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "constraints.txt"):
        shutil.copy(ROOT / name, source / name)
    venv = base / "venv"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"] + index
    for command in ([SYSTEM_PYTHON, "-m", "venv", str(venv)],
                    pip + ["-r", str(source / "requirements.txt"), "-c", str(source / "constraints.txt"),
                           "setuptools>=77"],
                    pip + ["--no-deps", "--no-build-isolation", str(source)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, cwd=str(base))
        if done.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            raise RuntimeError("installing the engine for the postgres OS user failed: %s: %s"
                               % (" ".join(command[:4]), (done.stderr or done.stdout)[-600:]))
    for path in [work_root, base] + [Path(root) for root, _dirs, _files in os.walk(base)]:
        os.chmod(path, os.stat(path).st_mode | 0o055)  # the postgres user enters and reads it
    return str(program)


class RestoreDisk:
    """A file system of the restores' own, as a database host's data disk is one: a sparse file under the work
    directory, formatted ext4 with its journal (mkfs's defaults, inode tables written at once rather than by a
    background thread during the measurements) and loop-mounted. Not on this machine's root file system, where moto
    keeps every object and multipart part as a temporary file, the other tools' files come and go, and ext4 runs
    without a journal (each file created soon after a deletion there costs a scan of the deleted inodes). The
    mount's path, or the work directory with ``why`` set when it cannot be made (not root, no mkfs.ext4 or loop)."""

    def __init__(self, work, size_bytes):
        self.work, self.size_bytes = work, size_bytes
        self.image, self.path, self.mounted, self.why = work / "restore-disk.img", work / "restores", False, None

    def __enter__(self):
        if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
            self.why = "not root, or no mkfs.ext4: restores on the work directory's file system"
            return self.work
        self.path.mkdir()
        with open(self.image, "wb") as handle:
            handle.truncate(self.size_bytes)
        for command in (["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)],
                        ["mount", "-o", "loop", str(self.image), str(self.path)]):
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
            if done.returncode != 0:
                self.why = "%s failed (%s): restores on the work directory's file system" % (
                    command[0], (done.stderr or done.stdout).strip()[-200:])
                self.image.unlink()
                return self.work
        self.mounted = True
        os.chmod(self.path, 0o755)
        return self.path

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", str(self.path)], capture_output=True, check=False, timeout=600)
            if os.path.ismount(str(self.path)):
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False, timeout=60)
        if self.image.exists():
            self.image.unlink()
        return False


class Physical(benchrun.Bench):  # pylint: disable=too-many-instance-attributes
    """bench/run.py's services and measurements (measure, measured, record, the TLS terminator), physical kind."""

    def __init__(self, bed, work, args, engine):
        super().__init__(bed, work, args)
        self.env.update(S3_PREFIX=QK_PREFIX, BACKUP_HOST_ID=HOST_ID)
        self.engine = engine
        self.restore_root = work  # RestoreDisk's mount, when it could make one
        self.source_running = True
        self.results.update(config={}, targets={}, verified={}, tools={}, failed={})
        self.barman_variants = {}
        self.pgbackrest_confs = {}
        help_text = subprocess.run([engine, "restore", "--help"], env=self.env, capture_output=True, text=True,
                                   check=False).stdout
        self.restore_help = help_text if "--pitr" in help_text else None

    def servers(self):
        return [self.postmaster_pid()] if self.source_running else []

    # -- set-up ----------------------------------------------------------------------------------

    def setup_quankey(self):
        env_file = self.work / "wal.env"
        keys = ("S3_BUCKET", "S3_ENDPOINT_URL", "S3_PREFIX", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION", "BACKUP_HOST_ID", "BACKUP_ENCRYPTION_KEY")
        write_env_file(env_file, {key: self.env[key] for key in keys})
        os.chown(env_file, *self.postgres_ids())
        self.results["tools"]["quankey"] = {
            "archive_command": "quankey-backup -q --env-file wal.env wal-push %p (engine of this checkout in a venv of "
                               "/usr/bin/python3, run by PostgreSQL as the postgres OS user; WAL_PUSH_AHEAD=4, default)",
            "engine": "every quankey-backup command (archive_command's, the base backup's, the restore's) is the engine "
                      "of this checkout installed in a venv of /usr/bin/python3, as the pg_backup role installs it on a "
                      "host (not the editable install of .venv, whose namespace packages cost ~0.15 s more at each start)"
                      if self.engine != CLI else "the editable install of .venv (not run as root: no venv built)",
            "backup": "quankey-backup basebackup --fast: one pg_basebackup -Ft -X none stream into one process, zstd "
                      "level 2 (BACKUP_COMPRESSION default), AES-256-GCM under a fresh data key (BACKUP_ENCRYPTION_KEY), "
                      "multipart upload with 3 parts in flight",
            "restore": "quankey-backup restore --pitr --data-dir DIR --target-time T --target-action promote "
                       "--no-archive --json: download, decryption, extraction and the manifest check in one stream, "
                       "then the server under pg_ctl with its restore_command answered by the restore process "
                       "(WAL_PREFETCH default), promotion, its proof queries, a clean stop"
                       if self.restore_help else NOT_BUILT}
        return "%s -q --env-file %s wal-push %%p" % (self.engine, env_file)

    PGBACKREST_VARIANTS = {"pgbackrest": [], "pgbackrest-bundle": ["bundle=y"]}

    def setup_pgbackrests(self):
        """pgBackRest's variants (--pgbackrest-variants), each a configuration of its own with one repository, its own
        path in the same bucket through bench/run.py's TLS terminator (pgBackRest speaks only HTTPS to S3), and its
        stanza; {variant: why not} for those that cannot run."""
        program = benchrun.ensure_tool("pgbackrest", "pgbackrest")
        socat = benchrun.ensure_tool("socat", "socat")
        if not program or not socat:
            return {"pgbackrest": "pgbackrest or socat is not installed and could not be installed"}
        self.pgbackrest = program
        uid, gid = self.postgres_ids()
        repo = None
        for name in self.args.pgbackrest_variants:
            pgdir = self.work / name
            for sub in ("log", "lock", "spool"):
                (pgdir / sub).mkdir(parents=True, exist_ok=True)
            if repo is None:
                repo = self._s3_repo_via_tls_shim(pgdir, socat)
                if repo is None:
                    return {"pgbackrest": "could not make the TLS terminator's certificate"}
            options = [option for option in repo if not option.startswith("path=")] + ["path=/%s" % name]
            conf = ["[global]"] + ["repo1-%s" % option for option in options + self.PGBACKREST_VARIANTS[name] + [
                "cipher-type=aes-256-cbc", "cipher-pass=%s" % self.cipher_pass, "retention-full=1"]]
            conf += ["compress-type=zst", "process-max=%d" % self.args.pgbackrest_processes, "start-fast=y",
                     "log-level-console=warn", "log-level-file=info", "log-path=%s" % (pgdir / "log"),
                     "lock-path=%s" % (pgdir / "lock"), "spool-path=%s" % (pgdir / "spool"),
                     "", "[%s]" % benchrun.STANZA, "pg1-path=%s" % self.pg.datadir, "pg1-port=%d" % self.pg.port,
                     "pg1-socket-path=%s" % self.pg.socket_dir, "pg1-user=postgres"]
            path = pgdir / "pgbackrest.conf"
            path.write_text("\n".join(conf) + "\n", encoding="utf-8")
            os.chmod(path, 0o600)
            for item in [pgdir, path] + list(pgdir.iterdir()):
                os.chown(item, uid, gid)
            self.pgbackrest_confs[name] = path
            self.pgbr_run(name, ["stanza-create"])
            self.results["tools"][name] = {
                "version": subprocess.run([program, "version"], capture_output=True, text=True,
                                          check=False).stdout.strip(),
                "archive_command": "pgbackrest archive-push %p (synchronous: archive-async off, its default)",
                "backup": "pgbackrest backup --type=full, process-max=%d, start-fast=y, compress-type=zst (its default "
                          "level 3), cipher-type=aes-256-cbc, %srepo1 type=s3 on the same moto endpoint through a socat "
                          "TLS terminator" % (self.args.pgbackrest_processes, "repo1-bundle=y (small files bundled "
                                              "into larger objects), " if name == "pgbackrest-bundle" else ""),
                "restore": "pgbackrest restore --type=time --target=T --target-action=promote (process-max=%d), then "
                           "pg_ctl start; restore_command = pgbackrest archive-get" % self.args.pgbackrest_processes}
        return {}

    def pgbr_argv(self, name, args):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return prefix + [self.pgbackrest, "--config=%s" % self.pgbackrest_confs[name],
                         "--stanza=%s" % benchrun.STANZA] + list(args)

    def pgbr_run(self, name, args):
        done = subprocess.run(self.pgbr_argv(name, args), env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError("pgbackrest %s failed: %s %s" % (" ".join(args), done.stdout, done.stderr))
        return done.stdout

    def setup_barmans(self):
        why = barman.install(benchrun.ensure_tool)
        if why:
            return {"barman": why}
        unavailable = {}
        for compression in self.args.barman_compression:
            variant = barman.Barman(self, compression, self.args.barman_jobs)
            why = variant.setup()
            if why:
                unavailable[variant.method] = why
                continue
            name = "barman-%s" % compression
            self.barman_variants[name] = variant
            self.results["tools"][name] = {
                "version": variant.version(),
                "archive_command": "barman-cloud-wal-archive%s (a wrapper sourcing a 0600 credentials file)"
                                   % (" --%s" % compression if compression != "none" else ", uncompressed"),
                "backup": "barman-cloud-backup --immediate-checkpoint --jobs %d%s; no client-side encryption (barman-"
                          "cloud has none: only S3 server-side encryption)"
                          % (self.args.barman_jobs, " --%s (level 9, one Python thread)" % compression
                             if compression != "none" else ", uncompressed"),
                "restore": "barman-cloud-restore, then recovery.signal, restore_command = barman-cloud-wal-restore, "
                           "recovery_target_time = T, recovery_target_action = promote, pg_ctl start"}
        return unavailable

    # -- the source cluster's WAL ----------------------------------------------------------------

    def sql(self, text):
        return self.pg.psql(text, db=DB).strip()

    def wait_archived(self, segment, timeout=300):
        """Wait until PostgreSQL's archiver has archived ``segment`` (with the current archive_command)."""
        deadline = time.monotonic() + timeout
        row = ""
        while time.monotonic() < deadline:
            row = self.sql("SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') "
                           "FROM pg_stat_archiver")
            last = row.split("|")[0]
            if len(last) == 24 and last >= segment:
                return
            time.sleep(0.1)
        raise RuntimeError("WAL segment %s not archived in %ds (pg_stat_archiver: last archived|failures|last failed "
                           "= %s); see %s" % (segment, timeout, row, self.pg.logfile))

    def write_wal(self, segments):
        """At least ``segments`` x 16 MiB of WAL from committed inserts (rows of md5 text, as bench/wal.py writes)."""
        start = self.sql("SELECT pg_current_wal_lsn()")
        done = 0
        while float(self.sql("SELECT pg_current_wal_lsn() - '%s'::pg_lsn" % start)) < segments * SEGMENT:
            self.sql("INSERT INTO pitr_load SELECT g, md5(g::text) || md5((g * 7)::text), md5((g * 13)::text) "
                     "FROM generate_series(%d, %d) g" % (done, done + 49999))
            done += 50000

    def make_target(self, tag):
        """Commit "before", read T, commit "after", switch the segment and wait until it is archived; T (UTC)."""
        self.write_wal(self.args.wal_segments)
        self.sql("INSERT INTO pitr_marks VALUES ('%s', 'before')" % tag)
        text = self.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
        target = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
        time.sleep(0.2)
        self.sql("INSERT INTO pitr_marks VALUES ('%s', 'after')" % tag)
        segment = self.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        self.sql("SELECT pg_switch_wal()")
        self.wait_archived(segment)
        self.sql("TRUNCATE pitr_load")  # the next tool's base backup copies the same database
        return target

    # -- base backups ----------------------------------------------------------------------------

    def backup_quankey(self):
        out = self.work / "basebackup.json"
        result = self.measure([self.engine, "-q", "basebackup", "--fast", "--json"], stdout_path=str(out))
        taken = json.loads(out.read_text(encoding="utf-8"))
        first, last = taken["start_wal_file"], segment_of(taken["timeline"], taken["stop_lsn"])
        backup_bytes = self.prefix_bytes("%sbase/%s/%s." % (QK_PREFIX, HOST_ID, taken["name"]))
        wal_bytes = self.prefix_bytes("%swal/%s/" % (QK_PREFIX, HOST_ID),
                                      lambda key: first <= key.rsplit("/", 1)[-1][:24] <= last)
        if not backup_bytes:
            raise RuntimeError("no objects under %sbase/%s/%s.*" % (QK_PREFIX, HOST_ID, taken["name"]))
        result.update(stored_bytes=backup_bytes + wal_bytes, wal_bytes=wal_bytes, read_bytes=taken["tar_bytes"],
                      label=taken["name"], compression=taken["compression"], encryption=taken["encryption"],
                      stage_seconds=taken.get("stage_seconds"))
        return result

    def backup_pgbackrest(self, name):  # pylint: disable=arguments-renamed  # a variant's name, not run.py's method
        result = self.measure(self.pgbr_argv(name, ["--type=full", "backup"]))
        last = json.loads(self.pgbr_run(name, ["info", "--output=json"]))[0]["backup"][-1]
        start, stop = last["archive"]["start"], last["archive"]["stop"]
        backup_bytes = self.prefix_bytes("%s/backup/%s/%s/" % (name, benchrun.STANZA, last["label"]))
        wal_bytes = self.prefix_bytes("%s/archive/%s/" % (name, benchrun.STANZA),
                                      lambda key: start <= key.rsplit("/", 1)[-1][:24] <= stop)
        result.update(stored_bytes=backup_bytes + wal_bytes, wal_bytes=wal_bytes, read_bytes=last["info"]["size"],
                      label=last["label"])
        return result

    # -- point-in-time restores ------------------------------------------------------------------

    def discard(self, path):
        """Put a restored cluster aside, deleted with the work directory at the end: on this machine's ext4 (no
        journal) every file created soon after thousands were deleted costs a scan of the deleted inodes (the kernel's
        recently_deleted(), a third of a 67 MB restore's CPU in perf), so whoever restored after a deletion paid for
        it, and more each round."""
        if os.path.lexists(path):
            trash = self.restore_root / "trash"
            trash.mkdir(exist_ok=True)
            os.rename(path, trash / ("%s-%d" % (Path(path).name, len(os.listdir(trash)))))

    def empty_dir(self, tag):
        target = self.restore_root / ("%s-restore" % tag)
        self.discard(target)
        target.mkdir(mode=0o700)
        os.chown(target, *self.postgres_ids())
        return target

    def pg_ctl(self, target, *args, check=True, measured=True):
        argv = ["runuser", "-u", "postgres", "--", self.tool("pg_ctl"), "-D", str(target)] + list(args)
        if os.geteuid() != 0:
            argv = argv[4:]
        if measured:
            return self.measure(argv, check=check)
        return subprocess.run(argv, capture_output=True, text=True, check=False, start_new_session=True)

    def start_args(self, target, tag):
        """A free port, and a directory of the postgres OS user for the socket and the log; pg_ctl's options."""
        sock = self.work / ("%s-run" % tag)
        sock.mkdir(exist_ok=True)
        os.chown(sock, *self.postgres_ids())
        port = free_port()
        return port, sock, ["-l", str(sock / "postgres.log"), "-o", "-p %d -k %s -c archive_mode=off" % (port, sock)]

    def restored_psql(self, port, sock, sql):
        env = dict(self.env, PGHOST=str(sock), PGPORT=str(port), PGUSER="postgres", PGPASSWORD=self.pg.password)
        done = subprocess.run([self.tool("psql"), "-X", "-At", "-d", DB, "-c", sql], env=env, capture_output=True,
                              text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def log_tail(self, tag):
        path = self.work / ("%s-run" % tag) / "postgres.log"
        return path.read_text(encoding="utf-8", errors="replace")[-1200:] if path.exists() else "(no log)"

    def timed_pitr(self, tag, lay_down):
        """``lay_down(target)`` (files and recovery settings; a measure result), start, replay until promoted, clean
        stop: the wall time of each and of all, the CPU of the commands, of the restored server, of S3."""
        target = self.empty_dir(tag)
        s3 = measure.CpuMeter(self.s3_servers())
        s3.start()
        busy = measure.machine_busy_seconds()
        started = time.monotonic()
        files = lay_down(target)
        laid = time.monotonic()
        port, sock, options = self.start_args(target, tag)
        try:
            start = self.pg_ctl(target, "-w", "-t", "600", *options, "start", check=False)
            if start["status"] != 0:
                raise RuntimeError("%s: the restored cluster did not start: %s" % (tag, self.log_tail(tag)))
            pid = int((target / "postmaster.pid").read_text(encoding="utf-8").split()[0])
            deadline = time.monotonic() + 600
            while self.restored_psql(port, sock, "SELECT pg_is_in_recovery()") != "f":
                if not os.path.exists("/proc/%d" % pid) or time.monotonic() > deadline:
                    raise RuntimeError("%s: the restored cluster was not promoted: %s" % (tag, self.log_tail(tag)))
                time.sleep(0.05)
            promoted = time.monotonic()
            server_cpu = measure.tree_cpu_seconds(pid)  # the startup process (and its restore_command) reaped by now
            stop = self.pg_ctl(target, "-m", "fast", "-w", "-t", "300", "stop")
        except BaseException:
            if (target / "postmaster.pid").exists():
                self.pg_ctl(target, "-m", "immediate", "-w", "stop", measured=False)
            self.discard(target)
            raise
        ended = time.monotonic()
        client = files["client_cpu_s"] + start["client_cpu_s"] + stop["client_cpu_s"]
        s3_cpu = s3.stop()
        return {"wall_s": ended - started, "promoted_s": promoted - started, "files_s": laid - started,
                "replay_s": promoted - laid, "stop_s": ended - promoted, "client_cpu_s": client,
                "server_cpu_s": server_cpu, "s3_cpu_s": s3_cpu, "peak_rss_bytes": files["peak_rss_bytes"],
                "other_cpu_s": max(0.0, measure.machine_busy_seconds() - busy - client - server_cpu - s3_cpu),
                "status": 0, "target": str(target)}

    def restore_pgbackrest(self, name, when):
        def lay_down(target):
            return self.measure(self.pgbr_argv(name, ["--pg1-path=%s" % target, "--type=time",
                                                      "--target=%s" % when.strftime("%Y-%m-%d %H:%M:%S.%f+00"),
                                                      "--target-action=promote", "restore"]))
        return self.timed_pitr(name, lay_down)

    def restore_barman(self, variant, when):
        def lay_down(target):
            result = self.measure(variant.as_postgres(["barman-cloud-restore"] + variant.common_args() + [
                variant.url, barman.SERVER, variant.backup_id, str(target)]))
            with open(target / "postgresql.auto.conf", "a", encoding="utf-8") as handle:
                handle.write("restore_command = '%s %%f %%p'\nrecovery_target_time = '%s'\n"
                             "recovery_target_action = 'promote'\n"
                             % (variant.restore_script, when.strftime("%Y-%m-%d %H:%M:%S.%f+00")))
            (target / "recovery.signal").touch()
            for path in (target / "postgresql.auto.conf", target / "recovery.signal"):
                os.chown(path, *self.postgres_ids())
            return result
        return self.timed_pitr(variant.prefix, lay_down)

    def restore_quankey(self, when):  # pylint: disable=arguments-renamed  # a target time, not run.py's extra args
        """`quankey-backup restore --pitr` does it all: files, recovery, promotion, clean stop."""
        target = self.empty_dir("quankey")
        argv = [self.engine, "-q", "restore", "--pitr", "--data-dir", str(target), "--target-time", when.isoformat()]
        for option, value in (("--target-action", "promote"), ("--no-archive", None)):
            if option in self.restore_help:
                argv += [option] + ([value] if value else [])
        out = self.work / "restore-pitr.json"
        result = self.measure(argv + ["--json"], stdout_path=str(out))
        done = json.loads(out.read_text(encoding="utf-8"))
        stages = done.get("stage_seconds") or {}
        if "recover" in stages:  # its own split: the files (download, extract, manifest check), then the recovery
            result.update(files_s=sum(value for name, value in stages.items() if name != "recover"),
                          replay_s=stages["recover"])
        result.update(target=str(target), pitr=done, stage_seconds=stages,
                      server_cpu_note="not measured: the restored server runs under pg_ctl, not as a child of the "
                                      "command (its restore_command's work is the command's, in client_cpu_s)")
        return result

    def verify(self, tag, target, mark_tag):
        """Start the restored cluster (untimed): it must be out of recovery and hold "before" and not "after"."""
        port, sock, options = self.start_args(Path(target), tag + "-verify")
        self.pg_ctl(target, "-w", "-t", "300", *options, "start", measured=False)
        try:
            marks = self.restored_psql(port, sock, "SELECT pg_is_in_recovery()::text || ':' || coalesce(string_agg("
                                       "mark, ',' ORDER BY mark), '') FROM pitr_marks WHERE tag = '%s'" % mark_tag)
        finally:
            self.pg_ctl(target, "-m", "immediate", "-w", "stop", measured=False)
            self.discard(target)
        ok = marks == "false:before"
        if not ok:
            log("%s: the restored cluster is WRONG: (in recovery):(marks) = %r, expected 'false:before'; log: %s"
                % (tag, marks, self.log_tail(tag + "-verify")))
        return ok

    # -- the run ---------------------------------------------------------------------------------

    def failed(self, kind, name, error):
        log("%s %s FAILED: %s" % (kind, name, error))
        self.results["failed"].setdefault("%s %s" % (kind, name), []).append(str(error)[-1500:])

    def tools(self, archive_quankey):
        """[(name, archive_command, backup function, restore function of T)]"""
        tools = [("quankey", archive_quankey, self.backup_quankey, self.restore_quankey)]
        for name, conf in self.pgbackrest_confs.items():
            archive = "%s --config=%s --stanza=%s archive-push %%p" % (self.pgbackrest, conf, benchrun.STANZA)
            tools.append((name, archive, lambda name=name: self.backup_pgbackrest(name),
                          lambda when, name=name: self.restore_pgbackrest(name, when)))
        for name, variant in self.barman_variants.items():
            tools.append((name, variant.archive_command(), variant.measured_backup,
                          lambda when, variant=variant: self.restore_barman(variant, when)))
        return tools

    def run(self):
        args = self.args
        self.pg.create_database(DB)
        archive_quankey = self.setup_quankey()
        self.results["unavailable"].update(self.setup_pgbackrests())
        self.results["unavailable"].update(self.setup_barmans())
        if not self.restore_help:
            self.results["unavailable"]["quankey restore"] = NOT_BUILT
        log("generating the dataset (%.0f MB on disk)" % (args.scale / 1e6))
        started = time.time()
        self.results["dataset"] = datagen.grow(self.sql, args.scale, log=log)
        self.results["dataset"]["seconds"] = round(time.time() - started, 1)
        self.sql("CREATE TABLE pitr_load (id bigint, a text, b text); CREATE TABLE pitr_marks (tag text, mark text)")
        self.sql("CHECKPOINT")
        every = self.tools(archive_quankey)
        for rep in range(args.rounds):
            tools = every[rep % len(every):] + every[:rep % len(every)]  # each round another tool goes first
            targets = {}
            for name, archive, backup, _restore in tools:
                if name.startswith("barman-"):
                    self.delete_prefix(self.barman_variants[name].prefix + "/")  # a fresh archive, one backup.info
                self.set_archive_command(archive)
                log("round %d/%d: base backup %s" % (rep + 1, args.rounds, name))
                tag = "%s-%d" % (name, rep)
                try:
                    self.measured("backup", name, backup)
                    targets[name] = (tag, self.make_target(tag))
                except RuntimeError as error:  # the others are still measured; the table says what failed
                    self.failed("backup", name, error)
                    continue
                self.results["targets"].setdefault(name, []).append(targets[name][1].isoformat())
            self.set_archive_command("/bin/true")
            stopped = self.pg._pg_ctl("stop", "-m", "fast", "-w", "-t", "120")  # pylint: disable=protected-access
            if stopped.returncode != 0:
                raise RuntimeError("could not stop the source cluster: %s" % stopped.stderr)
            self.source_running = False
            try:
                for name, _archive, _backup, restore in tools:
                    if name not in targets or (name == "quankey" and not self.restore_help):
                        continue
                    tag, when = targets[name]
                    log("round %d/%d: PITR restore %s to %s" % (rep + 1, args.rounds, name, when.isoformat()))
                    try:
                        result = self.measured("restore", name, lambda restore=restore, when=when: restore(when))
                    except RuntimeError as error:
                        self.failed("restore", name, error)
                        continue
                    self.results["verified"].setdefault(name, []).append(self.verify(name, result["target"], tag))
            finally:
                started = self.pg._pg_ctl("start", "-w", "-t", "60", "-l", str(self.pg.logfile))  # pylint: disable=protected-access
                self.source_running = started.returncode == 0
            if not self.source_running:
                raise RuntimeError("could not start the source cluster again: %s" % started.stderr)


# -- the table -------------------------------------------------------------------------------------


def median(rows, key):
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(results):
    """Medians per tool and kind, the same-run ratios and their verdicts."""
    summary = {"backup": {}, "restore": {}, "ratios": [], "bytes": []}
    for kind in ("backup", "restore"):
        for name, rows in results[kind].items():
            summary[kind][name] = {key: median(rows, key) for key in (
                "wall_s", "promoted_s", "files_s", "replay_s", "stop_s", "stored_bytes", "client_cpu_s", "server_cpu_s",
                "s3_cpu_s")}
            summary[kind][name]["disturbed"] = any(row.get("foreign_load", 0) > results["config"]["max_foreign_load"]
                                                   for row in rows)
    for name, checks in results["verified"].items():
        summary["restore"][name]["verified"] = all(checks)
    for kind, what in (("backup", "base backup wall"), ("restore", "PITR restore wall (to promoted + clean stop)")):
        for other, label in (("pgbackrest", "pgBackRest"), ("barman", "barman-cloud")):
            label = "%s, quankey / %s" % (what, label)
            theirs = [(row["wall_s"], name) for name, row in summary[kind].items()
                      if name.startswith(other) and row.get("verified", True)]
            ours = summary[kind].get("quankey")
            if kind == "restore" and "quankey restore" in results["unavailable"]:
                summary["ratios"].append({"ratio": label, "value": None, "verdict": results["unavailable"]["quankey restore"]})
            elif not theirs:
                why = [why for name, why in results["unavailable"].items() if name.startswith(other)]
                summary["ratios"].append({"ratio": label, "value": None, "verdict": "not measured: %s" % (
                    why[0] if why else "no verified result of theirs")})
            elif not ours:
                summary["ratios"].append({"ratio": label, "value": None, "verdict": "not measured: %s" % "; ".join(
                    results["failed"].get("%s quankey" % kind, ["no result"]))[:300]})
            elif not ours.get("verified", True):
                summary["ratios"].append({"ratio": label, "value": None,
                                          "verdict": "missed: quankey's restore recovered the wrong point"})
            else:
                wall, name = min(theirs)
                value = ours["wall_s"] / wall
                summary["ratios"].append({"ratio": "%s (its fastest here: %s)" % (label, name), "value": round(value, 2),
                                          "ours_s": round(ours["wall_s"], 2), "theirs_s": round(wall, 2),
                                          "verdict": "met" if value < 1 else "missed"})
    for other, label in (("pgbackrest", "pgBackRest"), ("barman", "barman-cloud")):
        theirs = [(row["stored_bytes"], name) for name, row in summary["backup"].items()
                  if name.startswith(other) and row["stored_bytes"]]
        ours = summary["backup"].get("quankey")
        if theirs and ours and ours["stored_bytes"]:
            stored, name = min(theirs)
            summary["bytes"].append({"ratio": "stored bytes (backup + its WAL range), quankey / %s (%s)" % (label, name),
                                     "value": round(ours["stored_bytes"] / stored, 2)})
    return summary


def ordered(rows):
    """quankey first, then the others by name."""
    return sorted(rows.items(), key=lambda item: (item[0] != "quankey", item[0]))


def fmt(value, scale=1.0, digits=2):
    return "-" if value is None else "%.*f" % (digits, value / scale)


def table(results, summary):
    config = results["config"]
    lines = ["Physical backups and PITR: %.0f MB database, %d round(s), medians, %s segments of WAL replayed after each "
             "backup (bench/physical.py)" % (results["dataset"]["database_bytes"] / 1e6, config["rounds"],
                                             config["wal_segments"]), ""]
    header = ("base backup", "wall s", "stored MB", "client cpu s", "server cpu s", "s3 cpu s")
    lines.append("%-26s %9s %10s %12s %12s %9s" % header)
    for name, row in ordered(summary["backup"]):
        lines.append("%-26s %9s %10s %12s %12s %9s%s" % (
            name, fmt(row["wall_s"]), fmt(row["stored_bytes"], 1e6, 1), fmt(row["client_cpu_s"]),
            fmt(row["server_cpu_s"]), fmt(row["s3_cpu_s"]), "  *disturbed" if row["disturbed"] else ""))
    header = ("PITR restore", "files s", "replay s", "promoted", "stop s", "total s", "right point?")
    lines += ["", "%-26s %9s %9s %9s %9s %9s  %s" % header]
    for name, row in ordered(summary["restore"]):
        lines.append("%-26s %9s %9s %9s %9s %9s  %s%s" % (
            name, fmt(row["files_s"]), fmt(row["replay_s"]), fmt(row["promoted_s"]), fmt(row["stop_s"]),
            fmt(row["wall_s"]), {True: "yes", False: "NO"}.get(row.get("verified"), "?"),
            "  *disturbed" if row["disturbed"] else ""))
    if "quankey" not in summary["restore"]:
        lines.append("%-26s %s" % ("quankey", results["unavailable"].get("quankey restore", "not measured")))
    lines += ["", "Same-run ratios of wall times (target: < 1, faster than both; against each tool's fastest variant)"]
    for ratio in summary["ratios"]:
        value = "%.2f (%.2fs / %.2fs)" % (ratio["value"], ratio["ours_s"], ratio["theirs_s"]) if ratio["value"] else ""
        lines.append("  %-92s %-24s %s" % (ratio["ratio"], value, ratio["verdict"]))
    for ratio in summary["bytes"]:
        lines.append("  %-92s %.2f (no target)" % (ratio["ratio"], ratio["value"]))
    for name, why in results["unavailable"].items():
        if name != "quankey restore":
            lines.append("  %s: %s" % (name, why))
    for name, errors in results["failed"].items():
        lines.append("  %s FAILED (%d time(s)): %s" % (name, len(errors), errors[-1].splitlines()[0][:300]))
    if "quankey" in summary["restore"]:
        lines.append("  quankey's restore: files = its stages before \"recover\" (from --json: prepare, download_extract, "
                     "check), replay = \"recover\" (replay to the target, promotion, its proof queries and the clean "
                     "stop); the total also counts the process's start")
    if any(row["disturbed"] for kind in ("backup", "restore") for row in summary[kind].values()):
        lines.append("  *disturbed: other processes took more than %.0f%% of the machine's CPU during that measurement"
                     % (config["max_foreign_load"] * 100))
    lines += ["", "How each tool was configured"]
    for name, tool in ordered(results["tools"]):
        lines.append("  %-18s backup: %s" % (name, tool["backup"]))
        lines.append("  %-18s WAL: %s" % ("", tool["archive_command"]))
        lines.append("  %-18s restore: %s" % ("", tool["restore"]))
    return "\n".join(lines)


def variants(text):
    """--pgbackrest-variants: a comma-separated list of Physical.PGBACKREST_VARIANTS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in Physical.PGBACKREST_VARIANTS]
    if wrong:
        raise argparse.ArgumentTypeError("unknown pgBackRest variant %s: use a comma-separated list of %s"
                                         % (", ".join(wrong), ", ".join(Physical.PGBACKREST_VARIANTS)))
    return names


class Stopped(Exception):
    """SIGTERM/SIGHUP: unwind so that the clusters, moto and the TLS terminator are stopped."""


def _stop(signum, _frame):
    raise Stopped("signal %d" % signum)


def main(argv=None):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--scale", type=parse_scale, default=parse_scale("64"),
                        help="database size on disk, bench/datagen.py's tables (64M default; a bare number is MB)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each tool once per round, medians (1)")
    parser.add_argument("--wal-segments", type=int, default=3,
                        help="16 MiB WAL segments written after each base backup, replayed by its PITR restore (3)")
    parser.add_argument("--pgbackrest-processes", type=int, default=2, help="pgBackRest process-max (2, as make bench)")
    parser.add_argument("--pgbackrest-variants", type=variants, default=list(Physical.PGBACKREST_VARIANTS),
                        help="pgBackRest configurations, each measured: pgbackrest (as make bench) and pgbackrest-bundle "
                             "(the same with repo1-bundle=y: small files in larger objects, fewer S3 requests); default "
                             "both, the ratios use the fastest")
    parser.add_argument("--barman-compression", type=barman.parse_compressions, default=["gzip", "none"],
                        help="barman-cloud variants, each measured (gzip,none as make bench; the ratios use the "
                             "fastest)")
    parser.add_argument("--barman-jobs", type=int, default=2, help="barman-cloud-backup --jobs (2)")
    parser.add_argument("--max-foreign-load", type=float, default=0.15,
                        help="share of the machine's CPU other processes may take during a measurement before it is "
                             "marked disturbed (0.15)")
    parser.add_argument("--retries", type=int, default=0, help="a disturbed measurement is taken again this often (0)")
    parser.add_argument("--quiet-wait", type=float, default=0,
                        help="seconds to wait for an idle machine before each measurement (0)")
    parser.add_argument("--output", default=str(ROOT / "build" / "bench" / "physical.json"))
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the work directory (the tools' logs, the restored clusters' logs) for a look")
    args = parser.parse_args(argv)
    args.nice = 0  # bench/run.py's measure() reads it; no autogroup tricks here
    started = time.time()
    output = Path(args.output).resolve()  # the engine is installed beside it, and pip runs elsewhere
    output.parent.mkdir(parents=True, exist_ok=True)
    engine = engine_for_postgres(output.parent)
    work = Path(tempfile.mkdtemp(prefix="quankey-physbench-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        measured_tools = 1 + len(args.pgbackrest_variants) + len(args.barman_compression)
        disk = RestoreDisk(work, int(max(8e9, args.scale * 1.5 * measured_tools * args.rounds + 4e9)))
        with ArchivingCluster() as cluster, Testbed(bucket=benchrun.BUCKET, pg=cluster) as bed, disk as restore_root:
            bench = Physical(bed, work, args, engine)
            bench.restore_root = restore_root
            bench.results["config"]["restore_disk"] = disk.why or (
                "a %.0f GB sparse file, ext4 with its journal, loop-mounted: the restored clusters are written there"
                % (disk.size_bytes / 1e9))
            try:
                bench.run()
            finally:
                bench.close()
            results = bench.results
            results["config"].update(
                scale_bytes=args.scale, rounds=args.rounds, wal_segments=args.wal_segments,
                pgbackrest_processes=args.pgbackrest_processes, pgbackrest_variants=args.pgbackrest_variants,
                barman_compression=args.barman_compression,
                barman_jobs=args.barman_jobs, max_foreign_load=args.max_foreign_load, retries=args.retries,
                command="bench/physical.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                postgresql=subprocess.run([bench.tool("postgres"), "--version"], capture_output=True, text=True,
                                          check=False).stdout.strip(), cores=os.cpu_count())
    finally:
        if args.keep_work:
            log("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.time() - started, 1)
    results["summary"] = summarize(results)
    output.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    print(table(results, results["summary"]))
    log("done in %.0fs: %s" % (results["seconds"], output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
