# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/rotate_key.yml played for real: ansible-playbook against localhost with the collection of this
checkout, the backup_rekey module on the test bed's S3, backups taken by the installed command."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK = ROOT / "playbooks" / "rotate_key.yml"


def _key():
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _kid(key):
    return crypto.key_id(base64.b64decode(key))


def _cli(env, *args):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    full.update(env)
    proc = subprocess.run([str(BIN / "quankey-backup")] + list(args), env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def fleet(testbed, tmp_path):
    """A source database backed up twice with the old key as host db1, and the inventory variables of that host."""
    source = "rotate_%s" % os.urandom(4).hex()
    testbed.pg.create_database(source)
    testbed.pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g", db=source)
    env = testbed.backup_env(source)
    env.update(S3_PREFIX="fleet-%s" % os.urandom(4).hex(), BACKUP_HOST_ID="db1", BACKUP_ENCRYPTION_KEY=_key())
    taken = [json.loads(_cli(dict(env, BACKUP_NAME=name), "backup", "--json")) for name in ("first", "second")]
    collections = tmp_path / "collections" / "ansible_collections" / "quankey"
    collections.mkdir(parents=True)
    (collections / "backup").symlink_to(ROOT)
    host_vars = {
        "target": "all", "ansible_become": False, "rotate_key_python": sys.executable,
        "pg_backup_s3_bucket": env["S3_BUCKET"], "pg_backup_s3_prefix": env["S3_PREFIX"], "pg_backup_host_id": "db1",
        "pg_backup_s3_region": env["AWS_DEFAULT_REGION"], "pg_backup_s3_endpoint_url": env["S3_ENDPOINT_URL"],
        "pg_backup_aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "pg_backup_aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "pg_backup_encryption_key": env["BACKUP_ENCRYPTION_KEY"],
    }
    return {"env": env, "taken": taken, "vars": host_vars, "tmp": tmp_path}


def _play(fleet, extra, *options):
    path = fleet["tmp"] / "vars.json"
    path.write_text(json.dumps(dict(fleet["vars"], **extra)))
    os.chmod(str(path), 0o600)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(fleet["tmp"] / "collections"), ANSIBLE_NOCOWS="1",
               ANSIBLE_LOCAL_TEMP=str(fleet["tmp"] / "ansible-tmp"), ANSIBLE_RETRY_FILES_ENABLED="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    for name in [name for name in env if name.startswith(("BACKUP_", "AWS_", "S3_"))]:
        del env[name]  # the module must get everything from the playbook, nothing from this process
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", "@%s" % path,
                           str(PLAYBOOK)] + list(options), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)


def _metadata(testbed, fleet, item):
    body = testbed.moto.client().get_object(Bucket=fleet["env"]["S3_BUCKET"], Key=item["metadata_key"])["Body"].read()
    return json.loads(body)


def _etag(testbed, fleet, item):
    return testbed.moto.client().head_object(Bucket=fleet["env"]["S3_BUCKET"], Key=item["object_key"])["ETag"]


def test_rotate_key_playbook_checks_then_rekeys_then_finds_nothing_to_do(testbed, fleet):
    old, new = fleet["env"]["BACKUP_ENCRYPTION_KEY"], _key()
    secrets = (old, new, fleet["env"]["AWS_SECRET_ACCESS_KEY"])
    etags = [_etag(testbed, fleet, item) for item in fleet["taken"]]

    check = _play(fleet, {"rotate_key_new": new}, "--check")
    assert check.returncode == 0, check.stdout
    assert "would rekey 2 backup(s) to key %s; 0 failed" % _kid(new) in check.stdout
    assert "check mode: nothing was written" in check.stdout and "changed=1" in check.stdout
    assert all(_metadata(testbed, fleet, item)["key_id"] == _kid(old) for item in fleet["taken"])

    done = _play(fleet, {"rotate_key_new": new})
    assert done.returncode == 0, done.stdout
    assert "rekeyed 2 backup(s) to key %s; 0 failed" % _kid(new) in done.stdout
    assert "next: set vault_pg_backup_encryption_key to the new key" in done.stdout
    assert [_metadata(testbed, fleet, item)["key_id"] for item in fleet["taken"]] == [_kid(new)] * 2
    assert [_etag(testbed, fleet, item) for item in fleet["taken"]] == etags

    # the vault now holds the new key, the old one is given as rotate_key_old: nothing left to do
    after = _play(fleet, {"rotate_key_new": new, "pg_backup_encryption_key": new, "rotate_key_old": [old]})
    assert after.returncode == 0, after.stdout
    assert "rekeyed 0 backup(s)" in after.stdout and "the rotation is complete when" in after.stdout
    assert "changed=0" in after.stdout
    for proc in (check, done, after):
        for secret in secrets:
            assert secret not in proc.stdout
    _cli(dict(fleet["env"], BACKUP_ENCRYPTION_KEY=new), "verify")


def test_rotate_key_playbook_fails_the_host_when_a_backup_cannot_be_opened(testbed, fleet):
    new = _key()
    result = _play(fleet, {"rotate_key_new": new, "rotate_key_old": [_key()]})  # not the key that made them
    assert result.returncode != 0
    assert "2 of 2 backups could not be rekeyed and were left as they were" in result.stdout
    assert "wrapped with key %s" % _kid(fleet["env"]["BACKUP_ENCRYPTION_KEY"]) in result.stdout
    assert all(_metadata(testbed, fleet, item)["key_id"] == _kid(fleet["env"]["BACKUP_ENCRYPTION_KEY"])
               for item in fleet["taken"])


def test_rotate_key_playbook_needs_a_new_key(fleet):
    result = _play(fleet, {})
    assert result.returncode != 0 and "rotate_key_new is not set" in result.stdout
