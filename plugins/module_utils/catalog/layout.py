# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is in the bucket: object names, metadata and selection (retention: retention.py).

Pure logic: nothing here talks to S3 or PostgreSQL. Names keep the seed's shape,
per host and database so one bucket serves a fleet and IAM can scope each host::

    <prefix>backups/postgresql/<host>/<db>/<name>_backup_<YYYYmmdd_HHMMSS>.encrypted
    <prefix>metadata/<host>/<db>/<name>_backup_<YYYYmmdd_HHMMSS>.meta

A backup exists only when its metadata object exists: metadata is written last.

Backups made by the seed's scripts use the seed's flat layout (no host or
database level) and its smaller metadata; they are listed as ``layout: seed``::

    <prefix>backups/postgresql/<name>_backup_<YYYYmmdd_HHMMSS>.encrypted
    <prefix>metadata/<name>_backup_<YYYYmmdd_HHMMSS>.meta"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re

from ..errors import ConfigError, NotFoundError

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


OBJECT_SUFFIX = ".encrypted"


METADATA_SUFFIX = ".meta"
GLOBALS_SUFFIX = ".globals"  # a backup's globals object, beside its data object (formats/globaldoc.py)


SEED_LAYOUT = "seed"


UTC = datetime.timezone.utc


_BASENAME_RE = re.compile(r"^(?P<name>.+)_backup_(?P<ts>\d{8}_\d{6})$")


__metaclass__ = type


def utcnow():
    """The current time, aware, in UTC."""
    return datetime.datetime.now(UTC)


def format_timestamp(when):
    """A datetime as the seed's ``YYYYmmdd_HHMMSS`` in UTC."""
    return when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text):
    """The seed's ``YYYYmmdd_HHMMSS`` (UTC) as an aware datetime."""
    return datetime.datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def parse_time(text, what="time"):
    """Parse a user-given point in time: ISO 8601, a date, or the seed's ``YYYYmmdd_HHMMSS``. Naive means UTC."""
    value = (text or "").strip()
    if not value:
        raise ConfigError("%s is empty: give a time such as 2025-08-09T03:00:00Z or 20250809_030000" % what)
    try:
        if _BASENAME_RE.match("x_backup_" + value):
            return parse_timestamp(value)
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise ConfigError("%s %r is not a time I understand: use ISO 8601 (2025-08-09T03:00:00Z), "
                          "a date (2025-08-09) or 20250809_030000" % (what, value))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def is_basename(text):
    """Whether ``text`` is a backup's name: ``<name>_backup_<YYYYmmdd_HHMMSS>``."""
    return bool(_BASENAME_RE.match(text or ""))


def basename_timestamp(text):
    """The ``YYYYmmdd_HHMMSS`` of a backup's name, as written in it; None when ``text`` is not a backup's name."""
    match = _BASENAME_RE.match(text or "")
    return match.group("ts") if match else None


def backup_basename(name, when):
    """``<name>_backup_<YYYYmmdd_HHMMSS>``."""
    return "%s_backup_%s" % (name, format_timestamp(when))


def object_prefix(prefix, host=None, db=None):
    """The key prefix of the data objects, narrowed to a host and database when given."""
    return _scoped(prefix + "backups/postgresql/", host, db)


def metadata_prefix(prefix, host=None, db=None):
    """The key prefix of the metadata objects, narrowed to a host and database when given."""
    return _scoped(prefix + "metadata/", host, db)


def _scoped(base, host, db):
    if host:
        base += host + "/"
        if db:
            base += db + "/"
    return base


def object_key(prefix, host, db, basename):
    """The data object's key."""
    return object_prefix(prefix, host, db) + basename + OBJECT_SUFFIX


def globals_key(object_key_):
    """The key of the globals object of the backup whose data object is ``object_key_``."""
    stem = object_key_[:-len(OBJECT_SUFFIX)] if object_key_.endswith(OBJECT_SUFFIX) else object_key_
    return stem + GLOBALS_SUFFIX


def metadata_key(prefix, host, db, basename):
    """The metadata object's key."""
    return metadata_prefix(prefix, host, db) + basename + METADATA_SUFFIX


def wal_prefix(prefix, host=None, timeline=None):
    """The key prefix of the archived WAL (``<prefix>wal/<host>/<timeline>/``), narrowed to a host and timeline when
    given (docs/FORMAT.md, "WAL objects")."""
    base = prefix + "wal/"
    if host:
        base += host + "/"
        if timeline:
            base += timeline + "/"
    return base


def wal_key(prefix, host, timeline, name):
    """The key of an archived WAL file: ``<prefix>wal/<host>/<timeline 8 hex>/<name>`` (catalog/walnames.py)."""
    return wal_prefix(prefix, host, timeline) + name


BASE_OBJECT_SUFFIX = ".tar.enc"  # a physical base backup's data object: its tar, compressed and encrypted
BASE_BINDING_DATABASE = "/base"  # the "database" of a base backup's key-wrap binding: no database name holds "/"
_BASE_NAME_RE = re.compile(r"^(?P<name>.+)_base_(?P<ts>\d{8}_\d{6})$")


def base_basename(name, when):
    """A physical base backup's name: ``<name>_base_<YYYYmmdd_HHMMSS>`` (never a dump's ``_backup_`` name)."""
    return "%s_base_%s" % (name, format_timestamp(when))


def base_stem(text):
    """The name in what a user gave for a base backup: its name, or its data object's or metadata's key."""
    stem = (text or "").strip().rsplit("/", 1)[-1]
    for suffix in (BASE_OBJECT_SUFFIX, METADATA_SUFFIX):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    return stem


def is_base_basename(text):
    """Whether ``text`` (a name, or a key ending in one) names a physical base backup."""
    return bool(_BASE_NAME_RE.match(base_stem(text)))


def base_prefix(prefix, host=None):
    """The key prefix of physical base backups (``<prefix>base/<host>/``), narrowed to a host when given: apart from
    the dumps' ``backups/`` and ``metadata/``, so nothing that lists dumps ever sees one."""
    return _scoped(prefix + "base/", host, None)


def base_object_key(prefix, host, basename):
    """A base backup's data object: ``<prefix>base/<host>/<name>_base_<ts>.tar.enc``."""
    return base_prefix(prefix, host) + basename + BASE_OBJECT_SUFFIX


def base_metadata_key(prefix, host, basename):
    """A base backup's metadata (its commit marker, written last): ``<prefix>base/<host>/<name>_base_<ts>.meta``."""
    return base_prefix(prefix, host) + basename + METADATA_SUFFIX


class BaseRecord:
    """One physical base backup as the bucket lists it (a cluster's, so per host: no database)."""

    kind = "base"
    seed = False
    layout = None

    def __init__(self, host, basename, metadata_key, object_key, object_size=None):
        match = _BASE_NAME_RE.match(basename)
        self.host = host
        self.db = BASE_BINDING_DATABASE  # the key-wrap binding's database part (keys.identity_binding)
        self.basename = basename
        self.name = match.group("name")
        self.timestamp = parse_timestamp(match.group("ts"))
        self.metadata_key = metadata_key
        self.object_key = object_key
        self.object_size = object_size
        self.metadata = None
        self.verdict = None
        self.kdf = None

    def __repr__(self):
        return "BaseRecord(%s/%s)" % (self.host, self.basename)

    @property
    def has_object(self):
        """Whether the listing showed the data object."""
        return self.object_size is not None

    def summary(self):
        """A JSON-ready description (metadata fields when loaded)."""
        data = {"kind": self.kind, "name": self.basename, "host": self.host, "database": None,
                "timestamp": self.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "object_key": self.object_key,
                "metadata_key": self.metadata_key, "object_size": self.object_size}
        if self.verdict is not None:
            data["signature"] = self.verdict.describe()
            data["trusted"] = self.verdict.trusted
        if self.metadata:
            for field in ("size_bytes", "checksum_sha256", "encryption", "compression", "key_id", "tar_bytes",
                          "duration_seconds", "server_version", "timeline", "start_lsn", "stop_lsn", "storage_class",
                          "recipient_ids"):
                if field in self.metadata:
                    data[field] = self.metadata[field]
        return data


def base_records_from_listing(prefix, listing):
    """Base backups newest first, and orphans (data objects without metadata), from a listing of ``base_prefix``."""
    base = base_prefix(prefix)
    objects, metas = {}, []
    for item in listing:
        rest = item["key"][len(base):] if item["key"].startswith(base) else ""
        parts = rest.split("/")
        if len(parts) != 2 or not parts[0]:
            continue
        for suffix, found in ((BASE_OBJECT_SUFFIX, "object"), (METADATA_SUFFIX, "metadata")):
            if parts[1].endswith(suffix) and _BASE_NAME_RE.match(parts[1][:-len(suffix)]):
                if found == "object":
                    objects[(parts[0], parts[1][:-len(suffix)])] = item
                else:
                    metas.append((parts[0], parts[1][:-len(suffix)], item))
    records = []
    for host, basename, item in metas:
        obj = objects.pop((host, basename), None)
        records.append(BaseRecord(host, basename, item["key"], base_object_key(prefix, host, basename),
                                  object_size=obj["size"] if obj else None))
    records.sort(key=lambda record: (record.timestamp, record.basename), reverse=True)
    return records, sorted(objects.values(), key=lambda item: item["key"])


DRILL_SUFFIX = ".json"
_DRILL_NAME_RE = re.compile(r"^(?P<ts>\d{8}_\d{6})\.json$")


def drill_prefix(prefix, host=None, db=None):
    """The key prefix of restore drill reports (``<prefix>drills/<host>/<db>/``), narrowed when given."""
    return _scoped(prefix + "drills/", host, db)


def drill_key(prefix, host, db, when):
    """The key of the report of a drill of ``host``/``db`` that started at ``when``: ``<YYYYmmdd_HHMMSS>.json``."""
    return drill_prefix(prefix, host, db) + format_timestamp(when) + DRILL_SUFFIX


def drill_key_parts(prefix, key):
    """``(host, db, started)`` of a drill report's key, or None when ``key`` is not one."""
    base = drill_prefix(prefix)
    if not key.startswith(base):
        return None
    parts = key[len(base):].split("/")
    match = _DRILL_NAME_RE.match(parts[-1]) if len(parts) == 3 and parts[0] and parts[1] else None
    if not match:
        return None
    return parts[0], parts[1], parse_timestamp(match.group("ts"))


class BackupRecord:
    """One backup as the bucket lists it: its keys, its time, and its metadata once loaded."""

    def __init__(self, host, db, basename, metadata_key, object_key, *, object_size=None, metadata=None, layout=None):
        match = _BASENAME_RE.match(basename)
        self.layout = layout
        self.host = host
        self.db = db
        self.basename = basename
        self.name = match.group("name")
        self.timestamp = parse_timestamp(match.group("ts"))
        self.metadata_key = metadata_key
        self.object_key = object_key
        self.object_size = object_size
        self.metadata = metadata
        self.metadata_etag = None  # the metadata object's ETag when read (a rewrite is conditional on it)
        self.verdict = None  # trust.Verdict, once judged
        self.kdf = None  # aes-256-cbc: how its key was derived and from which passphrase, once found (no secret)

    def __repr__(self):
        return "BackupRecord(%s/%s/%s)" % (self.host, self.db, self.basename)

    @property
    def seed(self):
        """Whether this backup was made by the seed's scripts (flat layout, seed metadata)."""
        return self.layout == SEED_LAYOUT

    @property
    def has_object(self):
        """Whether the listing showed the data object."""
        return self.object_size is not None

    def summary(self):
        """A JSON-ready description (metadata fields when loaded)."""
        data = {
            "name": self.basename, "host": self.host, "database": self.db,
            "timestamp": self.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "object_key": self.object_key, "metadata_key": self.metadata_key,
            "object_size": self.object_size,
        }
        if self.seed:
            data["layout"] = SEED_LAYOUT
        if self.kdf is not None:
            data["kdf"] = self.kdf
        if self.verdict is not None:
            data["signature"] = self.verdict.describe()
            data["trusted"] = self.verdict.trusted
        if self.metadata:
            for field in ("size_bytes", "checksum_sha256", "encryption", "compression", "key_id", "table_count",
                          "duration_seconds", "server_version", "pg_dump_version", "storage_class", "dump_bytes",
                          "recipient_ids"):
                if field in self.metadata:
                    data[field] = self.metadata[field]
            data["globals"] = self.metadata.get("globals")
        return data


def records_from_listing(prefix, metadata_listing, object_listing):
    """Join listings of metadata and data objects (dicts with ``key`` and ``size``) into records.

    Returns ``(records newest first, orphan objects)``; an orphan is a data object
    with no metadata: a backup that never committed, invisible to restore. Keys of
    the seed's flat layout become records with ``layout`` seed, no host, and the
    database unknown until their metadata is read.
    """
    meta_base = prefix + "metadata/"
    obj_base = prefix + "backups/postgresql/"
    objects = {}
    companions = {}  # globals objects (GLOBALS_SUFFIX): orphans too when no metadata names their backup
    for item in object_listing:
        parts = _split(item["key"], obj_base, OBJECT_SUFFIX)
        if parts:
            objects[parts] = item
            continue
        parts = _split(item["key"], obj_base, GLOBALS_SUFFIX)
        if parts and parts[0] is not None:
            companions[parts] = item
    records = []
    for item in metadata_listing:
        parts = _split(item["key"], meta_base, METADATA_SUFFIX)
        if not parts:
            continue
        host, db, basename = parts
        obj = objects.pop(parts, None)
        companions.pop(parts, None)
        if host is None:
            records.append(BackupRecord(None, None, basename, item["key"], seed_object_key(prefix, basename),
                                        object_size=obj["size"] if obj else None, layout=SEED_LAYOUT))
            continue
        records.append(BackupRecord(host, db, basename, item["key"], object_key(prefix, host, db, basename),
                                    object_size=obj["size"] if obj else None))
    records.sort(key=lambda record: (record.timestamp, record.basename), reverse=True)
    orphans = sorted(list(objects.values()) + list(companions.values()), key=lambda item: item["key"])
    return records, orphans


def seed_object_key(prefix, basename):
    """The data object's key in the seed's flat layout."""
    return prefix + "backups/postgresql/" + basename + OBJECT_SUFFIX


def _split(key, base, suffix):
    """(host, db, basename) of a key; (None, None, basename) in the seed's flat layout; None if not a backup's key."""
    if not key.startswith(base) or not key.endswith(suffix):
        return None
    parts = key[len(base):-len(suffix)].split("/")
    if len(parts) == 1 and _BASENAME_RE.match(parts[0]):
        return (None, None, parts[0])
    if len(parts) != 3 or not all(parts) or not _BASENAME_RE.match(parts[2]):
        return None
    return tuple(parts)


def select_backup(records, backup="latest", before=None):
    """Pick a record: ``latest``, a name (with or without ``.encrypted``/``.meta``, or a full key), or the latest before a time."""
    if not records:
        raise NotFoundError("no backups found: run `quankey-backup list` to see what the bucket holds")
    candidates = list(records)
    if before is not None:
        candidates = [record for record in candidates if record.timestamp < before]
        if not candidates:
            raise NotFoundError("no backup was taken before %s (oldest: %s)"
                                % (before.strftime("%Y-%m-%dT%H:%M:%SZ"), records[-1].basename))
    wanted = (backup or "latest").strip()
    if wanted == "latest":
        return candidates[0]
    stem = wanted.rsplit("/", 1)[-1]
    for suffix in (OBJECT_SUFFIX, METADATA_SUFFIX):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    for record in candidates:
        if wanted in (record.object_key, record.metadata_key) or stem == record.basename:
            return record
    raise NotFoundError("backup %r not found%s: run `quankey-backup list` to see the available names"
                        % (wanted, "" if before is None else " before the given time"))
