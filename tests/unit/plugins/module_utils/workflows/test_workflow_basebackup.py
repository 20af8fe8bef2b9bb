# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`basebackup` and its `verify` (workflows/basebackup.py) on the in-memory bucket with a fake pg_basebackup: what
is stored and signed, the failure paths (nothing committed), what a writer to the bucket cannot pass off, and that
the dumps' commands never take a base backup for a dump. tests/functional/test_basebackup.py does it for real."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import cli
from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents
from ansible_collections.quankey.backup.plugins.module_utils.errors import (ChecksumMismatchError, ConfigError,
                                                                            IntegrityError, NotFoundError,
                                                                            PostgresError, RefusedError, StorageError,
                                                                            TamperedError)
from ansible_collections.quankey.backup.plugins.module_utils.workflows import basebackup, inventory
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import FakePg, base_tar

WHEN = datetime.datetime(2026, 12, 1, 14, 0, 0, tzinfo=datetime.timezone.utc)
NAME = "cluster_base_20261201_140000"
OBJECT, META = "base/db1/%s.tar.enc" % NAME, "base/db1/%s.meta" % NAME


def _take(settings, store, pg, when=WHEN, **cluster):
    cluster.setdefault("base_tar", base_tar())
    pg.set_cluster(**cluster)
    return basebackup.run_basebackup(settings, store=store, pg=pg, now=when)


def test_a_base_backup_is_stored_encrypted_signed_and_verifies(settings, store, pg):
    done = _take(settings, store, pg)
    assert store.keys() == [META, OBJECT]
    assert (done["name"], done["start_lsn"], done["stop_lsn"], done["timeline"]) == (NAME, "0/2000028", "0/2000100", 1)
    assert done["files"] == 6 and done["system_identifier"] == "7300000000000000001"
    stored = store.data(OBJECT)
    assert stored[:4] == b"QKBK" and b"START WAL LOCATION" not in stored and b"PostgreSQL-Backup-Manifest" not in stored
    metadata = documents.decode_base_metadata(store.data(META), META)
    assert metadata["signature"]["key_id"] == done["signing_key_id"] and metadata["tar_bytes"] == len(base_tar())
    assert metadata["backup_label"].startswith("START WAL LOCATION: 0/2000028")
    verified = basebackup.run_verify_base(settings, store=store)
    assert verified["manifest_ok"] and verified["trusted"] and verified["name"] == NAME
    assert verified["files"] == 6 and verified["tar_bytes"] == metadata["tar_bytes"]
    listed = basebackup.find_base_backups(settings, host="db1", details=True, store=store)
    assert [(item["kind"], item["name"], item["trusted"], item["stop_lsn"]) for item in listed] == [
        ("base", NAME, True, "0/2000100")]
    assert inventory.list_backups(settings, store) == ([], [])  # the dumps' listing never sees it


def test_a_tar_that_disagrees_with_its_manifest_is_never_committed(settings, store, pg):
    with pytest.raises(IntegrityError, match="global/pg_control has SHA-256") as failure:
        _take(settings, store, pg, base_tar=base_tar(in_tar={"global/pg_control": b"x" * 8192}))
    assert failure.value.step == "pg_basebackup"
    assert store.keys() == [] and list(store.list_multipart_uploads("")) == []


def test_pg_basebackup_failures_say_how_to_fix_the_replication_connection(settings, store, pg):
    stderr = ('pg_basebackup: error: connection to server failed: FATAL:  no pg_hba.conf entry for replication '
              'connection from host "10.0.0.5", user "postgres", no encryption')
    with pytest.raises(PostgresError, match="add `host replication postgres <this host's address> scram-sha-256`"):
        _take(settings, store, pg, base_tar=b"", status=1, stderr=stderr)
    assert store.keys() == [] and list(store.list_multipart_uploads("")) == []
    with pytest.raises(PostgresError, match="pg_basebackup exited with status 1"):
        _take(settings, store, pg, base_tar=base_tar()[:5000], status=1, stderr="error: connection lost")
    assert store.keys() == []


def test_an_upload_failing_mid_stream_fails_the_base_backup_and_leaves_no_upload(settings, store, pg):
    """The parts go out while pg_basebackup still streams (sealed and uploaded on their own thread): a part refused
    for good reaches the command, which aborts the upload."""
    big = base_tar({"PG_VERSION": b"15\n", "base/1/16384": os.urandom(20 * 1024 * 1024)})  # parts before the end
    store.inject("upload_part", before=StorageError("S3 UploadPart failed: connection reset"), times=None)
    with pytest.raises(StorageError, match="connection reset"):
        _take(settings, store, pg, base_tar=big)
    assert store.keys() == [] and list(store.list_multipart_uploads("")) == []


def test_over_the_local_socket_the_fix_named_is_a_local_replication_line(make_settings, store, tmp_path):
    settings = make_settings(DB_HOST="/var/run/postgresql", DB_USER="postgres")  # the role's scheduled base backup
    pg = FakePg(settings, str(tmp_path / "pg"))
    stderr = ('pg_basebackup: error: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: '
              'FATAL:  no pg_hba.conf entry for replication connection from host "[local]", user "postgres"')
    with pytest.raises(PostgresError, match="add `local replication postgres peer` to pg_hba.conf"):
        _take(settings, store, pg, base_tar=b"", status=1, stderr=stderr)
    assert store.keys() == []


def test_extra_tablespaces_and_a_login_without_replication_are_refused_first(settings, store, pg):
    with pytest.raises(RefusedError, match="tablespace\\(s\\) beyond pg_default and pg_global \\(fast at /ssd/pg\\)"):
        _take(settings, store, pg, tablespaces=[("fast", "/ssd/pg")])
    with pytest.raises(ConfigError, match="needs the REPLICATION attribute"):
        _take(settings, store, pg, replication=False)
    assert store.keys() == []


def test_verify_refuses_changed_metadata_and_a_swapped_object(settings, store, pg):
    _take(settings, store, pg)
    later = WHEN + datetime.timedelta(hours=1)
    _take(settings, store, pg, when=later, base_tar=base_tar(start="0/5000028", stop="0/5000100"))
    other = "base/db1/cluster_base_20261201_150000.tar.enc"
    original = store.data(META)
    changed = json.loads(original.decode("utf-8"))
    changed["stop_lsn"] = "0/9000000"
    store.put_object(META, documents.encode_metadata(changed))
    with pytest.raises(TamperedError, match="signature invalid"):
        basebackup.run_verify_base(settings, NAME, store=store)
    store.put_object(META, original)
    store.put_object(OBJECT, store.data(other))
    with pytest.raises((ChecksumMismatchError, IntegrityError)):
        basebackup.run_verify_base(settings, NAME, store=store)
    with pytest.raises(NotFoundError, match="base backup 'quankey_base_20200101_000000' of host db1 not found"):
        basebackup.run_verify_base(settings, "quankey_base_20200101_000000", store=store)


def test_the_dumps_commands_refuse_a_base_backup_by_name(settings, store, pg):
    _take(settings, store, pg)
    with pytest.raises(RefusedError, match="%s is a physical base backup .* not a dump" % NAME):
        inventory.select(settings, store, NAME)
    args = cli._parser().parse_args(["verify", "--backup", NAME])  # pylint: disable=protected-access
    assert args.backup == NAME and not args.base
    assert cli._parser().parse_args(["basebackup", "--fast"]).fast  # pylint: disable=protected-access
