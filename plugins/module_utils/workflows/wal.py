# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Continuous WAL archiving: ``wal-push`` (PostgreSQL's ``archive_command``) and ``wal-fetch`` (its
``restore_command``), each WAL file one object (formats/walobject.py) at ``<prefix>wal/<host>/<timeline>/<name>``.

Push: read the file, SHA-256 it, compress, encrypt under a fresh data key in the configured mode (aes-256-gcm or
hybrid-pq, the data key's wrap bound to the host and the file's name), sign the document, and write the object with
one PutObject only where none is (If-None-Match). Success is reported only once the store confirmed the write. An
object already there is compared through its *signed* document: the same plaintext SHA-256 is success, anything
else (another content, an unsigned or foreign object) is refused, naming the file. Up to ``WAL_PUSH_AHEAD`` other
segments PostgreSQL marked ready are pushed at the same time, each leaving a marker (``pg_wal/.quankey-pushed/``)
that PostgreSQL's own call for it checks against the file's SHA-256 instead of pushing again.

Fetch: read the object, check its document (its place, its signature under a key held here), open its data key,
decrypt (every segment authenticated), decompress, compare size and SHA-256 with the signed document, and write
the file atomically (a temporary name in the target's directory, fsync, rename). A file the archive does not hold
is :class:`NotArchivedError` (PostgreSQL's "not found"); a segment missing while a later one of its timeline is
archived is :class:`WalGapError`, naming both. The next ``WAL_PREFETCH`` segments are fetched at the same time, in
threads, verified the same way, and kept as plaintext in a spool directory (0700) for the next calls.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import hashlib
import json
import logging
import os
import tempfile
import time

from .. import keys
from ..catalog import layout, walnames
from ..errors import (ConfigError, ConflictError, IntegrityError, NotFoundError, RefusedError, TamperedError,
                      in_step)
from ..formats import modes, signing, walobject
from ..formats.compression import compressor, decompressor
from . import wiring

LOG = logging.getLogger("quankey_backup")

PREFETCH_DIR = ".quankey-prefetch"  # under the target's directory (pg_wal/) unless WAL_SPOOL_DIR says where
PUSHED_DIR = ".quankey-pushed"  # in pg_wal/: a marker per segment pushed ahead, until PostgreSQL asks for it
STANDBY_SIGNAL = "standby.signal"
CONTENT_TYPE = "application/octet-stream"


class NotArchivedError(NotFoundError):
    """The archive holds no file of this name: for PostgreSQL, the end of the archive."""


class WalGapError(IntegrityError):
    """A segment is missing from the archive while a later segment of its timeline is there."""


class _WalRecord:
    """What the key context needs to open an archived file's data key: its document and its place (the binding)."""

    def __init__(self, host, name, document):
        self.host = host
        self.db = walobject.WAL_BINDING_DATABASE
        self.basename = name
        self.metadata = document
        self.seed = False


def _utc_text(when):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _mode(context):
    """The configured encryption mode, when it can archive WAL (it must have a data key: aes-256-gcm, hybrid-pq)."""
    mode = context.mode()
    if not mode.has_data_key:
        raise ConfigError("%s=%s cannot archive WAL: it exists to read the seed's backups and authenticates nothing; use "
                          "aes-256-gcm or hybrid-pq" % (context.settings.label("encryption"), mode.name))
    return mode


# --------------------------------------------------------------------------- push

def push(settings, path, *, store=None, context=None, ahead=None):
    """Archive the WAL file at ``path`` (archive_command's %p); returns what was done, or raises.

    ``status`` is ``archived`` (written now), ``already archived`` (an object of the same content, by its signed
    document, was there) or ``archived ahead`` (an earlier call stored this very content, as its marker in
    ``pg_wal/.quankey-pushed/`` and the file's SHA-256 now say). RefusedError when an object of other content, or
    one that cannot be trusted, is there.

    ``ahead`` (default WAL_PUSH_AHEAD): also push that many of the next segments PostgreSQL has marked ready
    (``archive_status/<name>.ready`` beside the file), at the same time in threads, each leaving a marker, so that
    PostgreSQL's calls for them only check it. A push ahead that fails is a warning: the segment is pushed when
    PostgreSQL asks for it.
    """
    started = time.time()
    wal = walnames.parse(os.path.basename(path or ""), "archive_command's %p")
    host = settings.host
    key = layout.wal_key(settings.prefix, host, wal.timeline, wal.name)
    plain = _read_wal(path)
    checksum = hashlib.sha256(plain).hexdigest()
    result = {"name": wal.name, "kind": wal.kind, "timeline": wal.timeline, "object_key": key, "bucket": settings.bucket,
              "size_bytes": len(plain), "checksum_sha256": checksum, "pushed_ahead": []}
    if _consume_marker(path, settings.bucket, key, checksum, len(plain)):
        result.update(status="archived ahead", seconds=round(time.time() - started, 3))
        LOG.info("wal-push %s: archived ahead by an earlier call (same SHA-256 %s)", wal.name, checksum)
        return result
    context = context or keys.KeyContext(settings)
    mode = _mode(context)
    mode.require(context)  # reads the keys, before any thread asks
    store = wiring.store_or_open(settings, store)
    when = _utc_text(started)
    others = _ready_after(path, wal, settings.wal_push_ahead if ahead is None else ahead)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(others), 1)) as pool:
        later = [(name, pool.submit(_push_ahead_one, settings, context, mode, store, os.path.join(
            os.path.dirname(path), name), when)) for name in others]
        status, stored, kid = _store(settings, context, mode, store, wal, key, plain, checksum, when)
        for name, future in later:
            if future.result():
                result["pushed_ahead"].append(name)
    result.update(status=status, stored_bytes=stored, compression=settings.compression, encryption=mode.name,
                  key_id=kid, seconds=round(time.time() - started, 3))
    LOG.info("wal-push %s: %s at %s (%d bytes, %d stored)%s in %.2fs", wal.name, status, store.url(key), len(plain),
             stored, ", %d pushed ahead" % len(result["pushed_ahead"]) if result["pushed_ahead"] else "",
             result["seconds"])
    return result


def _read_wal(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError("cannot read WAL file %s: %s (archive_command runs as the cluster's OS user, in its data "
                          "directory: give it %%p)" % (path, exc.strerror or exc))


def _store(settings, context, mode, store, wal, key, plain, checksum, when):
    """Compress, encrypt, sign and write one file (only where no object is); ``(status, stored bytes, key id)``."""
    host = settings.host
    packing = compressor(settings.compression)
    packed = packing.update(plain) + packing.finalize()
    envelope, kid, recipient_ids, make = mode.new_encryptors(context, (host, walobject.WAL_BINDING_DATABASE, wal.name))
    sealing = make()
    sealed = sealing.update(packed) + sealing.finalize()
    document = walobject.build_document(
        host=host, timeline=wal.timeline, name=wal.name, object_key=key, size_bytes=len(plain), checksum=checksum,
        compression=settings.compression, encryption=mode.name, key_id=kid, envelope=envelope, created_at=when,
        recipient_ids=recipient_ids)
    blob = walobject.pack(context.sign(document), sealed)
    try:
        in_step("upload", store.put_bytes, key, blob, CONTENT_TYPE, True)
    except ConflictError:
        _same_as_archived(store, context, key, host, wal, checksum, len(plain))
        return "already archived", len(blob), kid
    return "archived", len(blob), kid


def _push_ahead_one(settings, context, mode, store, path, when):
    """Push the ready segment at ``path`` and leave its marker; whether it did (a failure is a warning)."""
    try:
        wal = walnames.parse(os.path.basename(path))
        key = layout.wal_key(settings.prefix, settings.host, wal.timeline, wal.name)
        plain = _read_wal(path)
        checksum = hashlib.sha256(plain).hexdigest()
        _store(settings, context, mode, store, wal, key, plain, checksum, when)
        directory = os.path.join(os.path.dirname(path), PUSHED_DIR)
        _ensure_private(directory)
        write_atomically(os.path.join(directory, wal.name), json.dumps(
            {"bucket": store.bucket, "object_key": key, "sha256": checksum, "size": len(plain)}).encode("ascii"))
        return True
    except Exception as exc:  # pylint: disable=broad-except  # pushed again when PostgreSQL asks for it
        LOG.warning("wal-push: pushing %s ahead failed (%s); it is pushed when PostgreSQL asks for it",
                    os.path.basename(path), exc)
        return False


def _ready_after(path, wal, count):
    """What PostgreSQL marked ready to archive (``archive_status/*.ready`` beside ``path``) besides ``path``, none
    with a marker already: every backup history file (``*.backup``, a few hundred bytes each) and up to ``count``
    segments, oldest first.

    The backup history files go along because a base backup's end waits for two archive_command calls, the stop
    segment's and then its ``.backup`` file's, and PostgreSQL looks again only once a second: with the second
    one only a marker check, the base backup ends a round sooner."""
    if count <= 0 or not wal.is_segment:
        return []
    directory = os.path.dirname(path)
    try:
        ready = os.listdir(os.path.join(directory, "archive_status"))
    except OSError:
        return []
    names = sorted(entry[:-len(".ready")] for entry in ready if entry.endswith(".ready"))
    kinds = {name: _kind_of(name) for name in names if name != wal.name}
    waiting = [name for name, kind in kinds.items() if kind in (walnames.SEGMENT, walnames.BACKUP_LABEL)
               and not os.path.exists(os.path.join(directory, PUSHED_DIR, name))
               and os.path.isfile(os.path.join(directory, name))]
    labels = [name for name in sorted(waiting) if kinds[name] == walnames.BACKUP_LABEL]
    segments = [name for name in sorted(waiting) if kinds[name] == walnames.SEGMENT]
    return labels + segments[:count]


def _consume_marker(path, bucket, key, checksum, size):
    """Whether an earlier call pushed this very content to this key (its marker, removed now); False otherwise."""
    marker = os.path.join(os.path.dirname(path), PUSHED_DIR, os.path.basename(path))
    try:
        with open(marker, "rb") as handle:
            recorded = json.loads(handle.read().decode("ascii"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    try:
        os.unlink(marker)
    except OSError:
        pass
    return recorded == {"bucket": bucket, "object_key": key, "sha256": checksum, "size": size}


def _same_as_archived(store, context, key, host, wal, checksum, size):
    """An object is already at ``key``: return when its signed document says it holds this very content, else raise
    RefusedError naming the file (an object that cannot be trusted is never taken for ours, nor overwritten)."""
    blob = in_step("read back", store.get_bytes, key)
    try:
        document = verified_document(context, store, key, blob, host, wal)[0]
    except IntegrityError as exc:
        raise RefusedError("WAL file %s was NOT archived: %s already holds an object that is not a trustworthy archived "
                           "copy of it (%s); nothing was overwritten: find out who wrote it, and remove it only once you "
                           "know the archive does not need it" % (wal.name, store.url(key), exc.message))
    if document["checksum_sha256"] == checksum and document["size_bytes"] == size:
        LOG.info("wal-push %s: already archived with the same content (SHA-256 %s, by its signed document)", wal.name,
                 checksum)
        return
    raise RefusedError("WAL file %s was NOT archived: %s already holds a DIFFERENT %s (%d bytes, SHA-256 %s; this one: %d "
                       "bytes, SHA-256 %s). Two clusters may be archiving as host %s (%s), or this cluster was "
                       "restored and took an old timeline; give each cluster its own host id, never delete the "
                       "archived copy to make room" % (wal.name, store.url(key), wal.name, document["size_bytes"],
                                                       document["checksum_sha256"], size, checksum, host,
                                                       context.settings.label("host_id")))


# --------------------------------------------------------------------------- reading one object

def verified_document(context, store, key, blob, host, wal):
    """``(document, data object)`` of an archived file's bytes, once its document is known to be this file's (its
    host, timeline, name and key) and signed with a key held here; IntegrityError (TamperedError) otherwise."""
    where = store.url(key)
    document, data = walobject.unpack(blob, where)
    place = {"host": host, "timeline": wal.timeline, "name": wal.name, "object_key": key}
    wrong = sorted(field for field, value in place.items() if document[field] != value)
    if wrong:
        raise TamperedError("%s holds the document of another WAL file (its %s %s): it was copied or moved there; it "
                            "is refused" % (where, ", ".join(wrong), "differs" if len(wrong) == 1 else "differ"))
    outcome, kid = signing.verify_metadata(document, context.signing_keys()[2])
    if outcome == signing.INVALID:
        raise TamperedError("%s's signature is invalid: its document (checksum, envelope or place) was changed after it "
                            "was written, or the signature was damaged; it is refused" % where)
    if outcome == signing.UNKNOWN_KEY:
        raise IntegrityError("%s is signed with key %s, which is not among the keys given: %s"
                             % (where, kid, context.signature_fix()))
    if outcome != signing.VALID:
        raise IntegrityError("%s is not signed: an archived WAL file is always signed, so it was not written by "
                             "quankey-backup or its signature was removed; it is refused" % where)
    return document, data


def open_object(context, store, key, blob, host, wal):
    """The plaintext of an archived file's bytes: the document checked (:func:`verified_document`), its data key
    opened, every segment authenticated, decompressed, and its size and SHA-256 those of the signed document."""
    document, data = verified_document(context, store, key, blob, host, wal)
    mode = modes.of(document, wal.name)
    if not mode.has_data_key:
        raise IntegrityError("%s says encryption %s, which no archived WAL file uses: it is refused"
                             % (store.url(key), mode.name))
    record = _WalRecord(host, wal.name, document)
    decrypting = mode.opener(context, store, record)()
    packed = in_step("decrypt", _run, decrypting, data)
    plain = in_step("decompress", _run, decompressor(document["compression"]), packed)
    if len(plain) != document["size_bytes"] or hashlib.sha256(plain).hexdigest() != document["checksum_sha256"]:
        raise TamperedError("%s decrypted, but its content (%d bytes, SHA-256 %s) is not what its signed document "
                            "records (%d bytes, SHA-256 %s): it is refused" % (
                                store.url(key), len(plain), hashlib.sha256(plain).hexdigest(), document["size_bytes"],
                                document["checksum_sha256"]))
    return plain


def _run(stream, data):
    return stream.update(data) + stream.finalize()


# --------------------------------------------------------------------------- fetch

def fetch(settings, name, target, *, host=None, store=None, context=None, prefetch=None, spool_dir=None):
    """Restore archived file ``name`` (restore_command's %f) to ``target`` (its %p); returns what was done, or raises
    NotArchivedError (not in the archive), WalGapError (missing while a later segment is archived), or another
    BackupError (the object cannot be trusted or read)."""
    started = time.time()
    wal = walnames.parse(name, "restore_command's %f")
    host = host or settings.host
    target = os.path.abspath(target or "")
    if not target or os.path.isdir(target):
        raise ConfigError("restore_command's %%p %r is not a file name to write: give restore_command '... wal-fetch %%f "
                          "%%p'" % target)
    count = settings.wal_prefetch if prefetch is None else prefetch
    spool = os.path.join(spool_dir or settings.wal_spool_dir or os.path.join(os.path.dirname(target), PREFETCH_DIR),
                         host)
    result = {"name": wal.name, "host": host, "target": target, "prefetched": []}
    spooled = os.path.join(spool, wal.name)
    if os.path.isfile(spooled):
        _place(spooled, target)
        forget_older(spool, wal)
        result.update(status="restored from prefetch", seconds=round(time.time() - started, 3))
        LOG.info("wal-fetch %s: restored from the prefetch spool %s", wal.name, spool)
        return result
    context = context or keys.KeyContext(settings)
    context.signing_keys()  # read every key once, before any thread asks
    context.known_ids()  # the keyring and the identities, read now too
    store = wiring.store_or_open(settings, store)
    ahead = walnames.following(wal.name, count)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1 + len(ahead)) as pool:
        later = [(next_name, pool.submit(_prefetch_one, settings, context, store, host, next_name)) for next_name in ahead]
        try:
            key, plain = read_archived(settings, store, context, host, wal)
        except NotFoundError:
            for _name, future in later:
                future.cancel()
            raise
        write_atomically(target, plain)
        fresh = [(next_name, future.result()) for next_name, future in later]
    if ahead and len(plain) == walnames.DEFAULT_SEGMENT_SIZE:  # the names guessed for 16 MiB segments are the next ones
        for next_name, data in fresh:
            if data is None:
                break  # the archive's end, or a file that could not be read: fetched (and reported) when asked for
            _ensure_private(spool)
            write_atomically(os.path.join(spool, next_name), data)
            result["prefetched"].append(next_name)
    result.update(status="restored", object_key=key, bucket=store.bucket, size_bytes=len(plain),
                  seconds=round(time.time() - started, 3))
    LOG.info("wal-fetch %s: restored from %s (%d bytes)%s in %.2fs", wal.name, store.url(key), len(plain),
             ", %d prefetched" % len(result["prefetched"]) if result["prefetched"] else "", result["seconds"])
    return result


def read_archived(settings, store, context, host, wal):
    """``(object key, verified plaintext)`` of archived file ``wal`` (a walnames name) of ``host``; NotArchivedError
    when the archive does not hold it, WalGapError when it is a hole (a later segment of its timeline is there), or
    another BackupError when its object cannot be trusted or read. wal-fetch and restore --pitr's feeder read so."""
    key = layout.wal_key(settings.prefix, host, wal.timeline, wal.name)
    try:
        blob = in_step("download", store.get_bytes, key)
    except NotFoundError:
        raise _not_archived(settings, store, host, wal, key)
    return key, open_object(context, store, key, blob, host, wal)


def prefetch_one(settings, context, store, host, name):
    """:func:`read_archived`'s plaintext of ``name``, or None when it is not archived or cannot be read (a warning):
    a guess at what recovery asks for next, read again in its own call (which fails loudly) when it is asked for."""
    return _prefetch_one(settings, context, store, host, name)


def _prefetch_one(settings, context, store, host, name):
    """The verified plaintext of segment ``name``, or None when it is not archived or cannot be read (a warning)."""
    wal = walnames.parse(name)
    key = layout.wal_key(settings.prefix, host, wal.timeline, name)
    try:
        return open_object(context, store, key, store.get_bytes(key), host, wal)
    except NotFoundError:
        return None
    except Exception as exc:  # pylint: disable=broad-except  # asked for again, in its own call, which fails loudly
        LOG.warning("wal-fetch: prefetching %s failed (%s); it is read again when PostgreSQL asks for it", name, exc)
        return None


def _not_archived(settings, store, host, wal, key):
    """The error of a file the archive does not hold: NotArchivedError, or WalGapError when a later segment of its
    timeline is archived (a hole in the archive, not its end)."""
    if wal.is_segment:
        for stem in walnames.xlogid_prefixes(wal.name):
            base = layout.wal_prefix(settings.prefix, host, wal.timeline)
            for item in store.list_objects(base + stem):
                later = item["key"][len(base):]
                if later > wal.name and _is_segment_name(later):
                    return WalGapError(
                        "WAL segment %s is MISSING from the archive (%s), but the later segment %s of timeline %s is "
                        "there: the archive has a hole, and recovery cannot go past %s. Look for the segment (the "
                        "replica bucket, the source's pg_wal), or recover to a point before it"
                        % (wal.name, store.url(key), later, wal.timeline, wal.name), step="download")
    return NotArchivedError("%s is not in the archive (%s)" % (wal.name, store.url(key)))


def _kind_of(text):
    """walnames' kind of a WAL file's name, None for another name."""
    try:
        return walnames.parse(text).kind
    except ConfigError:
        return None


def _is_segment_name(text):
    return _kind_of(text) == walnames.SEGMENT


# --------------------------------------------------------------------------- files

def write_atomically(path, data):
    """Write ``data`` to ``path`` whole or not at all: a temporary name in its directory, fsync, rename, fsync the
    directory. The file is mode 0600."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _place(spooled, target):
    """Move a prefetched file to the target: a rename within one file system, else a copy written atomically."""
    try:
        os.replace(spooled, target)
        _fsync_directory(os.path.dirname(target))
        return
    except OSError:
        pass
    with open(spooled, "rb") as handle:
        data = handle.read()
    write_atomically(target, data)
    os.unlink(spooled)


def _ensure_private(path):
    """The directory ``path``, made 0700 (with its parent) when missing; refused when others may enter it."""
    for directory in (os.path.dirname(path), path):
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise ConfigError("%s is mode %04o: it holds WAL or what was archived of it, so only its owner may enter it: "
                          "chmod 700 it (or set WAL_SPOOL_DIR elsewhere)" % (path, mode))


def forget_older(spool, wal):
    """Remove the segments in ``spool`` of ``wal``'s timeline that come before it (recovery has gone past them):
    wal-fetch's prefetch spool, restore --pitr's ready/."""
    if not wal.is_segment:
        return
    try:
        names = os.listdir(spool)
    except OSError:
        return
    for other in names:
        if len(other) == 24 and other[:8] == wal.timeline and other < wal.name:
            try:
                os.unlink(os.path.join(spool, other))
            except OSError:
                pass


def is_standby(target):
    """Whether the cluster restoring to ``target`` (``<data dir>/pg_wal/...``) is a standby (standby.signal): its
    restore_command failures are retried by PostgreSQL, never taken for the end of recovery."""
    datadir = os.path.dirname(os.path.dirname(os.path.abspath(target)))
    return os.path.exists(os.path.join(datadir, STANDBY_SIGNAL)) or os.path.exists(STANDBY_SIGNAL)
