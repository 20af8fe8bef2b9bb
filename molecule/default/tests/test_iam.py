# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rendered IAM policy, proven on an S3 endpoint that enforces IAM (moto_server with
INITIAL_NO_AUTH_ACTION_COUNT): a host's IAM user holds exactly the policy its role rendered and its keys are
the ones in its env file. Backup, list and restore of its own prefix are proven in test_end_to_end.py; here,
prune of its own prefix, and denial of every write and read of another host's prefix.

moto evaluates actions and resources but not the StringLike condition on s3:prefix, so the narrowing of
ListBucket to the host's prefixes is enforced by AWS, not proven here.
"""

import json

import pytest
from botocore.exceptions import ClientError

from conftest import read_env_file, s3_client


@pytest.fixture(scope="module", autouse=True)
def _policies(policies_attached):
    return policies_attached


def _prefix(env):
    prefix = env.get("S3_PREFIX", "").strip().strip("/")
    return prefix + "/" if prefix else ""


def _keys(env, host_id, db, basename):
    return ("%sbackups/postgresql/%s/%s/%s.encrypted" % (_prefix(env), host_id, db, basename),
            "%smetadata/%s/%s/%s.meta" % (_prefix(env), host_id, db, basename))


@pytest.mark.parametrize("name", ["db1", "db2"])
def test_prune_deletes_expired_backups_in_its_own_prefix(name, hosts, services, admin_s3):
    host = hosts[name]
    env = read_env_file(host)
    bucket, db = services["s3"]["bucket"], env["DB_NAME"]
    expired = _keys(env, name, db, "%s_backup_20200101_000000" % db)
    for key in expired:  # an expired backup (and unreadable: so no keep-the-newest rule protects it)
        admin_s3.put_object(Bucket=bucket, Key=key, Body=b"expired")
    out = host.run("runuser -u quankey-backup -- quankey-backup prune --json")
    assert out.rc == 0, out.stderr
    assert "%s_backup_20200101_000000" % db in json.loads(out.stdout)["deleted"]
    for key in expired:
        with pytest.raises(ClientError):
            admin_s3.head_object(Bucket=bucket, Key=key)


def test_keys_write_their_own_prefix_but_not_another_hosts(hosts, services, admin_s3):
    bucket = services["s3"]["bucket"]
    mine = read_env_file(hosts["db1"])
    other = read_env_file(hosts["db2"])
    client = s3_client(services, mine["AWS_ACCESS_KEY_ID"], mine["AWS_SECRET_ACCESS_KEY"])
    own_object, own_meta = _keys(mine, "db1", mine["DB_NAME"], "probe_backup_20250101_000000")
    client.put_object(Bucket=bucket, Key=own_meta, Body=b"{}")
    client.delete_object(Bucket=bucket, Key=own_meta)
    other_object, other_meta = _keys(other, "db2", other["DB_NAME"], "intruder_backup_20250101_000000")
    for key in (other_object, other_meta):
        with pytest.raises(ClientError) as denied:
            client.put_object(Bucket=bucket, Key=key, Body=b"not yours")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as denied:
        client.create_multipart_upload(Bucket=bucket, Key=other_object)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # nor read or delete what another host stored
    latest = json.loads(hosts["db2"].check_output("quankey-backup list --json"))["backups"][0]
    for call in (client.get_object, client.delete_object):
        with pytest.raises(ClientError) as denied:
            call(Bucket=bucket, Key=latest["object_key"])
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    admin_s3.head_object(Bucket=bucket, Key=latest["object_key"])  # still there
    assert "Contents" not in admin_s3.list_objects_v2(Bucket=bucket, Prefix=other_object.rsplit("/", 1)[0] + "/intruder")


def test_the_installed_command_is_refused_another_hosts_prefix(hosts, services, admin_s3):
    # db1's command, told to act as db3 (no S3 prefix, like db1): its keys do not reach db3's keys
    out = hosts["db1"].run("BACKUP_HOST_ID=db3 quankey-backup backup")
    assert out.rc == 5, out.stderr
    assert "S3 access denied" in out.stderr and "check the IAM policy for this host's prefix" in out.stderr
    listing = admin_s3.list_objects_v2(Bucket=services["s3"]["bucket"], Prefix="backups/postgresql/db3/app_db1/")
    assert "Contents" not in listing
