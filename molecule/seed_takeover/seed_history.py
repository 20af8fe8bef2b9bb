#!/usr/bin/env python
"""The seed's side of the seed_takeover scenario, run on the controller by prepare.yml.

    seed_history.py iam-user --state SERVICES.json --out SEED_IAM.json
        the seed's IAM user, quankey-backup-user, with the seed README's policy (Put/Get/DeleteObject and
        ListBucket on the whole bucket) and an access key, made with the admin keys of the IAM-enforcing endpoint
    seed_history.py backups --state SERVICES.json --root HOST_ROOT --db DB --out SEED_BACKUPS.json
        three backups made by the host's seed script (HOST_ROOT/usr/local/bin/quankey-backup, with its settings
        HOST_ROOT/etc/quankey/backup.env, output appended to its log as cron does) - the oldest two as the script
        ran on older OpenSSL (no -pbkdf2: EVP_BytesToKey with MD5, then SHA-256) - with the database changed
        between them; writes each backup's name, key derivation and the source's row digests when it was taken

The script runs here, not inside the chroot host, because the test host has no AWS CLI (nor a package index
to install one): stock pg_dump, gzip, openssl and the AWS CLI of the venv run it, against the test services.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import sampledb  # noqa: E402  pylint: disable=wrong-import-position

SEED_USER = "quankey-backup-user"
# The script's encryption options as the seed's hosts ran it over the years: OpenSSL 1.0 (MD5 by default, no
# -pbkdf2), OpenSSL 1.1 (SHA-256 by default, -pbkdf2 not yet added), then the script as it is today.
VARIANTS = [("-md md5", "EVP_BytesToKey MD5"), ("", "EVP_BytesToKey SHA256"), ("-pbkdf2", "PBKDF2-HMAC-SHA256")]
NAME_RE = re.compile(r" as (quankey_backup_\d{8}_\d{6})$", re.MULTILINE)


def _write_private(path, data):
    descriptor = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)


def iam_user(state, out):
    """The seed's IAM user with the seed README's policy (the whole bucket), and its access key."""
    iam = boto3.client("iam", endpoint_url=state["s3"]["endpoint_url"], region_name=state["s3"]["region"],
                       aws_access_key_id=state["s3"]["admin_access_key"],
                       aws_secret_access_key=state["s3"]["admin_secret_key"])
    bucket = state["s3"]["bucket"]
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket"],
        "Resource": ["arn:aws:s3:::%s" % bucket, "arn:aws:s3:::%s/*" % bucket]}]}
    iam.create_user(UserName=SEED_USER)
    iam.put_user_policy(UserName=SEED_USER, PolicyName="quankey-backup", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=SEED_USER)["AccessKey"]
    _write_private(out, {"user": SEED_USER, "access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]})


class _Psql:
    """psql on the test cluster, as sampledb.table_digests wants it."""

    def __init__(self, state):
        self.info = state["postgres"]

    def psql(self, sql, db="postgres"):
        env = dict(os.environ, PGHOST=self.info["host"], PGPORT=str(self.info["port"]), PGUSER=self.info["user"],
                   PGPASSWORD=self.info["password"])
        return subprocess.run([os.path.join(self.info["bindir"], "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                               "--dbname", db, "-c", sql], env=env, check=True, capture_output=True, text=True).stdout


def backups(state, root, db, out):
    """Run the host's seed script three times (older OpenSSL first), changing the database in between."""
    script = (root / "usr/local/bin/quankey-backup").read_text(encoding="utf-8")
    if " -pbkdf2 " not in script:
        raise SystemExit("%s/usr/local/bin/quankey-backup is not the seed's script" % root)
    env = dict(os.environ, CONFIG_FILE=str(root / "etc/quankey/backup.env"),
               PATH="%s:%s:%s" % (Path(sys.executable).parent, state["postgres"]["bindir"], os.environ["PATH"]),
               AWS_ENDPOINT_URL=state["s3"]["endpoint_url"], AWS_DEFAULT_REGION=state["s3"]["region"])
    pg = _Psql(state)
    made = []
    for options, kdf in VARIANTS:
        variant = root / "tmp" / "postgres-backup.sh"
        variant.write_text(script.replace(" -pbkdf2 ", " %s " % options if options else " "), encoding="utf-8")
        with open(str(root / "var/log/quankey/backup.log"), "a", encoding="utf-8") as log:
            done = subprocess.run(["bash", str(variant)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, check=False)
            log.write(done.stdout)
        variant.unlink()
        if done.returncode != 0:
            raise SystemExit("the seed's script failed (exit %d):\n%s" % (done.returncode, done.stdout))
        name = NAME_RE.search(done.stdout).group(1)
        made.append({"name": name, "kdf": kdf, "digests": sampledb.table_digests(pg, db)})
        pg.psql("INSERT INTO audit.events (what) VALUES ('after %s')" % name, db=db)
        time.sleep(1.1)  # the next backup's name, to the second, is another
    _write_private(out, {"database": db, "backups": made})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("iam-user", "backups"))
    parser.add_argument("--state", required=True, help="services.json of molecule/shared/services.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--root", help="backups: the host's root directory")
    parser.add_argument("--db", help="backups: the database (the seed's DB_NAME)")
    args = parser.parse_args(argv)
    state = json.loads(Path(args.state).read_text(encoding="utf-8"))
    if args.action == "iam-user":
        iam_user(state, args.out)
    else:
        backups(state, Path(args.root), args.db, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
