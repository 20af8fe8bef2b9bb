# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An archived WAL file as one object: a 12-byte prefix, its signed document, then its data object (docs/FORMAT.md,
"WAL objects"). Bytes only, no I/O, no keys: the workflow (workflows/wal.py) signs and verifies the document.

    object   = b"QKWL" || u8 version (1) || 3 zero bytes || u32be L || document (L bytes) || data object
    document = canonical JSON (sorted keys, UTF-8) of the fields below, signed like backup metadata (signing.py)
    data     = a format v1/v2 data object (crypto.py) of the compressed file, under a fresh data key wrapped or
               sealed in the document's envelope, bound to (host, WAL_BINDING_DATABASE, name)

One object per file, so a segment is written with one conditional PutObject and read with one GetObject, and
the document can never be separated from, or outlive, its data.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
import struct

from ..errors import IntegrityError

MAGIC = b"QKWL"
VERSION = 1
PREFIX_SIZE = 12
MAX_DOCUMENT_SIZE = 64 * 1024  # an envelope sealed to many hybrid-pq recipients stays far below this
KIND = "postgresql_wal"
# The "database" part of a WAL file's key-wrap binding (crypto.backup_binding): a database name in an object key
# can hold no "/", so no backup's binding is ever a WAL file's.
WAL_BINDING_DATABASE = "/wal"

REQUIRED_FIELDS = ("kind", "format_version", "host", "timeline", "name", "object_key", "size_bytes",
                   "checksum_sha256", "compression", "encryption", "key_id", "envelope", "created_at")
FIELDS = frozenset(REQUIRED_FIELDS + ("recipient_ids", "signature"))


def _is_text(value):
    return isinstance(value, str) and value != ""


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_CHECKS = (
    ("kind", lambda value: value == KIND),
    ("format_version", lambda value: value == VERSION),
    ("host", _is_text),
    ("timeline", lambda value: isinstance(value, str) and re.match(r"\A[0-9A-F]{8}\Z", value) is not None),
    ("name", _is_text),
    ("object_key", _is_text),
    ("size_bytes", _is_count),
    ("checksum_sha256", lambda value: isinstance(value, str) and re.match(r"\A[0-9a-f]{64}\Z", value) is not None),
    ("compression", _is_text),
    ("encryption", _is_text),
    ("key_id", lambda value: value is None or _is_text(value)),
    ("envelope", lambda value: isinstance(value, dict)),
    ("created_at", _is_text),
    ("recipient_ids", lambda value: isinstance(value, list) and all(_is_text(item) for item in value)),
    ("signature", lambda value: isinstance(value, dict)),
)


def build_document(*, host, timeline, name, object_key, size_bytes, checksum, compression, encryption, key_id,
                   envelope, created_at, recipient_ids=None):
    """The (unsigned) document of an archived WAL file: what it is, where it belongs, its plaintext's size and
    SHA-256, and how its data is compressed and encrypted."""
    document = {"kind": KIND, "format_version": VERSION, "host": host, "timeline": timeline, "name": name,
                "object_key": object_key, "size_bytes": size_bytes, "checksum_sha256": checksum,
                "compression": compression, "encryption": encryption, "key_id": key_id, "envelope": envelope,
                "created_at": created_at}
    if recipient_ids:
        document["recipient_ids"] = list(recipient_ids)
    return document


def pack(document, data):
    """The object's bytes: prefix, the (signed) document, the data object."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(text) > MAX_DOCUMENT_SIZE:
        raise ValueError("a WAL object's document is %d bytes, at most %d are allowed" % (len(text), MAX_DOCUMENT_SIZE))
    return MAGIC + struct.pack(">B3xI", VERSION, len(text)) + text + bytes(data)


def unpack(blob, where):
    """``(document, data object)`` of an object's bytes, the document checked field by field (not its signature).

    IntegrityError names ``where`` (the object's key) and what is wrong: another format, a version this code does
    not read, a cut or oversized document, a field missing, unknown or of the wrong type.
    """
    blob = memoryview(blob)
    if len(blob) < PREFIX_SIZE or bytes(blob[:4]) != MAGIC:
        raise IntegrityError("%s is not an archived WAL file of quankey-backup (it does not start with %r): it was "
                             "written by another program or replaced" % (where, MAGIC.decode("ascii")))
    version, length = struct.unpack(">B3xI", bytes(blob[4:PREFIX_SIZE]))
    if version != VERSION or bytes(blob[5:8]) != b"\x00\x00\x00":
        raise IntegrityError("%s is a WAL object of version %d, which this version of quankey-backup does not read "
                             "(it reads %d): upgrade quankey-backup where you restore" % (where, version, VERSION))
    if length > MAX_DOCUMENT_SIZE or PREFIX_SIZE + length > len(blob):
        raise IntegrityError("%s names a document of %d bytes that it does not hold (%d bytes in all): it is cut short "
                             "or damaged" % (where, length, len(blob)))
    try:
        document = json.loads(bytes(blob[PREFIX_SIZE:PREFIX_SIZE + length]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("%s's document is not valid JSON (%s): it is damaged or was modified" % (where, exc))
    check_document(document, where)
    return document, blob[PREFIX_SIZE + length:]


def check_document(document, where):
    """Raise IntegrityError unless ``document`` has exactly this format's fields, each of the right type."""
    if not isinstance(document, dict):
        raise IntegrityError("%s's document is not a JSON object" % where)
    unknown = sorted(field for field in document if field not in FIELDS)
    if unknown:
        raise IntegrityError("%s's document has field(s) %s, which WAL object version %d does not define: it was not "
                             "written by quankey-backup, or was modified; it is refused"
                             % (where, ", ".join(repr(field) for field in unknown), VERSION))
    missing = [field for field in REQUIRED_FIELDS if field not in document]
    if missing:
        raise IntegrityError("%s's document lacks %s: it was not written by quankey-backup or is damaged"
                             % (where, ", ".join(missing)))
    for field, check in _CHECKS:
        if field in document and not check(document[field]):
            raise IntegrityError("%s's document has an invalid %s: it was not written by quankey-backup or is damaged"
                                 % (where, field))
