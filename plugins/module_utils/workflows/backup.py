# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Taking a backup: pg_dump -Fc -Z0 -> compress -> encrypt -> SHA-256 -> S3 multipart upload, then the metadata
object (the commit marker) last. Fail closed: on any failure the upload is aborted (or the object deleted), no
metadata is written, and the error names the step that failed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import functools
import hashlib
import logging
import queue
import subprocess
import threading
import time

from .. import keys
from ..adapters import pgglobals
from ..adapters.postgres import explain_client_error
from ..adapters.process import CHUNK, Child, SnapshotSession, TocReader
from ..adapters.s3 import choose_part_size, lock_of_settings
from ..catalog import documents, layout
from ..errors import AccessDeniedError, ConflictError, IntegrityError, PostgresError, RefusedError
from ..formats import globaldoc, magic, modes
from ..formats.compression import check_compression, compressor
from ..formats.compression import get as get_codec
from ..formats.pgarchive import RangeIndexer, range_bytes
from ..progress import Progress, Stages
from . import replica, wiring

NAME_ATTEMPTS = 3  # a backup whose name (one-second resolution) is taken waits for the next second, this many times
LOG = logging.getLogger("quankey_backup")


class BackupPlan:
    """What a backup will do, found by checking everything it needs first (also check mode's answer)."""

    def __init__(self, settings, pg, store, *, server_version, dump_version, when, db_size, db_settings, context):
        self.settings = settings
        self.context = context
        self.pg = pg
        self.store = store
        self.server_version = server_version
        self.dump_version = dump_version
        self.when = when
        self.basename = layout.backup_basename(settings.name, when)
        self.object_key = layout.object_key(settings.prefix, settings.host, settings.db_name, self.basename)
        self.metadata_key = layout.metadata_key(settings.prefix, settings.host, settings.db_name, self.basename)
        self.db_size = db_size
        self.db_settings = db_settings

    def describe(self):
        """The plan as a JSON-ready dict (no secrets)."""
        return {"name": self.basename, "bucket": self.store.bucket, "object_key": self.object_key,
                "metadata_key": self.metadata_key, "database": self.settings.db_name, "host": self.settings.host,
                "database_size_bytes": self.db_size, "server_version": _format_server_version(self.server_version),
                "pg_dump_version": self.dump_version, "compression": self.settings.compression,
                "encryption": self.settings.encryption, "storage_class": self.settings.storage_class,
                "key_id": self.context.active_key_id(), "signing_key_id": self.context.signer()[0],
                "globals": self.settings.globals, "object_lock": _lock_view(self.store.object_lock),
                "row_counts": self.settings.count_rows}


def plan_backup(settings, store=None, now=None, *, pg=None):
    """Check configuration, keys, PostgreSQL (login, pg_dump version) and the bucket; change nothing.

    ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py).
    """
    settings.require("db_name", "bucket")
    check_compression(settings.compression, settings.label("compression"))
    context = keys.KeyContext(settings)
    context.require_sealing()
    pg = wiring.postgres(settings, pg)
    server_version = pg.server_version_num(settings.db_name)
    dump_version = pg.check_client_version(server_version, "pg_dump")
    store = wiring.store_or_open(settings, store)
    store.check_bucket(layout.object_prefix(settings.prefix, settings.host, settings.db_name))
    store.object_lock = lock_of_settings(settings)  # every object of this backup is locked, or none
    store.check_object_lock()  # a bucket without Object Lock fails here, before anything is uploaded
    size, db_settings = pg.database_size(settings.db_name), pg.database_settings(settings.db_name)
    for attempt in range(NAME_ATTEMPTS):
        plan = BackupPlan(settings, pg, store, server_version=server_version, dump_version=dump_version,
                          when=now or layout.utcnow(), db_size=size, db_settings=db_settings, context=context)
        if not (store.exists(plan.metadata_key) or store.exists(plan.object_key)):
            return plan
        if now is not None or attempt == NAME_ATTEMPTS - 1:
            break
        time.sleep(1.0 - time.time() % 1.0 + 0.01)  # names have a resolution of one second: take the next one
    raise RefusedError("a backup named %s already exists in %s: another backup of this database is running at the "
                       "same time, or the clock went back; run again" % (plan.basename, store.url()))


def run_backup(settings, progress=None, store=None, now=None, *, pg=None):
    """Take one backup of ``settings.db_name``; returns a summary dict. Raises BackupError on any failure.

    ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py). ``progress`` (a
    progress.Progress; default one that logs every PROGRESS_LOG_SECONDS) hears the dump's bytes towards the
    database's size; the result's ``stage_seconds`` says how long each stage took.
    """
    progress = progress if progress is not None else Progress("backup")
    stages = Stages(progress)
    retried = store.retry_counts() if store is not None else None  # a store handed in may have served other runs
    started = time.time()
    with stages("prepare"):
        plan = plan_backup(settings, store, now, pg=pg)
        context = plan.context
        pg, store, when, basename = plan.pg, plan.store, plan.when, plan.basename
        obj_key, meta_key = plan.object_key, plan.metadata_key
        LOG.info("backup %s of database %s (%s, %d bytes on disk) to %s", basename, settings.db_name, pg.where,
                 plan.db_size, store.url(obj_key))

        identity = (settings.host, settings.db_name, basename)
        encryption, envelope, kid, recipient_ids, make_encryptor = new_encryptors(context, identity)
        cluster = None
        if settings.globals:
            cluster = pgglobals.capture(pg, settings.db_name, settings.host, basename)
            for warning in cluster["warnings"]:
                LOG.warning("%s (%s)", warning, settings.label("globals") + "=false leaves the globals out")
    session = row_counts = snapshot = None
    try:
        if settings.count_rows:  # BACKUP_COUNT_ROWS: exact row counts, taken in the snapshot pg_dump then dumps
            with stages("count_rows"):
                session = SnapshotSession(pg, settings.db_name, settings.lock_wait_timeout)
                snapshot = session.open()
                row_counts = session.count_rows()
            LOG.info("counted the rows of %d tables (%d rows) in snapshot %s", len(row_counts),
                     sum(item[2] for item in row_counts), snapshot)
        with stages("dump_upload", total=plan.db_size, estimated=True):  # the dump's size is not known before its end
            stored = _BackupStream(plan, make_encryptor(), progress, indexed=modes.get(encryption).authenticated,
                                   snapshot=snapshot).run()
    finally:
        if session is not None:
            session.close()
    globals_key = layout.globals_key(obj_key)
    with stages("commit"):
        try:
            globals_summary = store_globals(store, globals_key, cluster, make_encryptor()) if cluster else None
        except BaseException:
            _delete_quietly(store, obj_key)
            raise
        duration = time.time() - started
        view = settings.describe()
        view["db_name"] = settings.db_name
        metadata = documents.build_metadata(
            view, basename=basename, when=when, object_key=obj_key, size_bytes=stored["size_bytes"],
            checksum=stored["sha256"], envelope=envelope, key_id=kid, table_count=stored["table_count"],
            dump_bytes=stored["dump_bytes"], duration=duration,
            server_version=_format_server_version(plan.server_version), pg_dump_version=plan.dump_version,
            database_settings=plan.db_settings, encryption_name=encryption, globals_summary=globals_summary,
            data_ranges=stored["data_ranges"], row_counts=row_counts)
        if recipient_ids:
            metadata["recipient_ids"] = recipient_ids
        metadata = context.sign(metadata)
        document = documents.encode_metadata(metadata)
        commit(store, meta_key, obj_key, document, also=[globals_key] if cluster else [])
    replicated = None  # no replica (S3_REPLICA_BUCKET unset); else what its copy did (a failure is no backup failure)
    if settings.replica_bucket:
        with stages("replica"):
            replicated = replica.replicate_committed(settings, store, meta_key, document, metadata)
    LOG.info("backup %s committed: %d bytes stored (dump %d bytes, %d tables) in %.1fs (%s)", basename,
             stored["size_bytes"], stored["dump_bytes"], stored["table_count"], stages.elapsed(), stages.text())
    return {
        "name": basename, "object_key": obj_key, "metadata_key": meta_key, "bucket": store.bucket,
        "size_bytes": stored["size_bytes"], "dump_bytes": stored["dump_bytes"], "checksum_sha256": stored["sha256"],
        "table_count": stored["table_count"], "timestamp": metadata["timestamp"], "created_at": metadata["created_at"],
        "duration_seconds": stages.elapsed(), "stage_seconds": stages.result(), "compression": settings.compression,
        "encryption": encryption, "key_id": metadata["key_id"], "storage_class": settings.storage_class,
        "host": settings.host, "database": settings.db_name, "recipient_ids": recipient_ids,
        "signing_key_id": metadata["signature"]["key_id"], "globals": globals_summary,
        "s3_retries": store.retry_counts(since=retried), "object_lock": _lock_view(store.object_lock, when),
        "replica": replicated, "row_counts": _row_counts_view(row_counts),
    }


def _row_counts_view(row_counts):
    """What a result says of the row counts (BACKUP_COUNT_ROWS): None when not counted, else tables and rows."""
    if row_counts is None:
        return None
    return {"tables": len(row_counts), "rows": sum(item[2] for item in row_counts)}


def _lock_view(lock, when=None):
    """The Object Lock of a backup's objects for results: None, or mode, days (and, once made, the earliest retain-until:
    each object is locked from its own write, so a few seconds or minutes later for the last ones)."""
    if not lock:
        return None
    view = {"mode": lock[0], "days": lock[1]}
    if when is not None:
        view["retain_until_at_least"] = (when + datetime.timedelta(days=lock[1])).strftime("%Y-%m-%dT%H:%M:%SZ")
    return view


def store_globals(store, key, document, encryptor):
    """Encrypt a globals document (formats/globaldoc.py) with ``encryptor`` and store it at ``key`` (only where no
    object is); the metadata's ``globals`` field (its checksum, size and counts)."""
    data = encryptor.update(globaldoc.encode(document)) + encryptor.finalize()
    try:
        store.put_bytes(key, data, content_type="application/octet-stream", if_none_match=True)
    except Exception as failure:  # pylint: disable=broad-except  # read back, else raised again
        if not _stored_as_written(store, key, data):
            raise
        LOG.warning("the write of %s failed (%s) but the store holds it as written", key, failure)
    return globaldoc.summary(document, key, len(data), hashlib.sha256(data).hexdigest())


def _stored_as_written(store, key, data):
    """Whether ``key`` holds exactly ``data`` (a write whose answer was lost may have been stored); False when the
    store cannot say."""
    try:
        return store.get_bytes(key) == data
    except BaseException:  # pylint: disable=broad-except  # out of reach still: the caller fails
        return False


def commit(store, meta_key, obj_key, document, also=()):
    """Write the metadata (the commit marker) only where none is; on failure uncommit: delete the data object.

    A write whose answer was lost may still have been stored: the metadata is read back before
    anything is deleted, and a backup whose metadata is there, as written, is committed. A write
    refused because another writer's metadata of that name appeared (ConflictError) leaves that
    metadata as it is and removes this run's data object, which its conditional create made ours
    alone; on a store without conditional writes it might not be, so it is left for prune.
    """
    try:
        store.put_bytes(meta_key, document, if_none_match=True)
        return
    except BaseException as failure:
        if _stored_as_written(store, meta_key, document):  # else still out of reach, or another's: uncommit below
            LOG.warning("the metadata write of %s failed (%s) but the store holds it as written: the backup is committed",
                        meta_key, failure)
            return
        if isinstance(failure, ConflictError) and not store.conditional_writes:
            raise
        for key in [obj_key] + list(also):
            _delete_quietly(store, key)
        raise


def new_encryptors(context, identity):
    """``(encryption name, envelope, key id, recipient ids or None, make)`` of a new backup: ``make()`` gives an
    encryptor under the backup's key for each of its objects.

    The configured mode (formats.modes) makes it; ``identity`` is ``(host, database, name)``, bound into
    the data key's wrap (format version 2).
    """
    mode = context.mode()
    envelope, kid, recipient_ids, make = mode.new_encryptors(context, identity)
    return mode.name, envelope, kid, recipient_ids, make


def new_encryptor(context, identity):
    """``(encryption name, envelope, key id, recipient ids or None, streaming encryptor)`` of a new one-object backup."""
    name, envelope, kid, recipient_ids, make = new_encryptors(context, identity)
    return name, envelope, kid, recipient_ids, make()


def _format_server_version(num):
    return "%d.%d" % (num // 10000, num % 10000)


def _delete_quietly(store, key):
    """Remove an uncommitted object of a failed backup, as far as this host may: a host whose IAM policy holds no
    s3:DeleteObject (a host that cannot delete, docs/ROLES.md) leaves it, without metadata, so it is no backup: list,
    restore and health never see it, and the prune identity's `prune` sweeps it once stale."""
    try:
        store.delete(key)
    except AccessDeniedError:
        LOG.warning("%s is left without metadata after a failed backup (this host's keys may not delete): it is no "
                    "backup and nothing lists or restores it; the prune identity's `quankey-backup prune` removes it",
                    store.url(key))
    except Exception:  # best effort: an orphan object without metadata is invisible and swept by prune
        LOG.warning("could not delete %s after a failed backup; `quankey-backup prune` removes it", store.url(key))


class _BackupStream:
    """pg_dump -> compress -> encrypt -> hash -> multipart upload, for one object (a :class:`BackupPlan`'s)."""

    def __init__(self, plan, encryptor, progress, indexed=False, snapshot=None):
        self.indexed = indexed
        self.snapshot = snapshot
        self.pg = plan.pg
        self.settings = plan.settings
        self.store = plan.store
        self.key = plan.object_key
        self.encryptor = encryptor
        self.db_size = plan.db_size
        self.progress = progress

    def run(self):
        """Stream the dump into the store; returns sizes, checksum and table count, or raises (upload aborted)."""
        dump = toc = upload = None
        try:
            argv = self.pg.dump_argv(self.settings.db_name)
            if self.snapshot:  # the snapshot whose rows were counted (the exporting transaction stays open meanwhile)
                argv.insert(1, "--snapshot=%s" % self.snapshot)
            dump = Child(argv, self.pg.environment(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, name="pg_dump")
            toc = TocReader(self.pg)
            upload = self.store.open_multipart(self.key, choose_part_size(self.db_size * 2))
            result = self._pump(dump, toc, upload)
            status = dump.wait()
            if status != 0:
                raise PostgresError("%s: %s" % (dump.describe_exit(status), _explain_dump(self.pg, dump)), step="pg_dump")
            if result["dump_bytes"] == 0:
                raise PostgresError("pg_dump produced no output", step="pg_dump")
            result["table_count"] = toc.table_count(step="pg_dump")
            result["size_bytes"] = upload.complete()
            if result["size_bytes"] != result["stored_bytes"]:
                raise IntegrityError("stored %d bytes but produced %d" % (result["size_bytes"], result["stored_bytes"]),
                                     step="upload")
            return result
        except BaseException:
            for child in (dump, toc):
                if child is not None:
                    child.kill()
            if upload is not None:
                upload.abort()
            raise

    def _pump(self, dump, toc, upload):
        indexer = None
        if self.indexed and get_codec(self.settings.compression).framed:
            indexer = RangeIndexer(range_bytes(self.db_size))
        writer = SealedWriter(self.settings.compression, self.encryptor, upload, indexer)
        dump_bytes = 0
        head = b""
        read = dump.proc.stdout.read
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            if dump_bytes < len(magic.PG_DUMP):
                head = (head + chunk)[:len(magic.PG_DUMP)]
            dump_bytes += len(chunk)
            toc.feed(chunk)
            writer.feed(chunk)
            self.progress(dump_bytes)
        result = writer.finish()
        if dump_bytes and head != magic.PG_DUMP:
            raise PostgresError("pg_dump output does not start with the custom-format magic PGDMP", step="pg_dump")
        result["dump_bytes"] = dump_bytes
        return result


class QueuedSink:
    """A sink whose ``methods`` (TarChecker's sink: ``begin``, ``data``, ``end``; a stream's: ``feed``) run in order
    on a thread of their own, and ``close`` (when it has one) last: the restore's stages overlap, the download and
    decryption and decompression on the caller's thread, the manifest's hashing on one, the file writes on another
    (zstd, SHA-256 and file writes all release the GIL). At most ``depth`` calls wait; the bytes given must not change
    afterwards (the restore's are immutable). Each call returns True (a stream's sink stays open); the sink's first
    failure is raised by the caller's next call, or by :meth:`close`."""

    def __init__(self, sink, depth=32, methods=("begin", "data", "end"), name="data-dir-writer"):
        self.sink = sink
        self._calls = queue.Queue(depth)
        self._failure = None
        for method in methods:
            setattr(self, method, functools.partial(self._put, getattr(sink, method)))
        self._thread = threading.Thread(target=self._work, name=name)
        self._thread.daemon = True
        self._thread.start()

    def _work(self):
        while True:
            call = self._calls.get()
            if call is None:
                return
            if self._failure is None or call[0] == self._close_sink:  # after a failure the rest is only drained (no
                try:  # caller blocks), but the sink is still closed
                    call[0](*call[1:])
                except BaseException as exc:  # pylint: disable=broad-except  # raised on the caller's thread
                    self._failure = self._failure or exc  # the first one

    def _put(self, *call):
        if self._failure is not None:
            raise self._failure
        self._calls.put(call)
        return True

    def _close_sink(self):
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()

    def close(self, quiet=False):
        """Wait until every call made has run (the sink's own ``close`` last); then raise the first failure, unless
        ``quiet`` (cleaning up after another error, which must not be hidden by this one). Idempotent."""
        if self._thread is not None:
            self._calls.put((self._close_sink,))
            self._calls.put(None)
            self._thread.join()
            self._thread = None
        if self._failure is not None and not quiet:
            raise self._failure


class SealedWriter:
    """The stored side of a backup: plaintext -> compress -> encrypt -> SHA-256 -> a multipart upload.

    A sink (``feed`` returns True); ``finish`` seals the end and returns ``stored_bytes`` and ``sha256`` (and
    ``data_ranges``, the range index, or None). The caller completes or aborts the upload.

    With ``indexer`` (a formats/pgarchive.RangeIndexer; only for a compression that can end frames) the compressed
    stream is cut into frames where the indexer says, so that a restore can start reading at each one.
    """

    def __init__(self, compression, encryptor, upload, indexer=None):
        self._pack = compressor(compression)
        self._seal = encryptor
        self._upload = upload
        self._digest = hashlib.sha256()
        self._indexer = indexer
        self._held = []
        self.stored = 0
        self.plain = 0  # plaintext bytes compressed so far
        self.packed = 0  # compressed bytes so far

    def _out(self, data):
        if data:
            self._digest.update(data)
            self._upload.write(data)
            self.stored += len(data)

    def _compress(self, data):
        out = self._pack.update(data)
        self.plain += len(data)
        self.packed += len(out)
        return out

    def feed(self, chunk):
        """Add plaintext."""
        if self._indexer is None:
            self._out(self._seal.update(self._compress(chunk)))
            return True
        cuts = self._indexer.split(chunk)
        if cuts is None:  # the TOC's end is not known yet: hold the bytes back
            self._held.append(bytes(chunk))
            return True
        if self._held:
            chunk = b"".join(self._held) + bytes(chunk)
            self._held = []
        view = memoryview(chunk)
        out, pos = [], 0
        for cut in cuts:
            out.append(self._compress(view[pos:cut]))
            frame_end = self._pack.end_frame()
            self.packed += len(frame_end)
            out.append(frame_end)
            self._indexer.started(self.plain, self.packed)
            pos = cut
        out.append(self._compress(view[pos:]))
        self._out(self._seal.update(b"".join(out)))
        return True

    def finish(self):
        """Seal and send the rest; ``{"stored_bytes", "sha256", "data_ranges"}``."""
        if self._held:
            held, self._held = b"".join(self._held), []
            self._out(self._seal.update(self._compress(held)))
        tail = self._pack.finalize()
        self.packed += len(tail)
        self._out(self._seal.update(tail) + self._seal.finalize())
        index = None
        if self._indexer is not None:
            index = self._indexer.index(self.plain, self.packed)
            if index is None:
                LOG.info("this backup has no range index (%s): it restores with one stream", self._indexer.problem)
        return {"stored_bytes": self.stored, "sha256": self._digest.hexdigest(), "data_ranges": index}


def _explain_dump(pg, child):
    return explain_client_error(child.stderr_text(), pg.where, pg.settings.db_user, pg.settings.db_name, pg.settings.label)
