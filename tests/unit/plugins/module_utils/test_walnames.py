# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The names PostgreSQL archives (catalog/walnames.py), their keys (catalog/layout.py) and the WAL object's form
(formats/walobject.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout, walnames
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, IntegrityError
from ansible_collections.quankey.backup.plugins.module_utils.formats import walobject


@pytest.mark.parametrize("name, kind, timeline", [
    ("000000010000000000000003", walnames.SEGMENT, "00000001"),
    ("0000000A00000003000000FF", walnames.SEGMENT, "0000000A"),
    ("000000020000000000000005.partial", walnames.PARTIAL, "00000002"),
    ("000000010000000000000003.00000028.backup", walnames.BACKUP_LABEL, "00000001"),
    ("00000002.history", walnames.HISTORY, "00000002"),
])
def test_every_file_postgresql_archives_is_named_with_its_timeline(name, kind, timeline):
    parsed = walnames.parse(name)
    assert (parsed.name, parsed.kind, parsed.timeline) == (name, kind, timeline)
    assert parsed.is_segment == (kind == walnames.SEGMENT)


@pytest.mark.parametrize("name", [
    "", "RECOVERYXLOG", "00000001000000000000003", "0000000100000000000000030", "000000010000000000000003x",
    "00000001000000000000000a", "000000000000000000000003", "00000000.history", "../000000010000000000000003",
    "pg_wal/000000010000000000000003", "000000010000000000000003.backup", None,
])
def test_anything_else_is_refused_saying_what_a_name_looks_like(name):
    with pytest.raises(ConfigError) as failure:
        walnames.parse(name, "restore_command's %f")
    assert "restore_command's %f" in str(failure.value) and "24 upper-case hex digits" in str(failure.value)


def test_the_segments_that_follow_cross_the_xlogid_boundary_by_the_segment_size():
    assert walnames.following("0000000100000000000000FE", 3) == [
        "0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001"]
    one_gib = 1024 ** 3  # 4 segments per xlogid
    assert walnames.following("000000030000000700000003", 2, one_gib) == ["000000030000000800000000",
                                                                          "000000030000000800000001"]
    assert walnames.following("000000010000000000000003", 0) == []
    assert walnames.following("00000002.history", 4) == []
    assert walnames.following("000000010000000000000003.partial", 4) == []


def test_numbers_and_names_are_inverse_and_order_like_the_names():
    names = ["000000010000000000000001", "0000000100000000000000FF", "000000010000000100000000",
             "000000010000000A00000010"]
    numbers = [walnames.segment_number(name) for name in names]
    assert numbers == sorted(numbers) and names == sorted(names)
    assert [walnames.segment_name(tl, number) for tl, number in numbers] == names
    assert walnames.segment_number("000000010000000100000000") == (1, 256)


@pytest.mark.parametrize("size", [0, 1024, 3 * 1024 * 1024, 2 * 1024 ** 3, "16M"])
def test_a_segment_size_postgresql_cannot_have_is_refused(size):
    with pytest.raises(ValueError):
        walnames.segments_per_xlogid(size)


def test_where_a_later_segment_is_looked_for():
    assert walnames.xlogid_prefixes("0000000100000002000000FF") == ["0000000100000002", "0000000100000003"]


def test_keys_are_per_host_and_timeline():
    assert layout.wal_key("team/", "db1", "00000001", "000000010000000000000003") == \
        "team/wal/db1/00000001/000000010000000000000003"
    assert layout.wal_prefix("", "db1") == "wal/db1/"
    assert layout.wal_prefix("") == "wal/"
    assert not layout.wal_prefix("").startswith(layout.object_prefix("")) and \
        not layout.wal_prefix("").startswith(layout.metadata_prefix(""))


def _document(**changes):
    document = walobject.build_document(
        host="db1", timeline="00000001", name="000000010000000000000003", object_key="wal/db1/00000001/x",
        size_bytes=16, checksum="a" * 64, compression="zstd", encryption="aes-256-gcm", key_id="qk1-0123456789abcdef",
        envelope={"type": "t"}, created_at="2025-08-09T03:00:00Z")
    document.update(changes)
    return document


def test_an_object_packs_and_unpacks():
    blob = walobject.pack(_document(), b"QKBK-data")
    assert blob[:4] == b"QKWL" and blob[4] == 1
    document, data = walobject.unpack(blob, "s3://b/k")
    assert document == _document() and bytes(data) == b"QKBK-data"


@pytest.mark.parametrize("blob, words", [
    (b"", "does not start with 'QKWL'"),
    (b"PGDMP" + b"\x00" * 20, "does not start with 'QKWL'"),
    (b"QKWL\x02\x00\x00\x00\x00\x00\x00\x02{}", "version 2"),
    (b"QKWL\x01\x00\x00\x00\x00\x00\x10\x00{}", "does not hold"),
    (b"QKWL\x01\x00\x00\x00\x00\x00\x00\x02[]", "not a JSON object"),
    (b"QKWL\x01\x00\x00\x00\x00\x00\x00\x03{x}", "not valid JSON"),
])
def test_a_damaged_or_foreign_object_is_refused_naming_it(blob, words):
    with pytest.raises(IntegrityError) as failure:
        walobject.unpack(blob, "s3://b/k")
    assert "s3://b/k" in str(failure.value) and words in str(failure.value)


@pytest.mark.parametrize("change, words", [
    ({"layout": "x"}, "field(s) 'layout'"),
    ({"size_bytes": -1}, "invalid size_bytes"),
    ({"timeline": "1"}, "invalid timeline"),
    ({"kind": "postgresql_full"}, "invalid kind"),
    ({"checksum_sha256": "A" * 64}, "invalid checksum_sha256"),
])
def test_a_document_is_checked_field_by_field(change, words):
    text = json.dumps(_document(**change)).encode()
    blob = b"QKWL\x01\x00\x00\x00" + len(text).to_bytes(4, "big") + text
    with pytest.raises(IntegrityError) as failure:
        walobject.unpack(blob, "s3://b/k")
    assert words in str(failure.value)


def test_a_missing_field_is_named():
    document = _document()
    del document["envelope"]
    with pytest.raises(IntegrityError, match="lacks envelope"):
        walobject.check_document(document, "k")
