# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's metadata document: its fields, how it is built, written and read back (docs/FORMAT.md, "Metadata object").

Reading is strict: a document of our host layout may hold only the fields its version defines, each of
the right type; a ``.meta`` of the seed's flat layout is checked field by field and completed to what
restore and health read. The caller says which layout a document is from (its key), never the document."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

from ..errors import IntegrityError
from ..formats import globaldoc, openssl_enc, pgarchive
from .layout import UTC, METADATA_SUFFIX, basename_timestamp, format_timestamp, parse_timestamp

# 2: signed (signing.py); 3: data key wrapped with the backup's identity (FORMAT.md, version 2); 4: globals;
# 5: range indexes; 6: row counts (BACKUP_COUNT_ROWS). A backup without row counts is still written as version 5, so
# that readers of version 5 read it: only a document that holds row_counts says 6.
METADATA_VERSION = 6
ROW_COUNTS_VERSION = 6


def version_for(row_counts):
    """The metadata_version a document written now says: 6 only when it holds row counts (see above)."""
    return ROW_COUNTS_VERSION if row_counts is not None else ROW_COUNTS_VERSION - 1


BACKUP_TYPE = "postgresql_full"


DUMP_FORMAT = "pg_dump_custom"


PLAIN_DUMP_FORMAT = "pg_dump_plain"  # a plain-SQL dump (an adopted seed backup made without -Fc), restored with psql


# Fields the seed's metadata had; every backup we write carries all of them.
SEED_FIELDS = ("backup_type", "database", "timestamp", "size_bytes", "checksum_sha256", "encryption", "format",
               "retention_days", "quantum_safe")


REQUIRED_FIELDS = SEED_FIELDS + ("compression", "key_id", "envelope", "object_key", "host", "table_count", "name")


# Every field a metadata object of the host layout may have (docs/FORMAT.md, "Metadata object"); any other is refused.
HOST_FIELDS = frozenset(REQUIRED_FIELDS + (
    "metadata_version", "signature", "recipient_ids", "created_at", "storage_class", "dump_bytes", "duration_seconds",
    "server_version", "pg_dump_version", "database_settings", "adopted_from", "globals", "data_ranges", "row_counts"))


def build_metadata(settings_view, *, basename, when, object_key, size_bytes, checksum, envelope, key_id, table_count,
                   dump_bytes, duration, server_version, pg_dump_version, database_settings, encryption_name,
                   quantum_safe=True, dump_format=DUMP_FORMAT, globals_summary=None, data_ranges=None, row_counts=None):
    """The metadata document of a committed backup: every seed field plus what restore and health need.

    ``settings_view`` is Settings.describe() (with ``db_name``); every other field is named. ``globals_summary``
    (formats/globaldoc.summary) describes the backup's globals object, when it has one. ``row_counts``
    (``[[schema, table, rows], ...]``, BACKUP_COUNT_ROWS) are the exact row counts of the dump's snapshot.
    """
    metadata = {
        "backup_type": BACKUP_TYPE,
        "database": settings_view["db_name"],
        "timestamp": format_timestamp(when),
        "size_bytes": size_bytes,
        "checksum_sha256": checksum,
        "encryption": encryption_name,
        "format": dump_format,
        "retention_days": settings_view["retention_days"],
        "quantum_safe": quantum_safe,
        "metadata_version": version_for(row_counts),
        "name": basename,
        "created_at": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": settings_view["host"],
        "object_key": object_key,
        "storage_class": settings_view["storage_class"],
        "compression": settings_view["compression"],
        "key_id": key_id,
        "envelope": envelope,
        "table_count": table_count,
        "dump_bytes": dump_bytes,
        "duration_seconds": round(duration, 3),
        "server_version": server_version,
        "pg_dump_version": pg_dump_version,
        "database_settings": database_settings,
    }
    if globals_summary is not None:
        metadata["globals"] = globals_summary
    if data_ranges is not None:
        metadata["data_ranges"] = data_ranges
    if row_counts is not None:
        metadata["row_counts"] = sorted([schema, table, rows] for schema, table, rows in row_counts)
    return metadata


def row_counts_of(metadata):
    """``{(schema, table): rows}`` a backup's metadata recorded (BACKUP_COUNT_ROWS), or None when it recorded none."""
    counts = metadata.get("row_counts")
    if counts is None:
        return None
    return dict(((schema, table), rows) for schema, table, rows in counts)


def _check_row_counts(value):
    """row_counts: a list of ``[schema, table, rows]``, each table once."""
    if not isinstance(value, list):
        return False
    seen = set()
    for item in value:
        if not (isinstance(item, list) and len(item) == 3 and _is_text(item[0]) and _is_text(item[1])
                and _is_count(item[2])) or (item[0], item[1]) in seen:
            return False
        seen.add((item[0], item[1]))
    return True


def encode_metadata(metadata):
    """Canonical JSON bytes of a metadata document."""
    return (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode("utf-8")


def decode_metadata(data, key, seed=False, object_key_=None):
    """Parse and check a metadata object completely; IntegrityError names the key and the problem.

    Host layout (``seed`` false): every field must be one this format defines, with the
    right type; a document with any other field is refused, whatever it says (trust
    comes from where a document lives and what signs it, never from a field in it).

    ``seed``: a ``.meta`` of the seed's flat layout (the caller knows that from its key),
    validated field by field and completed to what restore and health read
    (compression detected at restore, no key id, signature or table count);
    ``object_key_`` is its data object's key. Fields the seed did not define are dropped.
    """
    try:
        metadata = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("metadata object %s is not valid JSON (%s): the backup cannot be trusted" % (key, exc))
    if not isinstance(metadata, dict):
        raise IntegrityError("metadata object %s is not a JSON object" % key)
    if seed:
        return _complete_seed_metadata(metadata, key, object_key_)
    if metadata.get("backup_type") == BASE_BACKUP_TYPE:
        raise IntegrityError("metadata object %s describes a physical base backup (backup_type %s), not a dump: it was "
                             "moved among the dumps' metadata; it is refused (base backups live under base/)"
                             % (key, BASE_BACKUP_TYPE))
    version = metadata.get("metadata_version", 1)
    if not _is_int(version) or version < 1:
        raise IntegrityError("metadata object %s has metadata_version %r: not a version of this format" % (key, version))
    if version > METADATA_VERSION:
        raise IntegrityError("metadata object %s has metadata_version %d, newer than this version of quankey-backup "
                             "reads (%d): upgrade quankey-backup where you restore" % (key, version, METADATA_VERSION))
    unknown = sorted(field for field in metadata if field not in HOST_FIELDS)
    if unknown:
        raise IntegrityError("metadata object %s has field(s) %s, which metadata version %d does not define: it was not "
                             "written by quankey-backup, or was modified; it is refused"
                             % (key, ", ".join(repr(field) for field in unknown), version))
    missing = [field for field in REQUIRED_FIELDS if field not in metadata]
    if missing:
        raise IntegrityError("metadata object %s lacks %s: it was not written by quankey-backup or is damaged"
                             % (key, ", ".join(missing)))
    for field, check in _HOST_FIELD_CHECKS:
        if field in metadata and not check(metadata[field]):
            raise IntegrityError("metadata object %s has an invalid %s: it was not written by quankey-backup or is damaged"
                                 % (key, field))
    return metadata


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value):
    return _is_int(value) and value >= 0


def _is_text(value):
    return isinstance(value, str) and value != ""


def _is_sha256(value):
    return isinstance(value, str) and re.match(r"\A[0-9a-f]{64}\Z", value) is not None


def _is_timestamp(value):
    if not isinstance(value, str) or not re.match(r"\A\d{8}_\d{6}\Z", value):
        return False
    try:
        parse_timestamp(value)
    except ValueError:
        return False
    return True


# Type checks of the host layout's fields (absent optional fields are not checked).
_HOST_FIELD_CHECKS = (
    ("backup_type", lambda value: value == BACKUP_TYPE),
    ("database", _is_text),
    ("timestamp", _is_timestamp),
    ("size_bytes", _is_count),
    ("checksum_sha256", _is_sha256),
    ("encryption", _is_text),
    ("format", lambda value: value in (DUMP_FORMAT, PLAIN_DUMP_FORMAT)),
    ("retention_days", _is_int),
    ("quantum_safe", lambda value: isinstance(value, bool)),
    ("name", _is_text),
    ("host", _is_text),
    ("object_key", _is_text),
    ("compression", _is_text),
    ("key_id", lambda value: value is None or _is_text(value)),
    ("envelope", lambda value: isinstance(value, dict)),
    ("table_count", lambda value: value is None or _is_count(value)),
    ("dump_bytes", lambda value: value is None or _is_count(value)),
    ("recipient_ids", lambda value: isinstance(value, list) and all(_is_text(item) for item in value)),
    ("signature", lambda value: isinstance(value, dict)),
    ("database_settings", lambda value: value is None or isinstance(value, dict)),
    ("globals", globaldoc.check_summary),
    ("data_ranges", pgarchive.check_index),
    ("row_counts", _check_row_counts),
    ("adopted_from", lambda value: isinstance(value, dict) and _is_text(value.get("object_key"))
     and _is_sha256(value.get("checksum_sha256"))),
)


# The seed's fields, each with its check; the first six are required (the seed's script always wrote all nine).
_SEED_FIELD_CHECKS = (
    ("backup_type", lambda value: value == BACKUP_TYPE, "postgresql_full"),
    ("database", lambda value: _is_text(value) and "/" not in value and "\x00" not in value, "a database name"),
    ("timestamp", _is_timestamp, "YYYYmmdd_HHMMSS"),
    ("size_bytes", _is_count, "a byte count"),
    ("checksum_sha256", _is_sha256, "64 lower-case hex digits"),
    ("encryption", lambda value: value == openssl_enc.ENCRYPTION_NAME, openssl_enc.ENCRYPTION_NAME),
    # what the seed's script wrote, not what the object holds (a plain-SQL variant may still say pg_dump_custom):
    # the payload is told from its first bytes
    ("format", lambda value: _is_text(value) and len(value) <= 64, "a format name"),
    ("retention_days", _is_int, "a whole number of days"),
    ("quantum_safe", lambda value: isinstance(value, bool), "true or false"),
)


_SEED_REQUIRED = ("backup_type", "database", "timestamp", "size_bytes", "checksum_sha256", "encryption")


def _complete_seed_metadata(metadata, key, object_key_):
    """Check every seed field (all before anything is restored) and add what the engine reads.

    Only the seed's own fields are kept; anything else in the document is dropped, so
    nothing in a seed ``.meta`` can change how it is handled.
    """
    missing = [field for field in _SEED_REQUIRED if field not in metadata]
    if missing:
        raise IntegrityError("seed metadata object %s lacks %s: it was not written by the seed's backup script or is "
                             "damaged" % (key, ", ".join(missing)))
    for field, check, expected in _SEED_FIELD_CHECKS:
        if field in metadata and not check(metadata[field]):
            raise IntegrityError("seed metadata object %s has an invalid %s (%s expected): it was not written by the "
                                 "seed's backup script or is damaged" % (key, field, expected))
    basename = key.rsplit("/", 1)[-1][:-len(METADATA_SUFFIX)] if key.endswith(METADATA_SUFFIX) else None
    named = basename_timestamp(basename)
    if named is not None and named != metadata["timestamp"]:
        raise IntegrityError("seed metadata object %s gives timestamp %s but its name says %s: it was modified or "
                             "belongs to another backup" % (key, metadata["timestamp"], named))
    completed = dict((field, metadata[field]) for field in SEED_FIELDS if field in metadata)
    completed.update(compression="auto", key_id=None, object_key=object_key_, host=None, table_count=None,
                     envelope=openssl_enc.passphrase_envelope(None))  # the seed used openssl's defaults
    return completed


# --------------------------------------------------------------------------- physical base backups (docs/FORMAT.md)

BASE_BACKUP_TYPE = "postgresql_base"  # a physical base backup (`quankey-backup basebackup`), never a dump
BASE_FORMAT = "pg_basebackup_tar"  # pg_basebackup -Ft -X none, the main tablespace, its manifest inside
BASE_METADATA_VERSION = 1

BASE_REQUIRED_FIELDS = (
    "backup_type", "metadata_version", "format", "name", "host", "timestamp", "created_at", "object_key", "size_bytes",
    "checksum_sha256", "tar_bytes", "compression", "encryption", "key_id", "envelope", "retention_days",
    "quantum_safe", "storage_class", "duration_seconds", "server_version", "pg_basebackup_version",
    "system_identifier", "timeline", "start_lsn", "stop_lsn", "start_wal_file", "checkpoint_lsn", "backup_label",
    "manifest")
BASE_FIELDS = frozenset(BASE_REQUIRED_FIELDS + ("recipient_ids", "signature"))


def _is_lsn(value):
    return isinstance(value, str) and re.match(r"\A[0-9A-F]{1,8}/[0-9A-F]{1,8}\Z", value) is not None


def _check_manifest_summary(value):
    return (isinstance(value, dict) and set(value) == {"sha256", "size_bytes", "files", "data_bytes"}
            and _is_sha256(value["sha256"]) and _is_count(value["size_bytes"]) and _is_count(value["files"])
            and _is_count(value["data_bytes"]))


_BASE_FIELD_CHECKS = (
    ("backup_type", lambda value: value == BASE_BACKUP_TYPE),
    ("metadata_version", lambda value: value == BASE_METADATA_VERSION),
    ("format", lambda value: value == BASE_FORMAT),
    ("name", _is_text),
    ("host", _is_text),
    ("timestamp", _is_timestamp),
    ("created_at", _is_text),
    ("object_key", _is_text),
    ("size_bytes", _is_count),
    ("checksum_sha256", _is_sha256),
    ("tar_bytes", _is_count),
    ("compression", _is_text),
    ("encryption", _is_text),
    ("key_id", lambda value: value is None or _is_text(value)),
    ("envelope", lambda value: isinstance(value, dict)),
    ("retention_days", _is_int),
    ("quantum_safe", lambda value: isinstance(value, bool)),
    ("storage_class", lambda value: value is None or _is_text(value)),
    ("duration_seconds", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)),
    ("server_version", _is_text),
    ("pg_basebackup_version", _is_text),
    ("system_identifier", lambda value: isinstance(value, str) and value.isdigit()),
    ("timeline", lambda value: _is_int(value) and value >= 1),
    ("start_lsn", _is_lsn),
    ("stop_lsn", _is_lsn),
    ("start_wal_file", lambda value: isinstance(value, str) and re.match(r"\A[0-9A-F]{24}\Z", value) is not None),
    ("checkpoint_lsn", _is_lsn),
    ("backup_label", _is_text),
    ("manifest", _check_manifest_summary),
    ("recipient_ids", lambda value: isinstance(value, list) and all(_is_text(item) for item in value)),
    ("signature", lambda value: isinstance(value, dict)),
)


def build_base_metadata(settings_view, *, basename, when, object_key, size_bytes, checksum, tar_bytes, envelope,
                        key_id, encryption_name, duration, server_version, pg_basebackup_version, system_identifier,
                        checked):
    """The (unsigned) metadata document of a committed base backup. ``checked`` is what formats/basetar.py found in
    its tar (``TarChecker.finish()``: WAL range, timeline, backup_label, the manifest's SHA-256, size and counts)."""
    return {
        "backup_type": BASE_BACKUP_TYPE,
        "metadata_version": BASE_METADATA_VERSION,
        "format": BASE_FORMAT,
        "name": basename,
        "host": settings_view["host"],
        "timestamp": format_timestamp(when),
        "created_at": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "object_key": object_key,
        "size_bytes": size_bytes,
        "checksum_sha256": checksum,
        "tar_bytes": tar_bytes,
        "compression": settings_view["compression"],
        "encryption": encryption_name,
        "key_id": key_id,
        "envelope": envelope,
        "retention_days": settings_view["retention_days"],
        "quantum_safe": True,
        "storage_class": settings_view["storage_class"],
        "duration_seconds": round(duration, 3),
        "server_version": server_version,
        "pg_basebackup_version": pg_basebackup_version,
        "system_identifier": system_identifier,
        "timeline": checked["timeline"],
        "start_lsn": checked["start_lsn"],
        "stop_lsn": checked["stop_lsn"],
        "start_wal_file": checked["start_wal_file"],
        "checkpoint_lsn": checked["checkpoint_lsn"],
        "backup_label": checked["backup_label"],
        "manifest": dict(checked["manifest"]),
    }


def decode_base_metadata(data, key):
    """Parse and check a base backup's metadata completely (exactly BASE_FIELDS, each of the right type);
    IntegrityError names the key and the problem. A dump's metadata is refused here, as a base backup's is by
    :func:`decode_metadata`."""
    try:
        metadata = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("metadata object %s is not valid JSON (%s): the base backup cannot be trusted" % (key, exc))
    if not isinstance(metadata, dict):
        raise IntegrityError("metadata object %s is not a JSON object" % key)
    if metadata.get("backup_type") != BASE_BACKUP_TYPE:
        raise IntegrityError("metadata object %s is of backup_type %r, not a physical base backup's (%s): it was moved "
                             "here or modified; it is refused" % (key, metadata.get("backup_type"), BASE_BACKUP_TYPE))
    version = metadata.get("metadata_version")
    if _is_int(version) and version > BASE_METADATA_VERSION:
        raise IntegrityError("base backup metadata %s has metadata_version %d, newer than this version of quankey-backup "
                             "reads (%d): upgrade quankey-backup" % (key, version, BASE_METADATA_VERSION))
    unknown = sorted(field for field in metadata if field not in BASE_FIELDS)
    if unknown:
        raise IntegrityError("base backup metadata %s has field(s) %s, which its version does not define: it was not "
                             "written by quankey-backup, or was modified; it is refused"
                             % (key, ", ".join(repr(field) for field in unknown)))
    missing = [field for field in BASE_REQUIRED_FIELDS if field not in metadata]
    if missing:
        raise IntegrityError("base backup metadata %s lacks %s: it was not written by quankey-backup or is damaged"
                             % (key, ", ".join(missing)))
    for field, check in _BASE_FIELD_CHECKS:
        if field in metadata and not check(metadata[field]):
            raise IntegrityError("base backup metadata %s has an invalid %s: it was not written by quankey-backup or is "
                                 "damaged" % (key, field))
    return metadata
