# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only queries: the filtered listing (on an in-process S3) and the restore preview."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents, layout, trust
from ansible_collections.quankey.backup.plugins.module_utils.workflows import inventory, restore
from ansible_collections.quankey.backup.plugins.module_utils.errors import RefusedError

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

UTC = datetime.timezone.utc
BUCKET = "backups"
T0 = datetime.datetime(2025, 8, 1, 3, 0, 0, tzinfo=UTC)


@pytest.fixture
def s3(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _put_backup(client, host, db, when, size=100, metadata=True, object_=True):
    base = layout.backup_basename(db, when)
    if object_:
        client.put_object(Bucket=BUCKET, Key=layout.object_key("", host, db, base), Body=b"x" * size)
    if metadata:
        doc = {"backup_type": "postgresql_full", "database": db, "timestamp": layout.format_timestamp(when),
               "size_bytes": size, "checksum_sha256": "ab" * 32, "encryption": "aes-256-gcm", "format": "pg_dump_custom",
               "retention_days": 30, "quantum_safe": True, "compression": "zstd", "key_id": "qk1-0123456789abcdef",
               "envelope": {}, "object_key": layout.object_key("", host, db, base), "host": host, "table_count": 3,
               "name": base}
        client.put_object(Bucket=BUCKET, Key=layout.metadata_key("", host, db, base), Body=documents.encode_metadata(doc))
    return base


def _settings(**kwargs):
    return config.Settings(bucket=BUCKET, **kwargs)


def _names(found):
    return [item["name"] for item in found["backups"]]


def test_lists_every_host_newest_first_with_orphans(s3):
    old = _put_backup(s3, "db1", "app", T0)
    new = _put_backup(s3, "db2", "app", T0 + datetime.timedelta(days=1))
    other = _put_backup(s3, "db1", "crm", T0 + datetime.timedelta(hours=1))
    _put_backup(s3, "db1", "app", T0 + datetime.timedelta(days=2), metadata=False)  # uncommitted
    found = inventory.find_backups(_settings())
    assert _names(found) == [new, other, old]
    assert found["orphans"] == ["backups/postgresql/db1/app/app_backup_20250803_030000.encrypted"]
    assert "checksum_sha256" not in found["backups"][0]


def test_filters_by_host_db_since_and_limit(s3):
    names = [_put_backup(s3, "db1", "app", T0 + datetime.timedelta(days=day)) for day in range(5)]
    _put_backup(s3, "db2", "app", T0 + datetime.timedelta(days=9))
    _put_backup(s3, "db1", "crm", T0 + datetime.timedelta(days=9))
    assert _names(inventory.find_backups(_settings(), host="db1", db="app")) == names[::-1]
    assert _names(inventory.find_backups(_settings(), db="app")) == ["app_backup_20250810_030000"] + names[::-1]
    since = T0 + datetime.timedelta(days=3)
    assert _names(inventory.find_backups(_settings(), host="db1", db="app", since=since)) == [names[4], names[3]]
    assert _names(inventory.find_backups(_settings(), host="db1", db="app", limit=2)) == [names[4], names[3]]


def test_details_read_the_metadata(s3):
    _put_backup(s3, "db1", "app", T0, size=321)
    backup = inventory.find_backups(_settings(), details=True)["backups"][0]
    assert (backup["size_bytes"], backup["checksum_sha256"], backup["key_id"], backup["table_count"]) == (
        321, "ab" * 32, "qk1-0123456789abcdef", 3)
    assert backup["object_size"] == 321
    # the trust verdict restore would give; no key is configured here, so the signature is not checked
    assert (backup["signature"], backup["trusted"]) == ("not checked (no signing key here)", False)


def test_details_flag_a_document_copied_from_another_host_whatever_the_keys(s3):
    base = _put_backup(s3, "db1", "app", T0)
    document = s3.get_object(Bucket=BUCKET, Key=layout.metadata_key("", "db1", "app", base))["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=layout.object_key("", "db2", "app", base), Body=b"x" * 100)
    s3.put_object(Bucket=BUCKET, Key=layout.metadata_key("", "db2", "app", base), Body=document)
    found = dict((item["host"], item) for item in inventory.find_backups(_settings(), details=True)["backups"])
    assert found["db2"]["signature"] == "invalid" and found["db2"]["trusted"] is False
    assert found["db1"]["signature"] == "not checked (no signing key here)"


def test_listings_are_paginated(s3):
    """More than one page (1,000 keys) of metadata and objects: every backup is found."""
    for number in range(1105):
        _put_backup(s3, "db1", "app", T0 + datetime.timedelta(minutes=number))
    found = inventory.find_backups(_settings(), host="db1", db="app")
    assert len(found["backups"]) == 1105 and found["orphans"] == []
    assert found["backups"][0]["name"] == layout.backup_basename("app", T0 + datetime.timedelta(minutes=1104))


class _Record:
    host, db, basename = "db1", "app", "app_backup_20250801_030000"
    seed = False
    object_key = "backups/postgresql/db1/app/app_backup_20250801_030000.encrypted"
    metadata_key = "metadata/db1/app/app_backup_20250801_030000.meta"
    timestamp = T0
    metadata = {"timestamp": "20250801_030000", "table_count": 3}
    verdict = trust.Verdict(trust.VALID, "qk1-0123456789abcdef")


def _server_checks(monkeypatch, calls=None):
    """The key and server checks of the preview (restore.py's, tested on the fakes) as stubs that record their calls."""
    calls = {} if calls is None else calls
    monkeypatch.setattr(restore, "decryptor_factory", lambda context, store, record: calls.setdefault("keys", record))
    monkeypatch.setattr(restore, "check_target", lambda settings, pg, target, force=False: calls.setdefault(
        "target", (target, force)) and False)
    monkeypatch.setattr(restore, "check_restore_role", lambda settings, pg, role, create=False: calls.setdefault(
        "role", (role, create)) and True)
    return calls


def test_preview_restore_verifies_exactly_the_selected_backup(monkeypatch):
    calls = _server_checks(monkeypatch)

    def select(settings, store, backup, before, host, db, context=None, allow_seed=None):
        calls["select"] = (backup, before, host, db, allow_seed)
        return _Record()

    def run_verify(settings, **kwargs):
        calls["verify"] = kwargs
        return {"checksum_ok": True, "table_count": 3}

    monkeypatch.setattr(restore, "select", select)
    monkeypatch.setattr(restore, "run_verify", run_verify)
    store, pg = object(), object()
    plan, verification = restore.preview_restore(_settings(), backup="latest", before=T0, host=None, db="app",
                                                 store=store, pg=pg)
    assert calls["select"] == ("latest", T0, None, "app", False)
    assert calls["verify"] == {"backup": "app_backup_20250801_030000", "host": "db1", "db": "app", "store": store,
                               "progress": None, "allow_unsigned": False, "allow_seed": False, "pg": pg}
    assert (calls["target"], calls["role"]) == (("app_restored_20250801_030000", False), ("quankey_restore", False))
    assert plan == {"name": "app_backup_20250801_030000", "object_key": _Record.object_key,
                    "metadata_key": _Record.metadata_key, "source_host": "db1", "source_db": "app",
                    "timestamp": "20250801_030000", "target_db": "app_restored_20250801_030000",
                    "expected_table_count": 3, "signature": "valid (key qk1-0123456789abcdef)", "trusted": True,
                    "sql_runs_as": "quankey_restore", "restore_role_exists": True, "target_exists": False,
                    "source_trusted": False, "globals": None}
    assert verification == {"checksum_ok": True, "table_count": 3}


def test_preview_restore_keeps_a_given_target(monkeypatch):
    _server_checks(monkeypatch)
    monkeypatch.setattr(restore, "select", lambda *args, **kwargs: _Record())
    monkeypatch.setattr(restore, "run_verify", lambda settings, **kwargs: {})
    plan, _verification = restore.preview_restore(_settings(), target_db="incident", store=object(), pg=object())
    assert plan["target_db"] == "incident"


def test_check_mode_refuses_a_target_name_the_real_run_would_refuse(monkeypatch):
    calls = _server_checks(monkeypatch)
    monkeypatch.setattr(restore, "select", lambda *args, **kwargs: _Record())
    monkeypatch.setattr(restore, "run_verify", lambda settings, **kwargs: pytest.fail("verified a doomed restore"))
    with pytest.raises(RefusedError, match="longer than PostgreSQL's 63 bytes"):
        restore.preview_restore(_settings(), target_db="é" * 32, store=object(), pg=object())
    assert "keys" in calls and "target" not in calls  # the keys were tried first, the server never asked
