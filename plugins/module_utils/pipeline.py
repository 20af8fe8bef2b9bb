# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup and restore streams, fail closed, in constant memory.

Backup:  pg_dump -Fc -Z0 -> compress -> encrypt -> SHA-256 -> S3 multipart upload,
         then the metadata object (the commit marker) last.
Restore: select -> S3 download -> SHA-256 -> decrypt -> decompress -> pg_restore into a
         staging database -> verify -> rename into place.

Every stage's exit status and byte count is checked; on any failure the upload is
aborted (or the object deleted), no metadata is written, a staging database is
dropped, and the error names the step that failed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import datetime
import functools
import hashlib
import logging
import os
import re
import secrets
import subprocess
import tempfile
import threading
import time

from . import catalog
from . import config
from . import crypto
from . import keys
from . import leftovers
from . import openssl_enc
from .compression import check_compression, compressor, decompressor
from . import trust
from .errors import (AccessDeniedError, BackupError, ChecksumMismatchError, ConfigError, ConflictError, IntegrityError,
                     NotFoundError, PostgresError, RefusedError)
from .dbnames import (PG_NAME_LIMIT, REPLACED_TAG, STAGING_TAG, check_target_name, default_target,
                      side_name)
from .plainsql import PlainSqlGuard
from .postgres import PgClient, count_toc_tables, explain_client_error, failure_detail, toc_owners
from .storage import S3Store, choose_part_size, READ_CHUNK

LOG = logging.getLogger("quankey_backup")
CHUNK = 1024 * 1024
DUMP_MAGIC = b"PGDMP"
CUSTOM_ARCHIVE, PLAIN_SQL = "custom", "sql"  # what a backup's plaintext is
F_SETPIPE_SZ = 1031
NAME_ATTEMPTS = 3  # a backup whose name (one-second resolution) is taken waits for the next second, this many times
RESTORE_LOGIN_MINUTES = 15  # how long a restore role's one-restore password lets it log in (plus download time)
RESTORE_LOGIN_BYTES_PER_MINUTE = 300 * 1024 * 1024
SPOOL_MARGIN = 64 * 1024 * 1024  # free space kept beside a downloaded aes-256-cbc object


class _NoProgress:
    def __call__(self, done, total=None):
        return None


NO_PROGRESS = _NoProgress()


class Child:
    """A client program with its stderr drained (bounded) on a thread so it can never block on it."""

    def __init__(self, argv, env, stdin=None, stdout=None, name=None):
        self.name = name or os.path.basename(argv[0])
        # Popen, not AnsibleModule.run_command: the engine streams through pipes and also runs without Ansible
        self.proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)  # pylint: disable=ansible-bad-function
        self._stderr = collections.deque(maxlen=50)
        self._reader = threading.Thread(target=self._drain, name="%s-stderr" % self.name)
        self._reader.daemon = True
        self._reader.start()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                _grow_pipe(pipe.fileno())

    def _drain(self):
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr.append(line.decode("utf-8", "replace").rstrip())

    def feed(self, data):
        """Write to the program's stdin; False once it has gone away."""
        if not data:
            return True
        try:
            self.proc.stdin.write(data)
            return True
        except (BrokenPipeError, ValueError):
            return False

    def stderr_text(self):
        """The last lines the program wrote to stderr."""
        self._reader.join(timeout=5)
        return "\n".join(self._stderr)

    def wait(self):
        """Close our end of stdin, wait, and return the exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        status = self.proc.wait()
        self._reader.join(timeout=5)
        return status

    def kill(self):
        """Stop the program now (cleanup after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.wait()
        except OSError:
            pass

    def describe_exit(self, status):
        """'exited with status 1' or 'was killed by signal 9'."""
        if status < 0:
            return "%s was killed by signal %d" % (self.name, -status)
        return "%s exited with status %d" % (self.name, status)


def _grow_pipe(fd):
    try:
        import fcntl
        fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
    except (ImportError, OSError):
        pass


class TocReader:
    """Feeds the start of an archive to ``pg_restore --list`` (which stops after the table of contents)."""

    def __init__(self, pg):
        self.child = Child(pg.list_argv(), pg.environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           name="pg_restore --list")
        self._out = []
        self._open = True
        self._reader = threading.Thread(target=self._collect, name="toc-stdout")
        self._reader.daemon = True
        self._reader.start()

    def _collect(self):
        self._out.append(self.child.proc.stdout.read())

    def feed(self, data):
        """Pass bytes on until pg_restore has read what it needs."""
        if not self._open:
            return
        try:
            self.child.proc.stdin.write(data)
        except (BrokenPipeError, ValueError):
            self._open = False

    def listing(self, step):
        """The archive's table of contents as ``pg_restore --list`` prints it."""
        status = self.child.wait()
        self._reader.join()
        if status != 0:
            raise IntegrityError("the archive's table of contents cannot be read (%s: %s)"
                                 % (self.child.describe_exit(status), self.child.stderr_text() or "no error text"),
                                 step=step)
        return b"".join(self._out).decode("utf-8", "replace")

    def table_count(self, step):
        """The number of TABLE entries in the archive's table of contents."""
        return count_toc_tables(self.listing(step))

    def kill(self):
        """Cleanup after a failure."""
        self.child.kill()


def _prefetch(iterable, depth=4):
    """Iterate ``iterable`` on a thread, ``depth`` items ahead (network overlaps decryption)."""
    import queue
    items = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", done))
        except BaseException as exc:  # handed to the consumer
            items.put(("error", exc))

    thread = threading.Thread(target=produce, name="prefetch")
    thread.daemon = True
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()


def open_store(settings, retry_window=None):
    """The S3 store of these settings (``retry_window``: at most that many seconds of retries, for quick answers)."""
    settings.require("bucket")
    return S3Store.from_settings(settings, retry_window)


# --------------------------------------------------------------------------- backup

class BackupPlan:
    """What a backup will do, found by checking everything it needs first (also check mode's answer)."""

    def __init__(self, settings, pg, store, server_version, dump_version, when, db_size, db_settings, context):
        self.settings = settings
        self.context = context
        self.pg = pg
        self.store = store
        self.server_version = server_version
        self.dump_version = dump_version
        self.when = when
        self.basename = catalog.backup_basename(settings.name, when)
        self.object_key = catalog.object_key(settings.prefix, settings.host, settings.db_name, self.basename)
        self.metadata_key = catalog.metadata_key(settings.prefix, settings.host, settings.db_name, self.basename)
        self.db_size = db_size
        self.db_settings = db_settings

    def describe(self):
        """The plan as a JSON-ready dict (no secrets)."""
        return {"name": self.basename, "bucket": self.store.bucket, "object_key": self.object_key,
                "metadata_key": self.metadata_key, "database": self.settings.db_name, "host": self.settings.host,
                "database_size_bytes": self.db_size, "server_version": _format_server_version(self.server_version),
                "pg_dump_version": self.dump_version, "compression": self.settings.compression,
                "encryption": self.settings.encryption, "storage_class": self.settings.storage_class,
                "key_id": self.context.active_key_id(), "signing_key_id": self.context.signer()[0]}


def plan_backup(settings, store=None, now=None):
    """Check configuration, keys, PostgreSQL (login, pg_dump version) and the bucket; change nothing."""
    settings.require("db_name", "bucket")
    check_compression(settings.compression)
    context = keys.KeyContext(settings)
    context.require_sealing()
    pg = PgClient(settings)
    server_version = pg.server_version_num(settings.db_name)
    dump_version = pg.check_client_version(server_version, "pg_dump")
    store = store or open_store(settings)
    store.check_bucket(catalog.object_prefix(settings.prefix, settings.host, settings.db_name))
    size, db_settings = pg.database_size(settings.db_name), pg.database_settings(settings.db_name)
    for attempt in range(NAME_ATTEMPTS):
        plan = BackupPlan(settings, pg, store, server_version, dump_version, now or catalog.utcnow(), size, db_settings,
                          context)
        if not (store.exists(plan.metadata_key) or store.exists(plan.object_key)):
            return plan
        if now is not None or attempt == NAME_ATTEMPTS - 1:
            break
        time.sleep(1.0 - time.time() % 1.0 + 0.01)  # names have a resolution of one second: take the next one
    raise RefusedError("a backup named %s already exists in %s: another backup of this database is running at the "
                       "same time, or the clock went back; run again" % (plan.basename, store.url()))


def run_backup(settings, progress=None, store=None, now=None):
    """Take one backup of ``settings.db_name``; returns a summary dict. Raises BackupError on any failure."""
    progress = progress or _NoProgress()
    started = time.time()
    plan = plan_backup(settings, store, now)
    context = plan.context
    pg, store, when, basename = plan.pg, plan.store, plan.when, plan.basename
    obj_key, meta_key = plan.object_key, plan.metadata_key
    LOG.info("backup %s of database %s (%s, %d bytes on disk) to %s", basename, settings.db_name, pg.where,
             plan.db_size, store.url(obj_key))

    identity = (settings.host, settings.db_name, basename)
    encryption, envelope, kid, recipient_ids, encryptor = new_encryptor(settings, context, identity)
    stream = _BackupStream(pg, settings, store, obj_key, encryptor, plan.db_size, progress)
    stored = stream.run()
    duration = time.time() - started
    view = settings.describe()
    view["db_name"] = settings.db_name
    metadata = catalog.build_metadata(
        view, basename, when, obj_key, stored["size_bytes"], stored["sha256"], envelope, kid,
        stored["table_count"], stored["dump_bytes"], duration, _format_server_version(plan.server_version),
        plan.dump_version, plan.db_settings, encryption, True)
    if recipient_ids:
        metadata["recipient_ids"] = recipient_ids
    metadata = context.sign(metadata)
    commit(store, meta_key, obj_key, catalog.encode_metadata(metadata))
    LOG.info("backup %s committed: %d bytes stored (dump %d bytes, %d tables) in %.1fs", basename,
             stored["size_bytes"], stored["dump_bytes"], stored["table_count"], duration)
    return {
        "name": basename, "object_key": obj_key, "metadata_key": meta_key, "bucket": store.bucket,
        "size_bytes": stored["size_bytes"], "dump_bytes": stored["dump_bytes"], "checksum_sha256": stored["sha256"],
        "table_count": stored["table_count"], "timestamp": metadata["timestamp"], "created_at": metadata["created_at"],
        "duration_seconds": metadata["duration_seconds"], "compression": settings.compression,
        "encryption": encryption, "key_id": metadata["key_id"], "storage_class": settings.storage_class,
        "host": settings.host, "database": settings.db_name, "recipient_ids": recipient_ids,
        "signing_key_id": metadata["signature"]["key_id"],
    }


def commit(store, meta_key, obj_key, document):
    """Write the metadata (the commit marker) only where none is; on failure uncommit: delete the data object.

    A write whose answer was lost may still have been stored: the metadata is read back before
    anything is deleted, and a backup whose metadata is there, as written, is committed. A write
    refused because metadata of that name appeared (ConflictError) leaves the data object for
    prune: with a store without conditional writes it might not be ours alone.
    """
    try:
        store.put_bytes(meta_key, document, if_none_match=True)
        return
    except ConflictError:
        raise
    except BaseException as failure:
        try:
            stored = store.get_bytes(meta_key)
        except BaseException:  # pylint: disable=broad-except  # the store is still out of reach: uncommit below
            stored = None
        if stored == document:
            LOG.warning("the metadata write of %s failed (%s) but the store holds it as written: the backup is committed",
                        meta_key, failure)
            return
        _delete_quietly(store, obj_key)
        raise


def new_encryptor(settings, context, identity):
    """``(encryption name, envelope, key id, recipient ids or None, streaming encryptor)`` of a new backup.

    ``identity`` is ``(host, database, name)``, bound into the data key's wrap (format version 2).
    """
    if settings.encryption == openssl_enc.ENCRYPTION_NAME:
        kid, passphrase = context.cbc_passphrase()
        return (openssl_enc.ENCRYPTION_NAME, openssl_enc.passphrase_envelope(kid), kid, None,
                openssl_enc.CbcEncryptor(passphrase))
    data_key = crypto.new_data_key()
    encryption, envelope, kid, recipient_ids = context.seal(data_key, identity)
    return encryption, envelope, kid, recipient_ids, crypto.StreamEncryptor(data_key)


def _format_server_version(num):
    return "%d.%d" % (num // 10000, num % 10000)


def _delete_quietly(store, key):
    try:
        store.delete(key)
    except Exception:  # best effort: an orphan object without metadata is invisible and swept by prune
        LOG.warning("could not delete %s after a failed backup; `quankey-backup prune` removes it", store.url(key))


class _BackupStream:
    """pg_dump -> compress -> encrypt -> hash -> multipart upload, for one object."""

    def __init__(self, pg, settings, store, key, encryptor, db_size, progress):
        self.pg = pg
        self.settings = settings
        self.store = store
        self.key = key
        self.encryptor = encryptor
        self.db_size = db_size
        self.progress = progress

    def run(self):
        """Stream the dump into the store; returns sizes, checksum and table count, or raises (upload aborted)."""
        dump = toc = upload = None
        try:
            dump = Child(self.pg.dump_argv(self.settings.db_name), self.pg.environment(), stdin=subprocess.DEVNULL,
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
        writer = SealedWriter(self.settings.compression, self.encryptor, upload)
        dump_bytes = 0
        head = b""
        read = dump.proc.stdout.read
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            if dump_bytes < len(DUMP_MAGIC):
                head = (head + chunk)[:len(DUMP_MAGIC)]
            dump_bytes += len(chunk)
            toc.feed(chunk)
            writer.feed(chunk)
            self.progress(dump_bytes)
        result = writer.finish()
        if dump_bytes and head != DUMP_MAGIC:
            raise PostgresError("pg_dump output does not start with the custom-format magic PGDMP", step="pg_dump")
        result["dump_bytes"] = dump_bytes
        return result


class SealedWriter:
    """The stored side of a backup: plaintext -> compress -> encrypt -> SHA-256 -> a multipart upload.

    A sink (``feed`` returns True); ``finish`` seals the end and returns ``stored_bytes`` and ``sha256``.
    The caller completes or aborts the upload.
    """

    def __init__(self, compression, encryptor, upload):
        self._pack = compressor(compression)
        self._seal = encryptor
        self._upload = upload
        self._digest = hashlib.sha256()
        self.stored = 0

    def _out(self, data):
        if data:
            self._digest.update(data)
            self._upload.write(data)
            self.stored += len(data)

    def feed(self, chunk):
        """Add plaintext."""
        self._out(self._seal.update(self._pack.update(chunk)))
        return True

    def finish(self):
        """Seal and send the rest; ``{"stored_bytes", "sha256"}``."""
        self._out(self._seal.update(self._pack.finalize()) + self._seal.finalize())
        return {"stored_bytes": self.stored, "sha256": self._digest.hexdigest()}


def _explain_dump(pg, child):
    return explain_client_error(child.stderr_text(), pg.where, pg.settings.db_user, pg.settings.db_name, pg.settings.label)


# --------------------------------------------------------------------------- listing

def list_backups(settings, store=None, host=None, db=None, everything=False, seed=True):
    """Backups newest first (and orphan objects) for a host and database; ``everything`` lists the whole bucket.

    With ``seed``, backups of the seed's flat layout are included in every host's
    scope when their metadata names the database (they predate hosts); a host whose
    IAM policy does not allow listing that layout simply does not see them.
    """
    store = store or open_store(settings)
    if not everything:
        host = host or settings.host
        db = db or settings.db_name
    meta = list(store.list_objects(catalog.metadata_prefix(settings.prefix, host, db if host else None)))
    objs = list(store.list_objects(catalog.object_prefix(settings.prefix, host, db if host else None)))
    records, orphans = catalog.records_from_listing(settings.prefix, meta, objs)
    if host and seed:
        records = records + _seed_records(settings, store)
        records.sort(key=lambda record: (record.timestamp, record.basename), reverse=True)
    if not seed:
        records = [record for record in records if not record.seed]
    for record in records:
        if record.seed:
            _resolve_seed_database(store, record)
    if db:
        records = [record for record in records if record.db == db]
    return records, orphans


def _seed_records(settings, store, denied_ok=True):
    """Records of the seed's flat layout (directly under metadata/ and backups/postgresql/).

    [] when these credentials may not list it (a least-privilege host), unless ``denied_ok`` is false:
    then the AccessDeniedError says which IAM statement adopting the seed's backups needs.
    """
    try:
        meta = list(store.list_objects(catalog.metadata_prefix(settings.prefix), delimiter="/"))
        if not meta:
            return []
        objs = list(store.list_objects(catalog.object_prefix(settings.prefix), delimiter="/"))
    except AccessDeniedError as exc:
        if not denied_ok:
            raise AccessDeniedError("%s; the seed's backups lie directly under %smetadata/ and %sbackups/postgresql/: "
                                    "let these credentials list and read them (s3:ListBucket with prefixes metadata/ "
                                    "and backups/postgresql/, s3:GetObject on their objects; docs/MIGRATION.md)"
                                    % (exc.message, settings.prefix, settings.prefix), step="list")
        LOG.debug("backups of the seed's layout not listed: %s", exc)
        return []
    records, _orphans = catalog.records_from_listing(settings.prefix, meta, objs)
    return [record for record in records if record.seed]


def seed_backups(settings, store):
    """The seed's backups of ``settings.db_name``, oldest first; AccessDeniedError when they may not be listed."""
    records = _seed_records(settings, store, denied_ok=False)
    for record in records:
        _resolve_seed_database(store, record)
    return sorted((record for record in records if record.db == settings.db_name), key=lambda record: record.timestamp)


def _resolve_seed_database(store, record):
    """A seed backup's database comes from its metadata; unreadable metadata leaves it unknown (and is logged)."""
    try:
        record.db = load_metadata(store, record).get("database")
    except IntegrityError as exc:
        LOG.warning("seed backup %s is skipped: %s", record.basename, exc)


def load_metadata(store, record):
    """Fetch, parse and attach a record's metadata."""
    if record.metadata is None:
        data, etag = store.get_bytes_and_etag(record.metadata_key)
        record.metadata = catalog.decode_metadata(data, record.metadata_key, seed=record.seed,
                                                  object_key_=record.object_key)
        record.metadata_etag = etag
    return record.metadata


def select(settings, store, backup="latest", before=None, host=None, db=None, context=None, allow_seed=None):
    """The record a restore or verify should use, with metadata loaded and judged (``record.verdict``, trust.py).

    The seed's backups (flat layout, unsigned) are chosen only with ``allow_seed`` (default: the
    BACKUP_ALLOW_SEED setting): without it, ``latest`` and ``before`` pass over them and naming one
    is refused. Metadata that is not this backup's, or whose signature is invalid, raises here; an
    unsigned or unverifiable one is raised by the caller (:func:`trust.require`) once the keys were
    tried, unless it allows unsigned metadata.
    """
    allow_seed = settings.allow_seed if allow_seed is None else allow_seed
    settings_db = db or settings.db_name
    if not settings_db:
        settings.require("db_name")
    records, _orphans = list_backups(settings, store, host=host, db=settings_db)
    try:
        record = _choose(records, backup, before, allow_seed)
    except NotFoundError:
        _refused_seed_meta(settings, store, backup)
        raise
    load_metadata(store, record)
    context = context or keys.KeyContext(settings)
    record.verdict = context.verdict(record)
    if record.verdict.outcome == trust.INVALID:
        trust.require(record.verdict)  # raises
    if not record.has_object:
        raise IntegrityError("backup %s has metadata but its object %s is missing: pick an older backup with --backup"
                             % (record.basename, store.url(record.object_key)), step="select")
    if record.object_size != record.metadata["size_bytes"]:
        raise IntegrityError("backup %s: object is %d bytes but its metadata says %d: the object was replaced or cut short"
                             % (record.basename, record.object_size, record.metadata["size_bytes"]), step="select")
    return record


def _refused_seed_meta(settings, store, backup):
    """When a backup asked for by name is a seed backup whose .meta was refused (so it was not listed), say why."""
    stem = (backup or "").strip().rsplit("/", 1)[-1]
    for suffix in (catalog.OBJECT_SUFFIX, catalog.METADATA_SUFFIX):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    if stem == "latest" or not catalog.is_basename(stem):
        return
    key = catalog.metadata_prefix(settings.prefix) + stem + catalog.METADATA_SUFFIX
    try:
        data = store.get_bytes(key)
    except NotFoundError:
        return
    try:
        catalog.decode_metadata(data, key, seed=True, object_key_=catalog.seed_object_key(settings.prefix, stem))
    except IntegrityError as exc:
        exc.step = "select"
        raise


def _choose(records, backup, before, allow_seed):
    """catalog.select_backup, passing over the seed's backups unless they are allowed (and saying so when it matters)."""
    if allow_seed:
        return catalog.select_backup(records, backup, before)
    ours = [record for record in records if not record.seed]
    seed = [record for record in records if record.seed]
    try:
        record = catalog.select_backup(ours, backup, before)
    except NotFoundError:
        try:
            wanted = catalog.select_backup(seed, backup, before) if seed else None
        except NotFoundError:
            wanted = None
        if wanted is None:
            raise
        if (backup or "latest").strip() == "latest":
            raise NotFoundError("no backups of this database in this format%s; %d made by the seed's scripts exist (newest "
                                "%s), unsigned: to use them, %s, or adopt them"
                                % ("" if before is None else " before the given time", len(seed), wanted.basename,
                                   trust.ALLOW_SEED_HINT))
        raise RefusedError("backup %s was made by the seed's scripts: its metadata is unsigned, so neither its checksum "
                           "nor the database it names can be trusted against someone who can write to the bucket; to "
                           "use it, %s, or adopt it" % (wanted.basename, trust.ALLOW_SEED_HINT), step="select")
    return record


# --------------------------------------------------------------------------- restore and verify

class RestoreStream:
    """download -> hash -> decrypt -> decompress -> a sink (pg_restore or psql, or a parse-only sink to verify).

    Format v1/v2 objects stream straight through: every segment is authenticated before
    its plaintext moves on. aes-256-cbc (OpenSSL enc) is not authenticated, so its object
    is first downloaded whole into an anonymous temporary file (ciphertext only: it is
    the object as stored) and its SHA-256 checked against the metadata; only then is it
    decrypted. No plaintext reaches PostgreSQL or the disk unchecked.

    Use: ``with RestoreStream(...) as stream: kind = stream.prepare(); ... stream.run(sink)``.
    ``prepare`` says what the plaintext is (``custom``: a pg_dump archive; ``sql``: a plain dump).
    """

    def __init__(self, store, record, new_decryptor, progress):
        self.store = store
        self.record = record
        self.new_decryptor = new_decryptor
        self.progress = progress
        self.kind = None
        self._copy = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._copy is not None:
            self._copy.close()
            self._copy = None

    def prepare(self):
        """Download and check a CBC object first; return the payload kind, ``custom`` or ``sql``."""
        metadata = self.record.metadata
        if metadata.get("encryption") == openssl_enc.ENCRYPTION_NAME:
            self._copy = self._checked_copy()
            self.kind = self._peek_kind()
        else:
            self.kind = PLAIN_SQL if metadata.get("format") == catalog.PLAIN_DUMP_FORMAT else CUSTOM_ARCHIVE
        return self.kind

    def run(self, sink, toc=None, guard=None):
        """Stream the object into ``sink`` (``feed(bytes)``), ``toc`` and through ``guard`` if given; counts, or raises."""
        if self.kind is None:
            self.prepare()
        if self._copy is not None:
            self._copy.seek(0)
            chunks = iter(functools.partial(self._copy.read, READ_CHUNK), b"")
        else:
            chunks = _prefetch(self.store.iter_object(self.record.object_key, READ_CHUNK))
        counts = self._stream(chunks, sink, toc, guard)
        counts["payload"] = self.kind
        return counts

    def _peek_kind(self):
        """What the checked copy holds, from its first decrypted, decompressed bytes."""
        opener, unpack = self.new_decryptor(), decompressor(self.record.metadata["compression"])
        head = b""
        self._copy.seek(0)
        for chunk in iter(functools.partial(self._copy.read, 64 * 1024), b""):
            head += unpack.update(_step("decrypt", opener.update, chunk))
            if len(head) >= 64:
                break
        if head.startswith(DUMP_MAGIC):
            return CUSTOM_ARCHIVE
        if any(head.startswith(start) for start in openssl_enc.SQL_STARTS):
            return PLAIN_SQL
        raise IntegrityError("backup %s decrypts to neither a pg_dump archive nor a plain-SQL dump" % self.record.basename,
                             step="decompress")

    def _checked_copy(self):
        """The whole object in an anonymous temporary file (mode 0600, gone when closed), its SHA-256 checked."""
        size = self.record.metadata["size_bytes"]
        directory = tempfile.gettempdir()
        _require_space(directory, size, self.record.basename)
        copy = tempfile.TemporaryFile(dir=directory)  # pylint: disable=consider-using-with  # closed by __exit__
        try:
            digest = hashlib.sha256()
            downloaded = 0
            for chunk in _prefetch(self.store.iter_object(self.record.object_key, READ_CHUNK)):
                copy.write(chunk)
                digest.update(chunk)
                downloaded += len(chunk)
                self.progress(downloaded, size)
            self._check_object(downloaded, digest)
            copy.flush()
        except BaseException:
            copy.close()
            raise
        return copy

    def _stream(self, chunks, sink, toc, guard):
        metadata = self.record.metadata
        digest = hashlib.sha256()
        opener = self.new_decryptor()
        unpack = decompressor(metadata["compression"])
        downloaded = produced = 0
        sink_open = True
        for chunk in chunks:
            downloaded += len(chunk)
            digest.update(chunk)
            plain = unpack.update(_step("decrypt", opener.update, chunk))
            if plain:
                produced += len(plain)
                if toc is not None:
                    toc.feed(plain)
                sink_open = sink_open and sink.feed(guard.feed(plain) if guard is not None else plain)
                if not sink_open:
                    break
            if self._copy is None:
                self.progress(downloaded, metadata["size_bytes"])
        if sink_open:
            self._check_object(downloaded, digest)  # before the end of the stream: a mismatch says more than a bad CRC
            plain = unpack.update(_step("decrypt", opener.finalize)) + unpack.finalize()
            produced += len(plain)
            if toc is not None:
                toc.feed(plain)
            if guard is not None:
                plain = guard.feed(plain) + guard.finish()
            sink_open = sink.feed(plain)
            if metadata.get("dump_bytes") is not None and produced != metadata["dump_bytes"]:
                raise IntegrityError("the archive is %d bytes but was %d when taken" % (produced, metadata["dump_bytes"]),
                                     step="decompress")
        return {"downloaded_bytes": downloaded, "dump_bytes": produced, "sink_open": sink_open,
                "sha256": digest.hexdigest() if sink_open else None}

    def _check_object(self, downloaded, digest):
        """Raise unless the whole object was read and its SHA-256 is the metadata's."""
        metadata = self.record.metadata
        if downloaded != metadata["size_bytes"]:
            raise IntegrityError("downloaded %d bytes of %s, metadata says %d"
                                 % (downloaded, self.record.object_key, metadata["size_bytes"]), step="download")
        if digest.hexdigest() != metadata["checksum_sha256"]:
            raise ChecksumMismatchError("SHA-256 of %s is %s but its metadata says %s: the object was modified"
                                        % (self.record.object_key, digest.hexdigest(), metadata["checksum_sha256"]),
                                        step="verify checksum")


def _require_space(directory, size, basename):
    """Refuse (ConfigError) when ``directory`` cannot hold ``size`` bytes plus a margin."""
    try:
        info = os.statvfs(directory)
    except OSError:
        return  # cannot tell: the write itself will fail clearly if it must
    free = info.f_bavail * info.f_frsize
    if free < size + SPOOL_MARGIN:
        raise ConfigError("backup %s is aes-256-cbc, which is not authenticated: its %d bytes are downloaded to %s and "
                          "their SHA-256 checked before anything is decrypted, but only %d bytes are free there: set "
                          "TMPDIR to a directory with room (only ciphertext is written, and removed at once)"
                          % (basename, size, directory, free), step="download")


def _step(name, func, *args):
    try:
        return func(*args)
    except BackupError as exc:
        if not exc.step:
            exc.step = name
        raise


class Discard:
    """A sink that takes everything (verify of a plain-SQL dump: the guard parses it)."""

    @staticmethod
    def feed(data):
        return True


def decryptor_factory(context, store, record):
    """A function that makes a fresh decryptor of this backup's object, once the keys held are known to open it.

    Format v1 (aes-256-gcm, hybrid-pq): the data key is opened from the envelope.
    aes-256-cbc (OpenSSL enc, the seed's): the passphrase is found with a ranged
    read of the object's first bytes. Either way before any download or database.
    """
    metadata = record.metadata
    encryption = metadata.get("encryption")
    if encryption in keys.GCM_ENCRYPTIONS:
        data_key = _step("decrypt", context.open, record)
        return functools.partial(crypto.StreamDecryptor, data_key)
    if encryption == openssl_enc.ENCRYPTION_NAME:
        chosen, kdf = probe_cbc(context, store, record)
        return functools.partial(openssl_enc.CbcDecryptor, [chosen], check_plaintext=openssl_enc.plausible_dump_start,
                                 kdfs=[kdf])
    raise IntegrityError("backup %s uses encryption %r, which this version cannot read"
                         % (record.basename, encryption), step="decrypt")


def probe_cbc(context, store, record):
    """``(passphrase (label, bytes), Kdf)`` that open an aes-256-cbc backup, found on its first 32 bytes (a ranged read).

    Our own aes-256-cbc backups record their derivation in the envelope; the seed's do not, so
    theirs is found by trying openssl_enc.probe_kdfs (BACKUP_SEED_KDF first) with every passphrase.
    Sets ``record.kdf`` (what matched, no secret). WrongKeyError when nothing opens it.
    """
    if record.seed:
        wanted = openssl_enc.parse_kdf(context.settings.seed_kdf) if context.settings.seed_kdf else None
        kdfs = openssl_enc.probe_kdfs(wanted)
    else:
        kdfs = [openssl_enc.Kdf("pbkdf2", openssl_enc.DIGEST,
                                _step("decrypt", openssl_enc.parse_envelope, record.metadata["envelope"]))]
    phrases = _step("decrypt", context.passphrases, record.metadata)
    probe = openssl_enc.CbcDecryptor(phrases, check_plaintext=openssl_enc.plausible_dump_start, kdfs=kdfs)
    head = store.get_range(record.object_key, 0, openssl_enc.PROBE_SIZE) if record.object_size else b""
    _step("decrypt", probe.update, head)
    if probe.passphrase_label is None:
        raise IntegrityError("backup %s's object is %d bytes, too short for an aes-256-cbc backup"
                             % (record.basename, record.object_size or 0), step="decrypt")
    record.kdf = "%s, passphrase %s" % (probe.kdf.describe(), probe.passphrase_label)
    return phrases[probe.candidate], probe.kdf


def run_verify(settings, backup="latest", before=None, host=None, db=None, progress=None, store=None,
               allow_unsigned=False, allow_seed=None):
    """Download, check the checksum, decrypt, decompress and parse the whole archive; touches no database."""
    progress = progress or _NoProgress()
    store = store or open_store(settings)
    context = keys.KeyContext(settings)
    allow_seed = settings.allow_seed if allow_seed is None else allow_seed
    record = select(settings, store, backup, before, host, db, context, allow_seed)
    new_decryptor = decryptor_factory(context, store, record)
    trust.require(record.verdict, allow_unsigned, allow_seed)
    pg = PgClient(settings)
    sink = toc = None
    started = time.time()
    with RestoreStream(store, record, new_decryptor, progress) as stream:
        try:
            if stream.prepare() == PLAIN_SQL:
                guard = PlainSqlGuard()
                counts = stream.run(Discard(), guard=guard)
                tables = guard.tables
            else:
                sink = Child([pg.tool("pg_restore"), "--file=/dev/null"], pg.environment(), stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, name="pg_restore")
                toc = TocReader(pg)
                counts = stream.run(sink, toc)
                status = sink.wait()
                if status != 0 or not counts["sink_open"]:
                    raise IntegrityError("the archive does not parse (%s: %s)"
                                         % (sink.describe_exit(status), sink.stderr_text()), step="pg_restore")
                tables = toc.table_count(step="verify")
        except BaseException:
            for child in (sink, toc):
                if child is not None:
                    child.kill()
            raise
    expected = record.metadata.get("table_count")
    if expected is not None and tables != expected:
        raise IntegrityError("the archive lists %d tables, the metadata %d" % (tables, expected), step="verify")
    return {"name": record.basename, "object_key": record.object_key, "size_bytes": counts["downloaded_bytes"],
            "dump_bytes": counts["dump_bytes"], "checksum_sha256": counts["sha256"], "checksum_ok": True,
            "decryption_ok": True, "table_count": tables, "key_id": record.metadata.get("key_id"),
            "encryption": record.metadata.get("encryption"), "signature": record.verdict.describe(),
            "trusted": record.verdict.trusted, "layout": record.layout or "host", "kdf": record.kdf,
            "timestamp": record.metadata["timestamp"], "payload": counts["payload"],
            "duration_seconds": round(time.time() - started, 3)}


def run_restore(settings, backup="latest", before=None, target_db=None, force=False, host=None, db=None,
                no_owner=False, progress=None, store=None, allow_unsigned=False, allow_seed=None, as_admin=False,
                restore_role=None):
    """Restore a backup into a new database (or, with ``force``, in place of an existing one).

    The data goes into a staging database first; only when pg_restore succeeded and
    the checksum and table count match is it renamed to the target. A replaced
    database is kept, renamed, never dropped. On any failure the staging database
    is dropped and the target is as it was.

    The archive's SQL runs as the restore role (``restore_role``, default BACKUP_RESTORE_ROLE,
    quankey_restore): a plain role, created when missing, through a login made for this restore
    only, so ``COPY ... TO PROGRAM``, untrusted languages and the like are refused. It runs as
    DB_USER only with ``as_admin`` (see :func:`_sql_runner`). Ownership is handed back to the
    archive's owner where that is safe (:meth:`_SqlRunner.settle_ownership`).
    """
    progress = progress or _NoProgress()
    store = store or open_store(settings)
    context = keys.KeyContext(settings)
    allow_seed = settings.allow_seed if allow_seed is None else allow_seed
    record = select(settings, store, backup, before, host, db, context, allow_seed)
    new_decryptor = decryptor_factory(context, store, record)
    trust.require(record.verdict, allow_unsigned, allow_seed)
    target = check_target_name(target_db or default_target(record))
    pg = PgClient(settings)
    server_version = pg.server_version_num()
    pg.check_client_version(server_version, "pg_restore")
    exists = pg.database_exists(target)
    if exists and not force:
        raise RefusedError("database %r already exists on %s: restore under another name with --target-db, or pass "
                           "--force to replace it (the old one is kept, renamed)" % (target, pg.where))
    if exists and pg.active_connections(target):
        raise RefusedError("database %r has %d active connections: stop the application (e.g. pm2 stop quankey) "
                           "before replacing it" % (target, pg.active_connections(target)))
    _warn_of_leftovers(pg, settings)
    runner = _sql_runner(settings, pg, record, as_admin, restore_role)
    staging = side_name(target, STAGING_TAG)
    LOG.info("restore %s (%s) into %s on %s via staging database %s; its SQL runs as %s", record.basename,
             store.url(record.object_key), target, pg.where, staging, runner.name)
    started = time.time()
    runner.create(record.metadata["size_bytes"])
    try:
        created = pg.create_database(staging, record.metadata.get("database_settings"), owner=runner.owner)
    except BaseException:
        runner.drop()
        raise
    try:
        counts, tables, owners = _restore_into(pg, store, record, new_decryptor, staging, no_owner, progress, runner)
        owner = runner.settle_ownership(staging, owners, no_owner)
        replaced = None
        if exists:
            if pg.active_connections(target):
                raise RefusedError("database %r gained active connections during the restore: stop the application "
                                   "and run again" % target, step="swap")
            replaced = side_name(target, REPLACED_TAG)
            pg.rename_database(target, replaced)
        pg.rename_database(staging, target)
    except BaseException as exc:
        _drop_quietly(pg, staging)
        runner.drop()
        if isinstance(exc, BackupError):
            exc.message += " (nothing was restored: the staging database was dropped%s)" % (
                "; %r is untouched" % target if exists else "")
        raise
    LOG.info("restored %s into %s: %d tables in %.1fs", record.basename, target, tables, time.time() - started)
    return {"name": record.basename, "object_key": record.object_key, "target_db": target, "replaced_db": replaced,
            "table_count": tables, "expected_table_count": record.metadata.get("table_count"),
            "size_bytes": counts["downloaded_bytes"], "dump_bytes": counts["dump_bytes"],
            "checksum_sha256": counts["sha256"], "checksum_ok": True, "decryption_ok": True, "table_count_ok": True,
            "database_settings": created, "timestamp": record.metadata["timestamp"],
            "duration_seconds": round(time.time() - started, 3), "source_host": record.host, "source_db": record.db,
            "encryption": record.metadata.get("encryption"), "signature": record.verdict.describe(),
            "trusted": record.verdict.trusted, "layout": record.layout or "host", "kdf": record.kdf,
            "sql_ran_as": runner.name, "owner": owner, "archive_owners": owners, "source_trusted": runner.trusted}


def prepare_restore_role(settings, check=False):
    """Make sure BACKUP_RESTORE_ROLE exists (unless ``check``) and say whether it may run restored SQL."""
    pg = PgClient(settings)
    role = settings.restore_role
    if role == pg.user:
        raise ConfigError("%s is %s, the login that restores (%s): the restore role must be a role of its own, e.g. "
                          "quankey_restore" % (settings.label("restore_role"), role, settings.label("db_user")))
    exists = pg.role_exists(role)
    created = False
    if not exists and not check:
        created = pg.create_restore_role(role)
        exists = True
    risks = _short_risks(pg.role_risks(role)) if exists else []
    if risks:
        message = ("restore role %s (%s) may not run a backup's SQL: %s; make it a plain role again (ALTER ROLE %s "
                   "NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS, and revoke those memberships) or name another"
                   % (role, settings.label("restore_role"), "; ".join(risks), role))
    elif not exists:
        message = "restore role %s does not exist on %s: it is created on first use, or by restore-role" % (role, pg.where)
    else:
        message = "restore role %s on %s is a plain role%s" % (role, pg.where, " (created)" if created else "")
    if risks:
        LOG.error(message)
    return {"role": role, "server": pg.where, "exists": exists, "created": created, "changed": created,
            "risks": risks, "message": message}


def _warn_of_leftovers(pg, settings):
    """Say which staging databases of interrupted restores are still on this server (they take space)."""
    try:
        staging, _logins = leftovers.find_in_postgres(pg, settings, catalog.utcnow())
    except BackupError as exc:
        LOG.debug("leftovers not checked: %s", exc)
        return
    for item in staging:
        if not item["sessions"]:
            LOG.warning("%s (an interrupted restore, or one still downloading): `quankey-backup prune` drops it once "
                        "%d h old, or DROP DATABASE \"%s\"",
                        leftovers.describe({"staging_databases": [item], "uploads": [], "orphans": [],
                                            "restore_logins": []})[0], leftovers.STALE_HOURS, item["name"])


def untrusted_source(settings, record):
    """Why a backup's SQL should not be trusted with DB_USER's privileges (one phrase), or None.

    Another host's backup (its signing key may be held by a host that was broken into), the
    seed's (unsigned), or one whose metadata was not verified here.
    """
    if record.seed:
        return "was made by the seed's scripts (unsigned)"
    if record.host != settings.host:
        return "comes from host %s, not this host (%s)" % (record.host, settings.host)
    if record.verdict is None or not record.verdict.trusted:
        return "has metadata that was not verified here (%s)" % (record.verdict.describe() if record.verdict else "unchecked")
    return None


def _sql_runner(settings, pg, record, as_admin, restore_role):
    """Who runs the archive's SQL (a :class:`_SqlRunner`), after every check that can refuse it.

    The restore role (``restore_role``, default BACKUP_RESTORE_ROLE, quankey_restore), created when
    missing and refused when it could leave the database (superuser, server files, ...); DB_USER
    only with ``as_admin``, the explicit choice to trust the backup as much as that login.
    """
    doubt = untrusted_source(settings, record)
    if as_admin:
        if doubt:
            LOG.warning("backup %s %s, and its SQL runs as %s (--as-admin): it can do whatever that login can",
                        record.basename, doubt, pg.user)
        else:
            LOG.info("the SQL of backup %s runs as %s (--as-admin)", record.basename, pg.user)
        return _SqlRunner(pg, None, trusted=True)
    role = restore_role or settings.restore_role
    if role == pg.user:
        raise ConfigError("%s is %s, the login that restores (%s): the restore role must be a role of its own, e.g. "
                          "%s; to run the backup's SQL as %s, pass --as-admin (restore_as_admin: true)"
                          % (settings.label("restore_role"), role, settings.label("db_user"),
                             config.DEFAULT_RESTORE_ROLE, role))
    if pg.create_restore_role(role):
        LOG.info("created the restore role %s (a plain role that cannot log in; each restore logs in as a temporary "
                 "member of it)", role)
    risks = _short_risks(pg.role_risks(role))
    if risks:
        raise RefusedError("restore role %r (%s) may not run a backup's SQL: %s; make it a plain role again (ALTER ROLE "
                           "%s NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS, and revoke those memberships) or name "
                           "another" % (role, settings.label("restore_role"), "; ".join(risks), role), step="restore role")
    return _SqlRunner(pg, role, trusted=doubt is None)


def _short_risks(risks):
    """A role's risks for a message: a superuser's alone, not the memberships that follow from it."""
    return ["it is a superuser"] if "it is a superuser" in risks else risks


class _SqlRunner:
    """The login that runs a restored archive's SQL: the admin (``role`` None), or a temporary member of the restore role.

    For each restore a login role of its own (``<restore role>_<hex>``) is made, a member of the
    restore role with a random password valid RESTORE_LOGIN_MINUTES (only its SCRAM verifier goes
    to the server), owner of the staging database. Afterwards what it created is handed over
    (:meth:`settle_ownership`) and it is dropped: nothing outside this restore changes owner, and no
    login is left behind.
    """

    def __init__(self, admin, role, trusted):
        self.admin = admin
        self.role = role
        self.trusted = trusted
        self.login_role = None
        self._password = None
        if role is not None:
            self.login_role = "%s_%s" % (role[:PG_NAME_LIMIT - 9], secrets.token_hex(4))

    @property
    def name(self):
        """The role the SQL runs as (the restore role, through its temporary login)."""
        return self.role or self.admin.user

    @property
    def owner(self):
        """Who owns the staging database while the archive is restored (None: the admin)."""
        return self.login_role

    def create(self, object_size):
        """Make the temporary login role, before the staging database it will own.

        pg_restore logs in once it has read the archive's start, which for an aes-256-cbc object comes
        after the whole download: the password stays valid RESTORE_LOGIN_MINUTES plus a minute per
        RESTORE_LOGIN_BYTES_PER_MINUTE of the object (the role is dropped as soon as the restore ends).
        """
        if self.role is None:
            return
        self._password = secrets.token_urlsafe(32)
        minutes = RESTORE_LOGIN_MINUTES + object_size // RESTORE_LOGIN_BYTES_PER_MINUTE
        self.admin.create_login_role(self.login_role, self._password,
                                     catalog.utcnow() + datetime.timedelta(minutes=minutes), self.role)

    def login(self, database):
        """A PgClient that logs in as the runner, proven able to connect to ``database``."""
        if self.role is None:
            return self.admin
        client = self.admin.as_login(self.login_role, self._password)
        try:
            client.scalar("SELECT 1", database, step="restore role login")
        except PostgresError as exc:
            raise PostgresError("the restore role's login %s cannot log in to %s with a password: %s; allow password "
                                "logins of members of %s in pg_hba.conf (e.g. host all +%s 127.0.0.1/32 scram-sha-256), "
                                "or connect over TCP (DB_HOST)"
                                % (self.login_role, self.admin.where, exc.message, self.role, self.role),
                                step="restore role login")
        return client

    def drop(self, database=None):
        """Drop the temporary login role (after DROP OWNED in ``database`` when it still exists); best effort."""
        if self.login_role is None:
            return
        try:
            self.admin.drop_role(self.login_role, database)
        except BackupError as exc:
            LOG.error("could not drop the restore login role %s (its password has expired; drop it by hand: "
                      "DROP OWNED BY %s; DROP ROLE %s): %s", self.login_role, self.login_role, self.login_role, exc)

    def settle_ownership(self, staging, owners, no_owner):
        """Hand what this restore created to its owner-to-be; returns that owner.

        The archive's main owner (most TOC entries) gets everything when it exists here and the backup
        is trusted, or when it is a plain role (a SECURITY DEFINER function of an untrusted archive
        must not end up owned by a superuser). With ``no_owner``, a trusted backup's objects go to the
        admin login instead. Otherwise the restore role keeps them (and that is said).
        """
        if self.role is None:
            return None if not no_owner else self.admin.user
        main = max(sorted(owners), key=lambda name: owners[name]) if owners else None
        wanted = self.role
        if no_owner:
            wanted = self.admin.user if self.trusted else self.role
        elif main and self.admin.role_exists(main) and (self.trusted or not self.admin.role_risks(main)):
            wanted = main
        elif main:
            LOG.warning("the restored objects stay owned by the restore role %s: the archive's owner %s %s", self.role,
                        main, "does not exist here" if not self.admin.role_exists(main) else
                        "may not own what an untrusted backup created (a function of it would run with its rights)")
        others = sorted(name for name in owners if name != main)
        if others and not no_owner and wanted == main:
            LOG.warning("the archive's objects had several owners (%s): all of them are owned by %s now",
                        ", ".join([main] + others), wanted)
        self.admin.reassign_owned(staging, self.login_role, wanted)
        self.drop(staging)
        self.login_role = None
        return wanted


def _restore_into(pg, store, record, new_decryptor, staging, no_owner, progress, runner):
    """Restore into ``staging`` as the runner: pg_restore for an archive, psql (restricted) for a plain-SQL dump.

    Returns ``(counts, tables, owners in the archive)``.
    """
    sink = toc = None
    with RestoreStream(store, record, new_decryptor, progress) as stream:
        try:
            kind = stream.prepare()
            client = runner.login(staging)
            guard = None
            if kind == PLAIN_SQL:
                guard = PlainSqlGuard(secrets.token_hex(16), drop_ownership=runner.role is not None)
                argv = client.script_argv(staging)
            else:
                toc = TocReader(pg)
                argv = client.restore_argv(staging, no_owner=no_owner)
                if runner.role is not None and not no_owner:
                    argv.insert(1, "--no-owner")  # the restore role creates everything; ownership is settled after
            name = "psql" if kind == PLAIN_SQL else "pg_restore"
            sink = Child(argv, client.environment(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, name=name)
            counts = stream.run(sink, toc, guard)
            status = sink.wait()
            if status != 0 or not counts["sink_open"]:
                raise PostgresError("%s: %s" % (sink.describe_exit(status), _restore_failure(sink.stderr_text())),
                                    step=name)
            owners = guard.owners if guard is not None else toc_owners(toc.listing(step="pg_restore"))
        except BaseException:
            for child in (sink, toc):
                if child is not None:
                    child.kill()
            raise
    tables = pg.table_count(staging)
    expected = record.metadata.get("table_count")
    if guard is not None and expected is None:
        expected = guard.tables
    if expected is not None and tables != expected:
        raise IntegrityError("restored database has %d tables, the backup had %d" % (tables, expected), step="verify")
    return counts, tables, owners


def _restore_failure(stderr):
    """Why pg_restore (or psql, for a plain-SQL dump) failed, with the fix for the common causes."""
    detail = failure_detail(stderr)
    if "\\restrict" in detail and "invalid command" in detail:
        return detail + ("; this psql cannot restrict backslash commands (that came with PostgreSQL 15.14, 16.10, 17.6): "
                         "a plain-SQL backup is restored only by a psql that can, so that the dump cannot run commands "
                         "here: upgrade the PostgreSQL client or point PG_BIN_DIR at a newer one")
    missing = re.search(r'role "([^"]+)" does not exist', detail)
    if missing:
        detail += ("; the archive's objects are owned by or granted to role %s, which this server lacks: create it "
                   "(CREATE ROLE %s), or restore with --no-owner (no_owner: true) to skip ownership and privileges"
                   % (missing.group(1), missing.group(1)))
    elif re.search(r"permission denied|must be (superuser|owner|a member)|must have privileges|privileges of the", detail):
        detail += "; the backup's SQL needs a privilege that the role it runs as does not have"
    return detail


def _drop_quietly(pg, name):
    try:
        pg.drop_database(name)
    except BackupError:
        LOG.error("could not drop the staging database %s: drop it by hand (DROP DATABASE %s)", name, name)


# --------------------------------------------------------------------------- retention

def postgres_or_none(settings):
    """A client of the database server (for leftovers), or None when none can be made here."""
    try:
        return PgClient(settings)
    except ConfigError:
        return None


def run_prune(settings, dry_run=False, store=None, now=None):
    """Delete backups past retention (never the newest BACKUP_MIN_KEEP good ones), and what interrupted runs left
    behind once stale and unused (leftovers.py): orphan objects, open uploads, staging databases, restore logins."""
    store = store or open_store(settings)
    settings.require("db_name")
    now = now or catalog.utcnow()
    records, orphans = list_backups(settings, store, seed=False)  # the seed's layout is not ours to prune

    def is_good(record):
        if not record.has_object:
            return False
        try:
            return load_metadata(store, record)["size_bytes"] == record.object_size
        except IntegrityError:
            return False

    keep, delete = catalog.retention_plan(records, now, settings.retention_days, settings.min_keep, is_good)
    pg = postgres_or_none(settings)
    found = leftovers.find(settings, store, orphans, now, pg=pg)
    if not dry_run:
        for record in delete:
            store.delete(record.metadata_key)  # uncommit first: a backup without metadata does not exist
            if record.has_object:
                store.delete(record.object_key)
            LOG.info("pruned %s (%s)", record.basename, record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    swept = leftovers.sweep(store, pg, leftovers.stale(found), dry_run)
    return {"kept": [record.basename for record in keep], "deleted": [record.basename for record in delete],
            "orphans_deleted": swept["orphans"], "uploads_aborted": swept["uploads"],
            "staging_databases_dropped": swept["staging_databases"], "restore_logins_dropped": swept["restore_logins"],
            "leftovers": found, "dry_run": dry_run,
            "retention_days": settings.retention_days, "min_keep": settings.min_keep}
