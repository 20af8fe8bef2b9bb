# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups made as the seed's scripts made them: stock pg_dump | gzip | openssl enc, uploaded with the AWS CLI.

Nothing here uses the engine: these are the bytes a seed host left in the bucket (flat layout,
``backups/postgresql/<name>.encrypted`` + ``metadata/<name>.meta``), for the functional tests.
"""

import os
import subprocess
import sys
from pathlib import Path

AWS = str(Path(sys.executable).parent / "aws")

SEED_BACKUP = r"""
set -euo pipefail
"$PGBIN/pg_dump" $DUMP_OPTIONS -d "$DB_NAME" \
  | $COMPRESS \
  | openssl enc -aes-256-cbc -salt $ENC_OPTIONS -pass env:SEED_PASS > "$W/$NAME.encrypted"
size=$(wc -c < "$W/$NAME.encrypted")
sum=$(sha256sum "$W/$NAME.encrypted" | cut -d' ' -f1)
fmt='{"backup_type": "postgresql_full", "database": "%s", "timestamp": "%s", "size_bytes": %s, "checksum_sha256": "%s", '
fmt="$fmt"'"encryption": "aes-256-cbc", "format": "pg_dump_custom", "retention_days": 30, "quantum_safe": true}\n'
printf "$fmt" "$DB_NAME" "${NAME##*_backup_}" "$size" "$sum" > "$W/$NAME.meta"
aws --endpoint-url "$S3_ENDPOINT_URL" s3 cp "$W/$NAME.encrypted" "s3://$S3_BUCKET/${S3_PREFIX}backups/postgresql/$NAME.encrypted" --only-show-errors
aws --endpoint-url "$S3_ENDPOINT_URL" s3 cp "$W/$NAME.meta" "s3://$S3_BUCKET/${S3_PREFIX}metadata/$NAME.meta" --only-show-errors
"""


def seed_backup(testbed, env, workdir, name, dump_options="-Fc", compress="gzip", enc_options="-pbkdf2", passphrase=None):
    """Make backup ``name`` (``<stem>_backup_<YYYYmmdd_HHMMSS>``) of env's DB_NAME the seed's way, under env's S3_PREFIX.

    The seed's script: ``pg_dump -Fc | gzip | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY``.
    Plausible variants: ``dump_options`` "" (plain SQL), ``compress`` "cat" or "zstd -q", ``enc_options`` "" (no
    -pbkdf2: EVP_BytesToKey sha256), "-md md5", "-pbkdf2 -iter 100000"; ``passphrase`` (default env's
    BACKUP_ENCRYPTION_KEY) is the text given to openssl.
    """
    run_env = dict(os.environ, **env)
    run_env.update(PGBIN=str(testbed.pg.bindir), W=str(workdir), NAME=name, PGHOST=env["DB_HOST"],
                   PGPORT=env["DB_PORT"], PGUSER=env["DB_USER"], S3_PREFIX=env["S3_PREFIX"] + "/",
                   PATH="%s:%s" % (Path(AWS).parent, os.environ["PATH"]), DUMP_OPTIONS=dump_options, COMPRESS=compress,
                   ENC_OPTIONS=enc_options, SEED_PASS=passphrase if passphrase is not None else env["BACKUP_ENCRYPTION_KEY"])
    subprocess.run(["bash", "-c", SEED_BACKUP], env=run_env, check=True)


def seed_keys(env, name):
    """(object key, metadata key) of a seed backup in the flat layout under env's S3_PREFIX."""
    return ("%s/backups/postgresql/%s.encrypted" % (env["S3_PREFIX"], name),
            "%s/metadata/%s.meta" % (env["S3_PREFIX"], name))
