# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A physical base backup's tar stream (``pg_basebackup -D - -Ft -X none --manifest-checksums=SHA256``), checked as
it streams against the backup manifest it carries (docs/FORMAT.md, "Base backups"). Bytes only, no I/O.

``pg_verifybackup`` needs the backup unpacked in a directory; nothing here may touch local disk, so
:class:`TarChecker` reads the tar as it passes (``feed``), hashes every regular member with SHA-256, keeps
``backup_label`` and ``backup_manifest`` (pg_basebackup puts the manifest into the tar as its last member when it
writes to stdout), and :meth:`TarChecker.finish` checks the manifest's own checksum, then every file: each one the
manifest lists is in the tar with its size and SHA-256, and the tar holds no regular file the manifest does not list.
It gives the backup's WAL range (start and stop LSN, timeline) from the manifest, checked against backup_label.

A ``sink`` given to :class:`TarChecker` receives each member as it passes (``begin(path, kind)``, the regular
members' ``data``, ``end()``): ``restore --pitr`` writes them into the data directory (workflows/pitr.py), and
trusts them only once :meth:`TarChecker.finish` has checked them all against the manifest.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import re

from ..errors import IntegrityError

BLOCK = 512
LABEL_NAME = "backup_label"
MANIFEST_NAME = "backup_manifest"
MAX_KEPT = 1024 * 1024 * 1024  # backup_label and backup_manifest are held in memory: a manifest is ~200 bytes a file
MANIFEST_VERSIONS = (1, 2)  # 2: PostgreSQL 17 adds System-Identifier
REGULAR, HARD_LINK, SYMLINK, DIRECTORY = (b"0", b"\x00"), b"1", b"2", b"5"
PAX_HEADER, PAX_GLOBAL, GNU_LONG_NAME = b"x", b"g", b"L"
_LSN_RE = re.compile(r"\A[0-9A-F]{1,8}/[0-9A-F]{1,8}\Z")


def lsn_value(text):
    """The 64-bit position of an LSN written ``X/Y`` (hex), for comparing; ValueError when it is not one."""
    if not isinstance(text, str) or not _LSN_RE.match(text):
        raise ValueError("%r is not an LSN (X/Y in hex)" % (text,))
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _number(field, where):
    """A tar header's numeric field: octal text, or base-256 (first byte 0x80) for large values."""
    if field and field[0] & 0x80:
        value = field[0] & 0x7F
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise IntegrityError("the base backup's tar has a damaged header at byte %d (not a number: %r)" % (where, text))


def _name(raw):
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _member_path(name):
    """A member's path as the manifest writes it: no leading ``./``, no trailing ``/``."""
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


class _Member:
    __slots__ = ("path", "kind", "size", "left", "pad", "digest", "kept")

    def __init__(self, path, kind, size, keep):
        self.path = path
        self.kind = kind
        self.size = size
        self.left = size
        self.pad = (-size) % BLOCK
        self.digest = hashlib.sha256() if kind in REGULAR else None
        self.kept = [] if keep else None


class TarChecker:
    """A sink for a base backup's tar stream (``feed`` returns True); :meth:`finish` checks it against its manifest.

    ``files``: ``{path: (size, sha256 hex)}`` of the regular members seen so far; ``tar_bytes``: bytes fed.
    IntegrityError as soon as the stream is not a tar (a damaged header, an entry of a type a base backup never
    holds, data after the end), or at :meth:`finish` when it is cut short or disagrees with its manifest.
    """

    def __init__(self, sink=None):
        self.sink = sink  # begin(path, kind), data(bytes), end(): where restore --pitr writes the members; None: none
        self.files = {}
        self.kinds = {}
        self.tar_bytes = 0
        self.label = None
        self.manifest = None
        self._buffer = bytearray()
        self._member = None
        self._ended = False
        self._zero_blocks = 0
        self._long_name = None
        self._pax_path = None

    def feed(self, data):
        """Take the next bytes of the tar."""
        self.tar_bytes += len(data)
        view = memoryview(data)
        while len(view):
            member = self._member
            if member is not None and (member.left or member.pad):
                view = self._take_data(member, view)
                continue
            if self._ended:
                if any(view):
                    raise IntegrityError("the base backup's tar has data after its end (at byte %d): it was not written by "
                                         "pg_basebackup or is damaged" % (self.tar_bytes - len(view)))
                return True
            need = BLOCK - len(self._buffer)
            self._buffer += view[:need]
            view = view[need:]
            if len(self._buffer) == BLOCK:
                header, self._buffer = bytes(self._buffer), bytearray()
                self._header(header)
        return True

    def _take_data(self, member, view):
        if member.left:
            part = view[:member.left]
            if member.digest is not None:
                member.digest.update(part)
                if self.sink is not None:
                    self.sink.data(part)
            if member.kept is not None:
                member.kept.append(bytes(part))
            member.left -= len(part)
            view = view[len(part):]
            if not member.left:
                self._member_done(member)
            return view
        skip = min(member.pad, len(view))
        member.pad -= skip
        return view[skip:]

    def _header(self, header):
        where = self.tar_bytes  # about: the stream position is not exact within a fed chunk
        if not any(header):
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self._ended = True
            return
        if self._zero_blocks:
            raise IntegrityError("the base backup's tar holds an empty block between two members: it is damaged")
        stored = _number(header[148:156], where)
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise IntegrityError("the base backup's tar has a header whose checksum is wrong (near byte %d): it is "
                                 "damaged or was modified" % where)
        kind = header[156:157]
        size = _number(header[124:136], where)
        name = _name(header[0:100])
        if header[257:262] == b"ustar" and header[345:500].strip(b"\x00"):
            name = _name(header[345:500]) + "/" + name
        if kind in (PAX_HEADER, GNU_LONG_NAME, PAX_GLOBAL):
            self._member = _Member("(%s header)" % kind.decode("ascii"), kind, size, keep=True)
            if not size:
                self._member_done(self._member)
            return
        if self._long_name is not None:
            name, self._long_name = self._long_name, None
        if self._pax_path is not None:
            name, self._pax_path = self._pax_path, None
        if kind not in REGULAR + (HARD_LINK, SYMLINK, DIRECTORY):
            raise IntegrityError("the base backup's tar holds %r of type %r, which pg_basebackup never writes: it is not "
                                 "a base backup of quankey-backup or was modified" % (name, kind.decode("latin-1")))
        path = _member_path(name)
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise IntegrityError("the base backup's tar holds a member named %r, outside the data directory: it is "
                                 "refused" % name)
        if path in self.kinds:
            raise IntegrityError("the base backup's tar holds %s twice: it was modified" % path)
        self.kinds[path] = kind
        if kind not in REGULAR:
            size = 0
        member = _Member(path, kind, size, keep=path in (LABEL_NAME, MANIFEST_NAME))
        if member.kept is not None and size > MAX_KEPT:
            raise IntegrityError("the base backup's %s is %d bytes, more than this version reads (%d)"
                                 % (path, size, MAX_KEPT))
        self._member = member
        if self.sink is not None:
            self.sink.begin(path, kind)
        if not size:
            self._member_done(member)

    def _member_done(self, member):
        if member.kind in (PAX_HEADER, GNU_LONG_NAME):
            text = b"".join(member.kept)
            if member.kind == GNU_LONG_NAME:
                self._long_name = _name(text)
            else:
                self._pax_path = _pax_path(text)
            return
        if member.kind == PAX_GLOBAL:
            return
        if self.sink is not None:
            self.sink.end()
        if member.digest is not None:
            self.files[member.path] = (member.size, member.digest.hexdigest())
        if member.path == LABEL_NAME:
            self.label = b"".join(member.kept)
        elif member.path == MANIFEST_NAME:
            self.manifest = b"".join(member.kept)

    def finish(self):
        """Check the whole tar against its manifest; the summary :func:`check_against_manifest` gives."""
        member = self._member
        if member is not None and (member.left or member.pad) or self._buffer:
            raise IntegrityError("the base backup's tar is cut short (%d bytes, in the middle of %s)"
                                 % (self.tar_bytes, member.path if member is not None and member.left else "a header"))
        if not self._ended:
            raise IntegrityError("the base backup's tar is cut short: it lacks the end-of-archive blocks (%d bytes read)"
                                 % self.tar_bytes)
        summary = check_against_manifest(self.manifest, self.files, self.label)
        summary["tar_bytes"] = self.tar_bytes
        return summary


def _pax_path(text):
    """The ``path`` record of a pax extended header (``<length> path=<value>\\n`` records), or None."""
    pos = 0
    while pos < len(text):
        space = text.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(text[pos:space])
        except ValueError:
            break
        record = text[space + 1:pos + length - 1]
        if record.startswith(b"path="):
            return record[5:].decode("utf-8", "surrogateescape")
        if length <= 0:
            break
        pos += length
    return None


def manifest_checksum_ok(manifest):
    """Whether a manifest's ``Manifest-Checksum`` is the SHA-256 of everything before its last line (as PostgreSQL's
    pg_verifybackup checks it); IntegrityError when it has none or is not a manifest's shape."""
    if not manifest.endswith(b"\n") or manifest.count(b"\n") < 2:
        raise IntegrityError("the base backup's backup_manifest does not end with a newline after its checksum line: it "
                             "is cut short or damaged")
    end = manifest.rindex(b"\n", 0, len(manifest) - 1) + 1
    match = re.search(rb'"Manifest-Checksum"\s*:\s*"([0-9a-f]{64})"', manifest[end:])
    if not match:
        raise IntegrityError("the base backup's backup_manifest has no Manifest-Checksum line at its end: it is damaged")
    return hashlib.sha256(manifest[:end]).hexdigest() == match.group(1).decode("ascii")


def parse_label(label):
    """``{"start_lsn", "start_wal_file", "checkpoint_lsn", "timeline", "backup_method"}`` of a backup_label's text;
    IntegrityError when a line it must have is missing."""
    text = label.decode("utf-8", "replace")
    found = {}
    patterns = (("start_lsn", r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$"),
                ("checkpoint_lsn", r"^CHECKPOINT LOCATION: ([0-9A-F]+/[0-9A-F]+)$"),
                ("timeline", r"^START TIMELINE: (\d+)$"),
                ("backup_method", r"^BACKUP METHOD: (\S+)$"))
    for field, pattern in patterns:
        match = re.search(pattern, text, re.M)
        if not match:
            raise IntegrityError("the base backup's backup_label lacks its %s line: it is damaged or not "
                                 "PostgreSQL's" % field.replace("_", " "))
        found[field] = match.group(1)
        if field == "start_lsn":
            found["start_wal_file"] = match.group(2)
    found["timeline"] = int(found["timeline"])
    return found


def _manifest_files(document):
    """``{path: (size, sha256)}`` of a manifest's Files; IntegrityError for an entry that is not one, or whose checksum
    is not SHA-256 (a backup taken without --manifest-checksums=SHA256 cannot be checked here)."""
    files = document.get("Files")
    if not isinstance(files, list):
        raise IntegrityError("the base backup's backup_manifest has no Files list: it is damaged")
    listed = {}
    for entry in files:
        if not isinstance(entry, dict):
            raise IntegrityError("the base backup's backup_manifest has a Files entry that is not an object")
        if "Encoded-Path" in entry:
            try:
                path = bytes.fromhex(entry["Encoded-Path"]).decode("utf-8", "surrogateescape")
            except (TypeError, ValueError):
                raise IntegrityError("the base backup's backup_manifest has an invalid Encoded-Path %r"
                                     % (entry.get("Encoded-Path"),))
        else:
            path = entry.get("Path")
        size, algorithm, checksum = entry.get("Size"), entry.get("Checksum-Algorithm"), entry.get("Checksum")
        if not isinstance(path, str) or not path or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise IntegrityError("the base backup's backup_manifest has a Files entry without a valid path and size: %r"
                                 % (entry,))
        if algorithm != "SHA256" or not isinstance(checksum, str) or not re.match(r"\A[0-9a-f]{64}\Z", checksum):
            raise IntegrityError("the base backup's backup_manifest lists %s with checksum algorithm %r, not SHA256: "
                                 "it was not taken by quankey-backup (which asks pg_basebackup for "
                                 "--manifest-checksums=SHA256), so its files cannot be checked" % (path, algorithm))
        if path in listed:
            raise IntegrityError("the base backup's backup_manifest lists %s twice" % path)
        listed[path] = (size, checksum)
    return listed


def _wal_range(document):
    ranges = document.get("WAL-Ranges")
    if not isinstance(ranges, list) or not ranges:
        raise IntegrityError("the base backup's backup_manifest has no WAL-Ranges: it is damaged")
    try:
        for item in ranges:
            lsn_value(item["Start-LSN"])
            lsn_value(item["End-LSN"])
            if isinstance(item["Timeline"], bool) or not isinstance(item["Timeline"], int) or item["Timeline"] < 1:
                raise ValueError("timeline %r" % (item["Timeline"],))
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError("the base backup's backup_manifest has an invalid WAL-Ranges entry (%s)" % exc)
    # one range per timeline the backup's WAL crosses: it starts at the earliest start, ends at the latest end
    first = min(ranges, key=lambda item: lsn_value(item["Start-LSN"]))
    last = max(ranges, key=lambda item: lsn_value(item["End-LSN"]))
    return first["Start-LSN"], last["End-LSN"], last["Timeline"]


def check_against_manifest(manifest, files, label):
    """Check a base backup's members (``{path: (size, sha256)}``) against its manifest; the backup's summary.

    ``manifest`` and ``label`` are the bytes of its backup_manifest and backup_label members (None when absent).
    Returns ``{"start_lsn", "stop_lsn", "timeline", "start_wal_file", "checkpoint_lsn", "backup_label",
    "manifest": {"sha256", "size_bytes", "files", "data_bytes"}}``; IntegrityError names the first problem.
    """
    if manifest is None:
        raise IntegrityError("the base backup's tar holds no backup_manifest: it was not taken by quankey-backup "
                             "(pg_basebackup with a manifest, PostgreSQL 13 or later) or was cut short")
    if label is None:
        raise IntegrityError("the base backup's tar holds no backup_label: it is not a base backup of pg_basebackup")
    if not manifest_checksum_ok(manifest):
        raise IntegrityError("the base backup's backup_manifest does not match its own Manifest-Checksum: it was "
                             "modified or damaged")
    try:
        document = json.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("the base backup's backup_manifest is not valid JSON (%s)" % exc)
    if not isinstance(document, dict) or document.get("PostgreSQL-Backup-Manifest-Version") not in MANIFEST_VERSIONS:
        raise IntegrityError("the base backup's backup_manifest is not a PostgreSQL backup manifest of version %s"
                             % " or ".join(str(version) for version in MANIFEST_VERSIONS))
    listed = _manifest_files(document)
    for path, (size, checksum) in sorted(listed.items()):
        if path not in files:
            raise IntegrityError("the base backup's manifest lists %s, which its tar does not hold: the backup is "
                                 "incomplete" % path)
        got_size, got_sum = files[path]
        if got_size != size:
            raise IntegrityError("the base backup's %s is %d bytes in the tar, %d in its manifest: it was modified or "
                                 "damaged" % (path, got_size, size))
        if got_sum != checksum:
            raise IntegrityError("the base backup's %s has SHA-256 %s, its manifest says %s: it was modified or damaged"
                                 % (path, got_sum, checksum))
    extra = sorted(path for path in files if path not in listed and path != MANIFEST_NAME)
    if extra:
        more = " and %d more" % (len(extra) - 5) if len(extra) > 5 else ""
        raise IntegrityError("the base backup's tar holds %s%s, which its manifest does not list: it was modified"
                             % (", ".join(extra[:5]), more))
    start, stop, timeline = _wal_range(document)
    found = parse_label(label)
    if found["start_lsn"] != start:
        raise IntegrityError("the base backup's backup_label starts at %s but its manifest at %s: one of them is another "
                             "backup's" % (found["start_lsn"], start))
    return {"start_lsn": start, "stop_lsn": stop, "timeline": timeline, "start_wal_file": found["start_wal_file"],
            "checkpoint_lsn": found["checkpoint_lsn"], "backup_label": label.decode("utf-8", "replace"),
            "manifest": {"sha256": hashlib.sha256(manifest).hexdigest(), "size_bytes": len(manifest),
                         "files": len(listed), "data_bytes": sum(size for size, _sum in listed.values())}}
