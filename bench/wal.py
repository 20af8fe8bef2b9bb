#!/usr/bin/env python
"""WAL push rate (issue 18 item 1): `quankey-backup wal-push` against `pgbackrest archive-push`, same segments, same S3.

A PostgreSQL cluster of its own (tests/testbed.py) writes real 16 MiB WAL segments (rows of md5 text, the segments
filled, not switched early) and its archive_command copies each into a staging directory. Then each tool archives
every staged segment the way archive_command runs it: one process per segment, one after the other, into the same
moto_server bucket (pgBackRest through bench/run.py's socat TLS terminator: it speaks only HTTPS to S3; zstd and
aes-256-cbc as in `make bench`). Also measured: quankey's engine pushing in one process (no interpreter start,
imports and S3 client per segment), which shows where the time of a push goes.

    .venv/bin/python bench/wal.py                      # 24 segments -> build/bench/wal.json
    .venv/bin/python bench/wal.py --segments 8 --rounds 1
"""

import argparse
import base64
import json
import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import physical  # noqa: E402  pylint: disable=wrong-import-position
import run as benchrun  # noqa: E402  pylint: disable=wrong-import-position
from testbed import MotoServer, PostgresCluster  # noqa: E402  pylint: disable=wrong-import-position

CLI = benchrun.CLI
STANZA = "walbench"
SEGMENT = 16 * 1024 * 1024


def log(message):
    print("bench/wal: %s" % message, file=sys.stderr, flush=True)


class ArchivingCluster(PostgresCluster):
    """A cluster whose archive_command copies each completed WAL file into ``staging``."""

    def __init__(self, staging):
        super().__init__()
        self.staging = staging

    def _configure(self):
        super()._configure()
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("archive_mode = on\nwal_level = replica\narchive_command = 'test ! -f %s/%%f && cp %%p %s/%%f'\n"
                       % (self.staging, self.staging))


def make_segments(cluster, staging, count):
    """Write WAL until ``count`` full segments are archived into ``staging``; their paths, in order."""
    cluster.psql("CREATE TABLE IF NOT EXISTS walbench (id bigint, a text, b text)")
    start = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        names = sorted(name for name in os.listdir(staging) if len(name) == 24)
        if len(names) >= count + 1:  # the first may hold initdb's and the start's records only
            return [staging / name for name in names[1:count + 1]]
        cluster.psql("INSERT INTO walbench SELECT g, md5(g::text) || md5((g * 7)::text), md5((g * 13)::text) "
                     "FROM generate_series(%d, %d) g" % (start, start + 49999))
        start += 50000
        time.sleep(0.2)
    raise RuntimeError("the cluster archived only %d segments in 10 minutes" % len(os.listdir(staging)))


def archiver_rate(program, env, segments, directory):
    """Push ``segments`` as PostgreSQL's archiver does after a burst of WAL: each is in ``directory`` (a pg_wal of
    hard links) with ``archive_status/<name>.ready``; one call per segment, oldest first, whose success turns
    ``.ready`` into ``.done``. Segments per second."""
    status = directory / "archive_status"
    status.mkdir(parents=True)
    for path in segments:
        os.link(path, directory / path.name)
        (status / (path.name + ".ready")).write_text("")
    started = time.monotonic()
    for path in segments:
        timed([[program, "-q", "wal-push", "pg_wal/" + path.name]], env, cwd=directory.parent)
        os.rename(status / (path.name + ".ready"), status / (path.name + ".done"))
    return len(segments) / (time.monotonic() - started)


def timed(argvs, env, cwd=None):
    """Run each argv in turn (check), return the wall seconds of all."""
    started = time.monotonic()
    for argv in argvs:
        done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError("%s failed (exit %d): %s" % (" ".join(argv[:6]), done.returncode, done.stderr[-800:]))
    return time.monotonic() - started


def in_process_rate(env, segments):
    """quankey's engine pushing every segment in one process: segments per second, without process start-up."""
    code = ("import json, sys, time\n"
            "from quankey_backup import config\n"
            "from quankey_backup.workflows import wal, wiring\n"
            "settings = config.settings_from_env(dict(__import__('os').environ))\n"
            "store = wiring.open_store(settings)\n"
            "started = time.monotonic()\n"
            "for path in sys.argv[1:]:\n"
            "    wal.push(settings, path, store=store)\n"
            "print(json.dumps(time.monotonic() - started))\n")
    done = subprocess.run([sys.executable, "-c", code] + [str(path) for path in segments], env=env, capture_output=True,
                          text=True, check=True)
    return len(segments) / json.loads(done.stdout)


class PgBackRest:
    """pgBackRest with one repository: the same moto_server bucket through a TLS terminator."""

    def __init__(self, program, cluster, moto, work, env):
        self.program = program
        self.cluster = cluster
        self.env = env
        self.work = work
        fake_args = argparse.Namespace(nice=0, no_pgbackrest=False, pgbackrest_posix_only=False, pgbackrest_processes=1)
        bed = argparse.Namespace(pg=cluster, moto=moto)
        self.helper = benchrun.Bench.__new__(benchrun.Bench)  # only its TLS terminator is used
        self.helper.bed, self.helper.args, self.helper.results, self.helper.shim = bed, fake_args, {"extra": {}}, None
        socat = benchrun.ensure_tool("socat", "socat")
        if not socat:
            raise RuntimeError("no socat for pgBackRest's TLS terminator")
        pgdir = work / "pgbackrest"
        for sub in ("log", "lock", "spool"):
            (pgdir / sub).mkdir(parents=True, exist_ok=True)
        repo = self.helper._s3_repo_via_tls_shim(pgdir, socat)  # pylint: disable=protected-access
        if repo is None:
            raise RuntimeError("could not make the TLS terminator's certificate")
        conf = ["[global]"] + ["repo1-%s" % option for option in repo + [
            "cipher-type=aes-256-cbc", "cipher-pass=%s" % secrets.token_urlsafe(24), "retention-full=1"]]
        conf += ["compress-type=zst", "log-level-console=warn", "log-level-file=off", "log-path=%s" % (pgdir / "log"),
                 "lock-path=%s" % (pgdir / "lock"), "spool-path=%s" % (pgdir / "spool"), "",
                 "[%s]" % STANZA, "pg1-path=%s" % cluster.datadir, "pg1-port=%d" % cluster.port,
                 "pg1-socket-path=%s" % cluster.socket_dir, "pg1-user=postgres"]
        self.conf = pgdir / "pgbackrest.conf"
        self.conf.write_text("\n".join(conf) + "\n", encoding="utf-8")
        os.chmod(self.conf, 0o600)
        uid, gid = cluster._run_as or (os.getuid(), os.getgid())  # pylint: disable=protected-access
        for path in [work, pgdir, self.conf] + [pgdir / sub for sub in ("log", "lock", "spool")]:
            os.chown(path, uid, gid)
        timed([self.argv("stanza-create")], env)

    def argv(self, *args):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return prefix + [self.program, "--config=%s" % self.conf, "--stanza=%s" % STANZA] + list(args)

    def close(self):
        self.helper.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--segments", type=int, default=24, help="segments each tool pushes per round (24)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, interleaved, medians reported (2)")
    parser.add_argument("--output", default=str(ROOT / "build" / "bench" / "wal.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quankey-walbench-", dir="/tmp"))
    staging = work / "staging"
    staging.mkdir()
    results = {"segments": args.segments, "rounds": args.rounds, "segment_bytes": SEGMENT, "quankey": [],
               "quankey_in_process": [], "pgbackrest": [], "notes": [
                   "quankey: one `wal-push pg_wal/<name>` per segment, run in a data directory whose pg_wal holds every "
                   "segment marked .ready (a backlog, as after a burst of writes), WAL_PUSH_AHEAD=4 (default)",
                   "pgbackrest: one synchronous `archive-push <segment>` per segment (archive-async off, its default), "
                   "zstd, aes-256-cbc, to the same moto_server through a socat TLS terminator"]}
    pgbackrest = None
    engine = physical.engine_for_postgres(Path(args.output).parent)  # installed as a host has it, when root
    results["notes"].append("quankey-backup: %s" % ("the engine of this checkout installed in a venv of %s, as the "
                                                    "pg_backup role installs it" % physical.SYSTEM_PYTHON
                                                    if engine != CLI else "the editable install of .venv"))
    try:
        if os.geteuid() == 0:  # the server runs as the postgres OS user, and writes the staging directory
            entry = pwd.getpwnam("postgres")
            os.chmod(work, 0o755)
            os.chown(staging, entry.pw_uid, entry.pw_gid)
        with MotoServer() as moto, ArchivingCluster(staging) as cluster:
            bucket = moto.create_bucket(benchrun.BUCKET)  # the bucket bench/run.py's pgBackRest repository names
            log("writing %d WAL segments" % args.segments)
            segments = make_segments(cluster, staging, args.segments)
            env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "AWS_", "S3_", "BACKUP_"))}
            env.update(moto.env(), S3_BUCKET=bucket, BACKUP_HOST_ID="walbench",
                       BACKUP_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode("ascii"))
            program = benchrun.ensure_tool("pgbackrest", "pgbackrest")
            if program:
                try:
                    pgbackrest = PgBackRest(program, cluster, moto, work, dict(env, **cluster.env()))
                except RuntimeError as exc:
                    results["notes"].append("pgBackRest not measured: %s" % exc)
                    log(results["notes"][-1])
            else:
                results["notes"].append("pgBackRest is not installed: not measured")
            results["stored_bytes_quankey"] = None
            for round_ in range(args.rounds):
                prefix = "round%d/" % round_
                ours = dict(env, S3_PREFIX=prefix)
                results["quankey"].append(archiver_rate(engine, ours, segments, work / ("round%d" % round_) / "pg_wal"))
                log("round %d: quankey-backup wal-push %.2f segments/s" % (round_ + 1, results["quankey"][-1]))
                if round_ == 0:
                    s3 = moto.client()
                    results["stored_bytes_quankey"] = sum(item["Size"] for item in s3.list_objects_v2(
                        Bucket=bucket, Prefix=prefix + "wal/").get("Contents", []))
                if pgbackrest is not None:
                    if round_ > 0:  # a fresh archive: a segment already there is only compared
                        pg_env = dict(env, **cluster.env())
                        timed([pgbackrest.argv("stop"), pgbackrest.argv("--force", "stanza-delete"),
                               pgbackrest.argv("start"), pgbackrest.argv("stanza-create")], pg_env)
                    seconds = timed([pgbackrest.argv("archive-push", str(path)) for path in segments],
                                    dict(env, **cluster.env()))
                    results["pgbackrest"].append(args.segments / seconds)
                    log("round %d: pgbackrest archive-push %.2f segments/s" % (round_ + 1, results["pgbackrest"][-1]))
                results["quankey_in_process"].append(in_process_rate(dict(ours, S3_PREFIX="inproc%d/" % round_),
                                                                     segments))
                log("round %d: quankey engine in one process %.2f segments/s"
                    % (round_ + 1, results["quankey_in_process"][-1]))
    finally:
        if pgbackrest is not None:
            pgbackrest.close()
        shutil.rmtree(work, ignore_errors=True)
    summary = {name: round(statistics.median(results[name]), 2) if results[name] else None
               for name in ("quankey", "quankey_in_process", "pgbackrest")}
    if summary["quankey"] and summary["pgbackrest"]:
        summary["quankey_vs_pgbackrest"] = round(summary["quankey"] / summary["pgbackrest"], 2)
    results["median_segments_per_second"] = summary
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
