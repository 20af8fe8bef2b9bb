# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Names, metadata and selection: pure logic of the catalog (retention: test_retention.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents, layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, IntegrityError, NotFoundError

UTC = datetime.timezone.utc


def _when(day, hour=3):
    return datetime.datetime(2025, 8, day, hour, 0, 0, tzinfo=UTC)


def _records(days, host="db1", db="quankey_prod", prefix="", with_objects=True):
    meta = []
    objs = []
    for day in days:
        base = layout.backup_basename("quankey", _when(day))
        meta.append({"key": layout.metadata_key(prefix, host, db, base), "size": 400})
        if with_objects:
            objs.append({"key": layout.object_key(prefix, host, db, base), "size": 2 * 1024 * 1024})
    return layout.records_from_listing(prefix, meta, objs)[0]


def test_names_keep_the_seed_shape_per_host_and_db():
    base = layout.backup_basename("quankey", _when(9))
    assert base == "quankey_backup_20250809_030000"
    assert layout.object_key("", "db1", "quankey_prod", base) == \
        "backups/postgresql/db1/quankey_prod/quankey_backup_20250809_030000.encrypted"
    assert layout.metadata_key("team/", "db1", "quankey_prod", base) == \
        "team/metadata/db1/quankey_prod/quankey_backup_20250809_030000.meta"


def test_timestamp_is_utc_whatever_the_input_zone():
    cest = datetime.timezone(datetime.timedelta(hours=2))
    assert layout.format_timestamp(datetime.datetime(2025, 8, 9, 5, 0, 0, tzinfo=cest)) == "20250809_030000"


@pytest.mark.parametrize("text,expected", [
    ("20250809_030000", _when(9)),
    ("2025-08-09T03:00:00Z", _when(9)),
    ("2025-08-09 03:00", _when(9)),
    ("2025-08-09T05:00:00+02:00", _when(9)),
    ("2025-08-09", _when(9, 0)),
])
def test_parse_time_accepts_what_people_type(text, expected):
    assert layout.parse_time(text) == expected


def test_parse_time_says_what_it_accepts():
    with pytest.raises(ConfigError, match="ISO 8601"):
        layout.parse_time("yesterday-ish", "--before")


def test_listing_joins_metadata_and_objects_newest_first_and_reports_orphans():
    meta = [{"key": "metadata/db1/d/q_backup_20250801_030000.meta", "size": 1},
            {"key": "metadata/db1/d/q_backup_20250803_030000.meta", "size": 1},
            {"key": "metadata/db1/d/not-a-backup.txt", "size": 1}]
    objs = [{"key": "backups/postgresql/db1/d/q_backup_20250801_030000.encrypted", "size": 10},
            {"key": "backups/postgresql/db1/d/q_backup_20250802_030000.encrypted", "size": 20}]
    records, orphans = layout.records_from_listing("", meta, objs)
    assert [r.basename for r in records] == ["q_backup_20250803_030000", "q_backup_20250801_030000"]
    assert records[0].has_object is False
    assert records[1].object_size == 10
    assert [o["key"] for o in orphans] == ["backups/postgresql/db1/d/q_backup_20250802_030000.encrypted"]


def test_select_latest_by_name_and_before():
    records = _records([1, 5, 3])
    assert layout.select_backup(records).basename == "quankey_backup_20250805_030000"
    for spelled in ("quankey_backup_20250803_030000", "quankey_backup_20250803_030000.encrypted",
                    "quankey_backup_20250803_030000.meta", records[1].object_key):
        assert layout.select_backup(records, spelled).basename == "quankey_backup_20250803_030000"
    assert layout.select_backup(records, before=_when(5)).basename == "quankey_backup_20250803_030000"
    assert layout.select_backup(records, before=_when(4, 12)).basename == "quankey_backup_20250803_030000"


def test_select_failures_are_specific():
    records = _records([1, 2])
    with pytest.raises(NotFoundError, match="no backups found"):
        layout.select_backup([])
    with pytest.raises(NotFoundError, match="not found"):
        layout.select_backup(records, "quankey_backup_20990101_000000")
    with pytest.raises(NotFoundError, match="before 2025-07-01"):
        layout.select_backup(records, before=datetime.datetime(2025, 7, 1, tzinfo=UTC))


def _metadata():
    view = {"db_name": "quankey_prod", "retention_days": 30, "host": "db1", "storage_class": "STANDARD_IA",
            "compression": "zstd"}
    return documents.build_metadata(view, basename="quankey_backup_20250809_030000", when=_when(9),
                                    object_key="backups/postgresql/x.encrypted", size_bytes=1234, checksum="a" * 64,
                                    envelope={"type": "t"}, key_id="qk1-0011223344556677", table_count=7,
                                    dump_bytes=5000, duration=1.23456, server_version="15.18", pg_dump_version="15.18",
                                    database_settings={"encoding": "UTF8"}, encryption_name="aes-256-gcm")


def test_metadata_keeps_every_seed_field_and_round_trips():
    metadata = _metadata()
    for field in documents.SEED_FIELDS:
        assert field in metadata
    assert metadata["backup_type"] == "postgresql_full"
    assert metadata["format"] == "pg_dump_custom"
    assert metadata["timestamp"] == "20250809_030000"
    assert metadata["duration_seconds"] == 1.235
    raw = documents.encode_metadata(metadata)
    assert documents.decode_metadata(raw, "k") == json.loads(raw.decode())


@pytest.mark.parametrize("raw,match", [
    (b"not json", "not valid JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"backup_type": "postgresql_full"}', "lacks"),
])
def test_bad_metadata_is_named(raw, match):
    with pytest.raises(IntegrityError, match=match):
        documents.decode_metadata(raw, "metadata/db1/d/x.meta")


def test_metadata_with_a_malformed_checksum_is_rejected():
    metadata = _metadata()
    metadata["checksum_sha256"] = "abc"
    with pytest.raises(IntegrityError, match="checksum_sha256"):
        documents.decode_metadata(documents.encode_metadata(metadata), "k")


def test_the_seeds_flat_layout_becomes_seed_records_beside_host_ones():
    meta = [{"key": "p/metadata/quankey_backup_20250809_030000.meta", "size": 200},
            {"key": "p/metadata/db1/app/app_backup_20250810_030000.meta", "size": 900},
            {"key": "p/metadata/notes.txt", "size": 1}]
    objs = [{"key": "p/backups/postgresql/quankey_backup_20250809_030000.encrypted", "size": 5000},
            {"key": "p/backups/postgresql/db1/app/app_backup_20250810_030000.encrypted", "size": 7000}]
    records, orphans = layout.records_from_listing("p/", meta, objs)
    assert orphans == []
    ours, seed = records
    assert (ours.host, ours.db, ours.seed) == ("db1", "app", False)
    assert (seed.host, seed.db, seed.seed, seed.layout) == (None, None, True, "seed")
    assert seed.object_key == "p/backups/postgresql/quankey_backup_20250809_030000.encrypted" and seed.object_size == 5000
    assert seed.summary()["layout"] == "seed" and "layout" not in ours.summary()


SEED_META = {"backup_type": "postgresql_full", "database": "quankey_prod", "timestamp": "20250809_030000",
             "size_bytes": 15728640, "checksum_sha256": "a1" * 32, "encryption": "aes-256-cbc",
             "format": "pg_dump_custom", "retention_days": 30, "quantum_safe": True}
SEED_KEY = "metadata/quankey_backup_20250809_030000.meta"


def _seed(document, key=SEED_KEY):
    return documents.decode_metadata(json.dumps(document).encode(), key, seed=True, object_key_="o.encrypted")


def test_seed_metadata_is_completed_and_checked():
    done = _seed(SEED_META)
    assert dict((k, done[k]) for k in SEED_META) == SEED_META  # what the seed wrote is kept as it was
    assert (done["compression"], done["object_key"], done["table_count"]) == ("auto", "o.encrypted", None)
    assert "layout" not in done  # whether a backup is the seed's is known from its key, never from a field
    assert done["envelope"]["type"] == "openssl-enc-pbkdf2-sha256" and done["envelope"]["iterations"] == 10000
    with pytest.raises(IntegrityError, match="seed metadata object .* lacks checksum_sha256"):
        _seed(dict((k, v) for k, v in SEED_META.items() if k != "checksum_sha256"))
    with pytest.raises(IntegrityError, match="invalid encryption .aes-256-cbc expected"):
        _seed(dict(SEED_META, encryption="aes-256-gcm"))


@pytest.mark.parametrize("field", ["backup_type", "database", "timestamp", "size_bytes", "checksum_sha256", "encryption"])
def test_a_seed_meta_missing_any_required_field_is_refused_before_anything_is_restored(field):
    with pytest.raises(IntegrityError, match="lacks %s" % field):
        _seed(dict((k, v) for k, v in SEED_META.items() if k != field))


@pytest.mark.parametrize("field,value", [
    ("timestamp", "2025-08-09"), ("timestamp", "20251309_030000"), ("size_bytes", "15728640"), ("size_bytes", -1),
    ("size_bytes", True), ("database", ""), ("database", "a/b"), ("checksum_sha256", "A1" * 32), ("format", 7),
    ("retention_days", "30"), ("quantum_safe", "yes"), ("backup_type", "mysql"),
])
def test_a_seed_meta_with_a_malformed_field_is_refused_naming_it(field, value):
    with pytest.raises(IntegrityError, match="invalid %s" % field):
        _seed(dict(SEED_META, **{field: value}))


def test_a_seed_meta_whose_timestamp_contradicts_its_name_is_refused():
    with pytest.raises(IntegrityError, match="gives timestamp 20250810_030000 but its name says 20250809_030000"):
        _seed(dict(SEED_META, timestamp="20250810_030000"))


def test_fields_the_seed_did_not_define_are_dropped_so_they_cannot_steer_anything():
    done = _seed(dict(SEED_META, layout="host", host="db9", signature={"algorithm": "none"}, compression="none"))
    assert done["host"] is None and done["compression"] == "auto" and "signature" not in done and "layout" not in done


@pytest.mark.parametrize("extra", [{"layout": "seed"}, {"trusted": True}, {"allow_unsigned": True}])
def test_host_layout_metadata_with_a_field_the_format_does_not_define_is_refused(extra):
    metadata = dict(_metadata(), **extra)
    with pytest.raises(IntegrityError, match="which metadata version 5 does not define: it was not written by quankey"):
        documents.decode_metadata(documents.encode_metadata(metadata), "metadata/db1/d/x.meta")


@pytest.mark.parametrize("field,value", [
    ("size_bytes", "12"), ("size_bytes", True), ("timestamp", "yesterday"), ("host", ""), ("name", 7),
    ("envelope", "x"), ("table_count", -1), ("metadata_version", "3"),
])
def test_host_layout_metadata_with_a_mistyped_field_is_refused(field, value):
    metadata = dict(_metadata(), **{field: value})
    with pytest.raises(IntegrityError, match="invalid %s|metadata_version" % field):
        documents.decode_metadata(documents.encode_metadata(metadata), "metadata/db1/d/x.meta")


def test_metadata_from_a_newer_version_says_to_upgrade():
    metadata = dict(_metadata(), metadata_version=documents.METADATA_VERSION + 1)
    with pytest.raises(IntegrityError, match="newer than this version of quankey-backup reads"):
        documents.decode_metadata(documents.encode_metadata(metadata), "k")
