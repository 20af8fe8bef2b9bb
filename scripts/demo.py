#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: the main job on the embedded default, end to end.

Starts a throwaway PostgreSQL cluster and a local S3 endpoint, fills a sample
database, writes /etc/quankey/backup.env's twin (mode 0600) in a temp dir, and
drives the `quankey-backup` command as cron and an on-call engineer would:
backup, list, verify, restore into a new database, health. Then it proves the
restored data equals the original and tears everything down (also on failure
or Ctrl-C).
"""

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sampledb  # noqa: E402  pylint: disable=wrong-import-position
from testbed import Testbed, masked, write_env_file  # noqa: E402  pylint: disable=wrong-import-position

CLI = str(Path(sys.executable).parent / "quankey-backup")
SOURCE_DB = "quankey_prod"
TARGET_DB = "quankey_prod_restored"


class DemoFailed(Exception):
    """A step of the demo did not do what it should."""


def _stop(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def step(title):
    print("\n==> %s" % title, flush=True)


def run(env_file, *args, expect=0):
    """Run quankey-backup with the env file, echoing the command; fail the demo unless it exits with ``expect``."""
    argv = [CLI, "--env-file", env_file] + list(args)
    print("$ quankey-backup %s" % " ".join(shlex.quote(a) for a in argv[1:]), flush=True)
    clean_env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "AWS_", "DB_", "S3_", "BACKUP_"))}
    proc = subprocess.run(argv, env=clean_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          check=False)
    print(proc.stdout.rstrip(), flush=True)
    if proc.returncode != expect:
        raise DemoFailed("quankey-backup %s exited with %d, expected %d" % (args[0], proc.returncode, expect))
    return proc.stdout


def main():
    signal.signal(signal.SIGTERM, _stop)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="quankey-demo-") as workdir, Testbed(bucket="quankey-backups-demo") as bed:
        step("test bed: PostgreSQL %s on %s:%d (password auth), S3 at %s, bucket %s"
             % (bed.pg.version, bed.pg.host, bed.pg.port, bed.moto.endpoint_url, bed.bucket))
        bed.pg.create_database(SOURCE_DB)
        sampledb.fill(bed.pg, SOURCE_DB)
        before = sampledb.table_digests(bed.pg, SOURCE_DB)
        print("sample database %s: %s" % (SOURCE_DB, ", ".join("%s %s rows" % (t, d.split(":")[0]) for t, d in before.items())))

        env = bed.backup_env(SOURCE_DB)
        env["BACKUP_HOST_ID"] = "demo-db1"
        env_file = os.path.join(workdir, "backup.env")
        write_env_file(env_file, env)
        step("settings in %s (mode %o), as /etc/quankey/backup.env would hold them:" % (env_file, os.stat(env_file).st_mode & 0o777))
        for key, value in masked(env).items():
            print("  %s=%s" % (key, value))

        step("backup (what cron runs)")
        run(env_file, "backup")
        step("list")
        run(env_file, "list")
        step("verify: download, SHA-256, decrypt, decompress, parse the archive (no database touched)")
        run(env_file, "verify")
        step("restore into a new database %s" % TARGET_DB)
        run(env_file, "restore", "--target-db", TARGET_DB)
        step("restore again onto the same name: refused without --force")
        run(env_file, "restore", "--target-db", TARGET_DB, expect=8)
        print("(refused with exit code 8, as it should be: nothing was touched)")
        step("health")
        run(env_file, "health")

        step("proof: every table of %s equals %s (ordered row digests)" % (TARGET_DB, SOURCE_DB))
        after = sampledb.table_digests(bed.pg, TARGET_DB)
        for table in sampledb.DATA_TABLES:
            same = before[table] == after[table]
            print("  %-28s %-8s %s" % (table, "same" if same else "DIFFERS", before[table]))
        if before != after:
            raise DemoFailed("the restored data differs from the original")
    print("\ndemo passed in %.1fs: backup, list, verify, restore and health all worked, and the restored "
          "data equals the original. Everything it started is stopped and removed." % (time.time() - started))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoFailed as exc:
        print("\ndemo FAILED: %s" % exc, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ndemo interrupted: the test bed was torn down", file=sys.stderr)
        sys.exit(130)
