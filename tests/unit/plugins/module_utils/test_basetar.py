# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A base backup's tar checked as it streams against its manifest (formats/basetar.py), its metadata
(catalog/documents.py) and its keys (catalog/layout.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import datetime
import hashlib
import io
import json
import tarfile

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents, layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import IntegrityError
from ansible_collections.quankey.backup.plugins.module_utils.formats import basetar
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import base_tar


def _check(data, chunk=65536):
    checker = basetar.TarChecker()
    for pos in range(0, len(data), chunk):
        assert checker.feed(data[pos:pos + chunk]) is True
    return checker.finish()


@pytest.mark.parametrize("chunk", [1, 511, 512, 513, 4096, 10 ** 7])
def test_a_whole_base_backup_checks_in_chunks_of_any_size(chunk):
    data = base_tar(start="0/3000028", stop="0/3000138", timeline=2)
    found = _check(data, chunk)
    assert (found["start_lsn"], found["stop_lsn"], found["timeline"]) == ("0/3000028", "0/3000138", 2)
    assert found["start_wal_file"] == "000000020000000000000002" and found["checkpoint_lsn"] == "0/2000060"
    assert found["manifest"]["files"] == 6 and found["tar_bytes"] == len(data)
    assert found["manifest"]["data_bytes"] == sum(len(item) for item in (
        b"15\n", bytes(range(256)) * 64, b"\x00" * 24576, b"c" * 8192, b"# auto\n")) + len(found["backup_label"])
    manifest = tarfile.open(fileobj=io.BytesIO(data)).extractfile("backup_manifest").read()
    assert found["manifest"]["sha256"] == hashlib.sha256(manifest).hexdigest()
    assert found["manifest"]["size_bytes"] == len(manifest)
    assert found["backup_label"].startswith("START WAL LOCATION: 0/3000028")


def test_a_changed_file_is_named_with_both_checksums():
    data = base_tar(in_tar={"base/1/1259": b"\x01" + bytes(range(256)) * 64})
    with pytest.raises(IntegrityError, match="base/1/1259 is 16385 bytes in the tar, 16384 in its manifest"):
        _check(data)
    same_size = base_tar(in_tar={"global/pg_control": b"d" * 8192})
    with pytest.raises(IntegrityError, match="global/pg_control has SHA-256 %s, its manifest says %s"
                       % (hashlib.sha256(b"d" * 8192).hexdigest(), hashlib.sha256(b"c" * 8192).hexdigest())):
        _check(same_size)


def test_a_missing_file_and_an_unlisted_file_are_refused():
    with pytest.raises(IntegrityError, match="manifest lists PG_VERSION, which its tar does not hold"):
        _check(base_tar(in_tar={"PG_VERSION": None}))
    with pytest.raises(IntegrityError, match="tar holds base/1/16384, which its manifest does not list"):
        _check(base_tar(in_tar={"base/1/16384": b"new"}))


def test_a_manifest_changed_after_it_was_written_fails_its_own_checksum():
    data = bytearray(base_tar())
    at = bytes(data).index(b'"End-LSN": "0/2000100"')
    data[at + 14:at + 21] = b"2000200"
    with pytest.raises(IntegrityError, match="does not match its own Manifest-Checksum"):
        _check(bytes(data))  # same size: only the manifest's own checksum can tell


def test_without_manifest_label_or_sha256_checksums_nothing_is_believed():
    with pytest.raises(IntegrityError, match="holds no backup_manifest"):
        _check(base_tar(manifest=False))
    with pytest.raises(IntegrityError, match="holds no backup_label"):
        _check(base_tar(in_tar={"backup_label": None}, in_manifest={"backup_label": None}))
    with pytest.raises(IntegrityError, match="checksum algorithm 'CRC32C', not SHA256"):
        _check(base_tar(algorithm="CRC32C"))
    with pytest.raises(IntegrityError, match="backup_label starts at 0/1000028 but its manifest at 0/2000028"):
        _check(base_tar(label_start="0/1000028"))


def test_a_cut_stream_a_damaged_header_and_data_after_the_end_are_refused():
    data = base_tar()
    end = len(data.rstrip(b"\x00"))
    with pytest.raises(IntegrityError, match="cut short"):
        _check(data[:end])
    with pytest.raises(IntegrityError, match="cut short"):
        _check(data[:end - 100])
    header = bytearray(data)
    header[600] ^= 0x01  # in the second member's header (its name)
    with pytest.raises(IntegrityError, match="header whose checksum is wrong"):
        _check(bytes(header))
    with pytest.raises(IntegrityError, match="data after its end"):
        _check(data + b"\x00" * 512 + b"garbage" + b"\x00" * 505)


def test_members_outside_the_data_directory_and_device_files_are_refused():
    for name, kind, problem in (("../etc/passwd", tarfile.REGTYPE, "outside the data directory"),
                                ("dev", tarfile.CHRTYPE, "of type '3', which pg_basebackup never writes")):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        with pytest.raises(IntegrityError, match=problem):
            _check(out.getvalue())


def test_large_sizes_in_base_256_and_lsns_compare_as_numbers():
    field = bytes([0x80]) + (9 * 1024 ** 3).to_bytes(11, "big")
    assert basetar._number(field, 0) == 9 * 1024 ** 3  # pylint: disable=protected-access
    assert basetar._number(b"00000001000\x00", 0) == 512  # pylint: disable=protected-access
    assert basetar.lsn_value("1/0") > basetar.lsn_value("0/FFFFFFFF") > basetar.lsn_value("0/2000028")
    with pytest.raises(ValueError):
        basetar.lsn_value("0/20000z8")


# --------------------------------------------------------------------------- metadata and keys

WHEN = datetime.datetime(2026, 12, 1, 14, 0, 0, tzinfo=datetime.timezone.utc)


def _metadata():
    checked = _check(base_tar())
    view = {"host": "db1", "compression": "zstd", "retention_days": 30, "storage_class": "STANDARD"}
    return documents.build_base_metadata(
        view, basename="quankey_base_20261201_140000", when=WHEN, object_key="base/db1/quankey_base_20261201_140000.tar.enc",
        size_bytes=10, checksum="a" * 64, tar_bytes=checked["tar_bytes"], envelope={"type": "x"}, key_id="k1",
        encryption_name="aes-256-gcm", duration=1.5, server_version="15.8", pg_basebackup_version="15.8",
        system_identifier="7300000000000000001", checked=checked)


def test_base_metadata_reads_back_strictly_and_is_never_taken_for_a_dump():
    metadata = _metadata()
    data = documents.encode_metadata(metadata)
    assert documents.decode_base_metadata(data, "k") == json.loads(data.decode("utf-8"))
    assert metadata["backup_type"] == "postgresql_base" and metadata["manifest"]["files"] == 6
    with pytest.raises(IntegrityError, match="describes a physical base backup .* not a dump"):
        documents.decode_metadata(data, "metadata/db1/app/x_backup_20261201_140000.meta")
    for change, problem in (({"start_lsn": "2000028"}, "invalid start_lsn"), ({"extra": 1}, "field\\(s\\) 'extra'"),
                            ({"backup_type": "postgresql_full"}, "not a physical base backup's")):
        changed = dict(copy.deepcopy(metadata), **change)
        with pytest.raises(IntegrityError, match=problem):
            documents.decode_base_metadata(documents.encode_metadata(changed), "k")
    dropped = dict(metadata)
    del dropped["timeline"]
    with pytest.raises(IntegrityError, match="lacks timeline"):
        documents.decode_base_metadata(documents.encode_metadata(dropped), "k")


def test_base_keys_live_apart_from_the_dumps_and_list_newest_first():
    name = layout.base_basename("quankey", WHEN)
    assert name == "quankey_base_20261201_140000" and not layout.is_basename(name)
    assert layout.is_base_basename(name) and layout.is_base_basename("p/base/db1/%s.tar.enc" % name)
    assert not layout.is_base_basename("quankey_backup_20261201_140000")
    obj, meta = layout.base_object_key("p/", "db1", name), layout.base_metadata_key("p/", "db1", name)
    assert (obj, meta) == ("p/base/db1/%s.tar.enc" % name, "p/base/db1/%s.meta" % name)
    assert not obj.startswith(layout.object_prefix("p/")) and not meta.startswith(layout.metadata_prefix("p/"))
    older = layout.base_basename("quankey", WHEN - datetime.timedelta(days=1))
    listing = [{"key": meta, "size": 1}, {"key": obj, "size": 99},
               {"key": layout.base_metadata_key("p/", "db2", older), "size": 1},
               {"key": layout.base_object_key("p/", "db2", "quankey_base_20261130_000000"), "size": 5},
               {"key": "p/base/db1/notes.txt", "size": 3}]
    records, orphans = layout.base_records_from_listing("p/", listing)
    found = [(item.host, item.basename, item.object_size) for item in records]
    assert found == [("db1", name, 99), ("db2", older, None)]
    assert [item["key"] for item in orphans] == ["p/base/db2/quankey_base_20261130_000000.tar.enc"]
    assert records[0].summary()["kind"] == "base" and records[0].db == layout.BASE_BINDING_DATABASE
    # the dumps' own listing does not see any of them
    assert layout.records_from_listing("p/", listing, listing) == ([], [])
