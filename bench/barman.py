"""(e) barman-cloud (Debian's barman-cli-cloud) as an anchor beside pgBackRest, against the same S3 endpoint.

barman-cloud-backup copies the cluster's files (a tar, compressed, multipart-uploaded) between
pg_backup_start and pg_backup_stop; barman-cloud-wal-archive (the archive_command during its backups
only, like pgBackRest's archive-push) ships the WAL that makes the copy consistent. Its restore is
barman-cloud-restore into an empty data directory, then starting that cluster with
barman-cloud-wal-restore as the restore_command until it accepts connections (consistent).

Credentials never go on a command line: the backup and restore get them from the environment (as the
engine does), the archive and restore commands (run by PostgreSQL, whose environment has none) from a
0600 file of the postgres user sourced by a wrapper script.
"""

import argparse
import os
import shlex
import shutil
import subprocess

SERVER = "bench"
PREFIX = "barman"
COMPRESSIONS = ("gzip", "snappy", "bzip2", "none")
# barman-cloud 3.4 compresses the backup's tar in one Python thread: gzip and bzip2 at level 9 (tarfile's
# stream mode, not configurable), snappy through python-snappy. Debian 12's python3-snappy 0.5.3 fails on its
# Python 3.11 (`PY_SSIZE_T_CLEAN macro must be defined`), so gzip is the default: the compressed backup that
# works, closest to what the others store.
SNAPPY_PROBE = "import snappy; snappy.StreamCompressor().add_chunk(b'x' * 100)"
PACKAGE = "barman-cli-cloud"


def _info(text):
    """backup.info (key=value lines) as a dict."""
    out = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def data_dir_bytes(datadir):
    """Bytes of the regular files under ``datadir``, pg_wal excepted (what a file-level backup copies)."""
    total = 0
    for root, dirs, files in os.walk(datadir):
        if root == str(datadir) and "pg_wal" in dirs:
            dirs.remove("pg_wal")
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # a file removed meanwhile (a temp file of the running server)
                pass
    return total


def install(ensure_tool, smoke=False):
    """barman-cli-cloud's programs, installed if missing (``ensure_tool(program, package)``); None, or why not."""
    for program in ("barman-cloud-backup", "barman-cloud-restore", "barman-cloud-wal-archive", "barman-cloud-wal-restore"):
        if not ensure_tool(program, PACKAGE):
            if smoke:
                return "%s is not installed (--smoke installs nothing: `apt-get install %s`)" % (program, PACKAGE)
            return "%s is not installed and `apt-get install %s` did not bring it" % (program, PACKAGE)
    return None


def parse_compressions(text):
    """--barman-compression: a comma-separated list of COMPRESSIONS (empty: none measured)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in COMPRESSIONS]
    if wrong:
        raise argparse.ArgumentTypeError("unknown barman-cloud compression %s: use a comma-separated list of %s"
                                         % (", ".join(wrong), ", ".join(COMPRESSIONS)))
    return names


class Barman:  # pylint: disable=too-many-instance-attributes
    """barman-cloud's backup and restore of the bench cluster; ``bench`` is run.Bench (its services and measure())."""

    def __init__(self, bench, compression, jobs):
        self.bench = bench
        self.compression = compression
        self.jobs = jobs
        self.method = "e-%s" % compression
        self.prefix = "%s-%s" % (PREFIX, compression)  # each variant its own archive and backup
        self.backup_id = None
        self.dir = bench.work / self.prefix
        self.url = "s3://%s/%s" % (bench.bucket, self.prefix)
        self.endpoint = bench.env["S3_ENDPOINT_URL"]
        self.archive_script = self.dir / "wal-archive.sh"
        self.restore_script = self.dir / "wal-restore.sh"

    # -- set-up ----------------------------------------------------------------------------------

    def compression_args(self):
        return [] if self.compression == "none" else ["--%s" % self.compression]

    def common_args(self):
        return ["--cloud-provider", "aws-s3", "--endpoint-url", self.endpoint]

    def setup(self):
        """Write the wrapper scripts (after install()); None, or why this variant cannot run."""
        if self.compression == "snappy":
            if not self._probe(SNAPPY_PROBE):
                self._apt("python3-snappy")
            if not self._probe(SNAPPY_PROBE):
                return ("--barman-compression snappy: python-snappy is missing or broken under %s (Debian 12's "
                        "python3-snappy fails there); use gzip" % self.interpreter())
        self.dir.mkdir(parents=True, exist_ok=True)
        uid, gid = self.bench.postgres_ids()
        env_file = self.dir / "aws.env"
        env_file.write_text("".join("export %s=%s\n" % (name, shlex.quote(self.bench.env[name])) for name in (
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")), encoding="utf-8")
        os.chmod(env_file, 0o600)
        common = " ".join(shlex.quote(arg) for arg in self.common_args())
        scripts = {
            self.archive_script: "exec barman-cloud-wal-archive %s %s %s %s \"$1\"" % (
                common, " ".join(self.compression_args()), shlex.quote(self.url), SERVER),
            self.restore_script: "exec barman-cloud-wal-restore %s %s %s \"$1\" \"$2\"" % (
                common, shlex.quote(self.url), SERVER),
        }
        for path, body in scripts.items():
            path.write_text("#!/bin/sh\n. %s\n%s\n" % (shlex.quote(str(env_file)), body), encoding="utf-8")
            os.chmod(path, 0o700)
        for path in [self.dir, env_file] + list(scripts):
            os.chown(path, uid, gid)
        return None

    def interpreter(self):
        """The Python that runs barman-cloud (Debian's system python3, not the bench's venv)."""
        with open(shutil.which("barman-cloud-backup"), encoding="utf-8") as handle:
            first = handle.readline()
        return first[2:].strip().split()[0] if first.startswith("#!") else "/usr/bin/python3"

    def _probe(self, code):
        done = subprocess.run([self.interpreter(), "-c", code], capture_output=True, check=False)
        return done.returncode == 0

    @staticmethod
    def _apt(package):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return False
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env,
                              capture_output=True, check=False)
        return done.returncode == 0

    def version(self):
        done = subprocess.run(["barman-cloud-backup", "--version"], capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).strip() or "?"

    def as_postgres(self, argv):
        return ["runuser", "-u", "postgres", "--"] + list(argv) if os.geteuid() == 0 else list(argv)

    # -- backup ----------------------------------------------------------------------------------

    def backup(self):
        """(e) barman-cloud-backup of the whole cluster; archive_command = barman-cloud-wal-archive meanwhile."""
        bench = self.bench
        bench.delete_prefix(self.prefix + "/")  # one backup at a time, like the others (the last one is restored)
        bench.set_archive_command(self.archive_command())
        try:
            result = self.measured_backup()
        finally:
            bench.set_archive_command("/bin/true")
        return result

    def archive_command(self):
        return "%s %%p" % self.archive_script

    def measured_backup(self):
        """barman-cloud-backup measured, with what it stored (the archive_command must be archive_command() meanwhile,
        and the prefix hold no other backup)."""
        bench = self.bench
        result = bench.measure(self.as_postgres(
            ["barman-cloud-backup"] + self.common_args() + self.compression_args()
            + ["--immediate-checkpoint", "--jobs", str(self.jobs), self.url, SERVER]))
        base = "%s/%s/base/" % (self.prefix, SERVER)
        infos = [key for key in bench.list_keys(base) if key.endswith("/backup.info")]
        if len(infos) != 1:
            raise RuntimeError("barman-cloud-backup left %d backup.info objects under %s, not 1" % (len(infos), base))
        info = _info(bench.read_object(infos[0]))
        self.backup_id = infos[0][len(base):].split("/", 1)[0]
        begin, end = info.get("begin_wal", ""), info.get("end_wal", "")

        def in_range(key):
            name = key.rsplit("/", 1)[-1][:24]
            return len(name) == 24 and begin <= name <= end

        backup_bytes = bench.prefix_bytes(base + self.backup_id + "/")
        wal_bytes = bench.prefix_bytes("%s/%s/wals/" % (self.prefix, SERVER), in_range)
        # backup.info of barman-cloud has no size: what it read is the data directory without pg_wal
        result.update(stored_bytes=backup_bytes + wal_bytes, read_bytes=data_dir_bytes(bench.pg.datadir),
                      wal_bytes=wal_bytes, label=self.backup_id)
        return result

    # -- restore ---------------------------------------------------------------------------------

    def restore(self):
        """(e) barman-cloud-restore into an empty data directory (files only); then, separately, start + recovery."""
        bench = self.bench
        if self.backup_id is None:
            raise RuntimeError("no barman-cloud backup to restore")
        uid, gid = bench.postgres_ids()
        target = bench.work / ("%s-restore" % self.prefix)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(mode=0o700)
        os.chown(target, uid, gid)
        result = bench.measure(self.as_postgres(
            ["barman-cloud-restore"] + self.common_args() + [self.url, SERVER, self.backup_id, str(target)]))
        # what barman's documentation asks for after barman-cloud-restore: a restore_command and recovery.signal
        with open(target / "postgresql.auto.conf", "a", encoding="utf-8") as handle:
            handle.write("restore_command = '%s %%f %%p'\n" % self.restore_script)
        (target / "recovery.signal").touch()
        for path in (target / "postgresql.auto.conf", target / "recovery.signal"):
            os.chown(path, uid, gid)
        result["start_recovery_s"], result["start_ok"] = bench.start_restored_cluster(target, "%s-restore" % self.prefix)
        shutil.rmtree(target, ignore_errors=True)
        return result
