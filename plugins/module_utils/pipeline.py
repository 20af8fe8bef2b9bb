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
import secrets
import subprocess
import threading
import time

from . import catalog
from . import crypto
from . import keys
from . import openssl_enc
from .compression import check_compression, compressor, decompressor
from .errors import AccessDeniedError, BackupError, IntegrityError, PostgresError, RefusedError, ChecksumMismatchError
from .postgres import PgClient, count_toc_tables
from .storage import S3Store, choose_part_size, READ_CHUNK

LOG = logging.getLogger("quankey_backup")
CHUNK = 1024 * 1024
DUMP_MAGIC = b"PGDMP"
F_SETPIPE_SZ = 1031
STALE_UPLOAD_HOURS = 24
_PG_NAME_LIMIT = 63


class _NoProgress:
    def __call__(self, done, total=None):
        return None


class _Child:
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


class _TocReader:
    """Feeds the start of an archive to ``pg_restore --list`` (which stops after the table of contents)."""

    def __init__(self, pg):
        self.child = _Child(pg.list_argv(), pg.environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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

    def table_count(self, step):
        """The number of TABLE entries in the archive's table of contents."""
        status = self.child.wait()
        self._reader.join()
        if status != 0:
            raise IntegrityError("the archive's table of contents cannot be read (%s: %s)"
                                 % (self.child.describe_exit(status), self.child.stderr_text() or "no error text"),
                                 step=step)
        return count_toc_tables(b"".join(self._out).decode("utf-8", "replace"))

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


def open_store(settings):
    """The S3 store of these settings."""
    settings.require("bucket")
    return S3Store.from_settings(settings)


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
    plan = BackupPlan(settings, pg, store, server_version, dump_version, now or catalog.utcnow(),
                      pg.database_size(settings.db_name), pg.database_settings(settings.db_name), context)
    if store.exists(plan.metadata_key) or store.exists(plan.object_key):
        raise RefusedError("a backup named %s already exists in %s: wait a second and run again"
                           % (plan.basename, store.url()))
    return plan


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

    encryption, envelope, kid, recipient_ids, encryptor = _new_encryptor(settings, context)
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
    try:
        metadata = context.sign(metadata)
        store.put_bytes(meta_key, catalog.encode_metadata(metadata))
    except BaseException:
        _delete_quietly(store, obj_key)
        raise
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


def _new_encryptor(settings, context):
    """``(encryption name, envelope, key id, recipient ids or None, streaming encryptor)`` of a new backup."""
    if settings.encryption == openssl_enc.ENCRYPTION_NAME:
        kid, passphrase = context.cbc_passphrase()
        return (openssl_enc.ENCRYPTION_NAME, openssl_enc.passphrase_envelope(kid), kid, None,
                openssl_enc.CbcEncryptor(passphrase))
    data_key = crypto.new_data_key()
    encryption, envelope, kid, recipient_ids = context.seal(data_key)
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
            dump = _Child(self.pg.dump_argv(self.settings.db_name), self.pg.environment(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, name="pg_dump")
            toc = _TocReader(self.pg)
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
        pack = compressor(self.settings.compression)
        seal = self.encryptor
        digest = hashlib.sha256()
        dump_bytes = stored = 0
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
            out = seal.update(pack.update(chunk))
            if out:
                digest.update(out)
                upload.write(out)
                stored += len(out)
            self.progress(dump_bytes)
        out = seal.update(pack.finalize()) + seal.finalize()
        digest.update(out)
        upload.write(out)
        stored += len(out)
        if dump_bytes and head != DUMP_MAGIC:
            raise PostgresError("pg_dump output does not start with the custom-format magic PGDMP", step="pg_dump")
        return {"dump_bytes": dump_bytes, "stored_bytes": stored, "sha256": digest.hexdigest()}


def _explain_dump(pg, child):
    from .postgres import explain_client_error
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


def _seed_records(settings, store):
    """Records of the seed's flat layout (directly under metadata/ and backups/postgresql/), [] when not allowed to list."""
    try:
        meta = list(store.list_objects(catalog.metadata_prefix(settings.prefix), delimiter="/"))
        if not meta:
            return []
        objs = list(store.list_objects(catalog.object_prefix(settings.prefix), delimiter="/"))
    except AccessDeniedError as exc:
        LOG.debug("backups of the seed's layout not listed: %s", exc)
        return []
    records, _orphans = catalog.records_from_listing(settings.prefix, meta, objs)
    return [record for record in records if record.seed]


def _resolve_seed_database(store, record):
    """A seed backup's database comes from its metadata; unreadable metadata leaves it unknown (and is logged)."""
    try:
        record.db = load_metadata(store, record).get("database")
    except IntegrityError as exc:
        LOG.warning("seed backup %s is skipped: %s", record.basename, exc)


def load_metadata(store, record):
    """Fetch, parse and attach a record's metadata."""
    if record.metadata is None:
        record.metadata = catalog.decode_metadata(store.get_bytes(record.metadata_key), record.metadata_key,
                                                  seed=record.seed, object_key_=record.object_key)
    return record.metadata


def select(settings, store, backup="latest", before=None, host=None, db=None, context=None, allow_unsigned=False):
    """The record a restore or verify should use, with metadata loaded and its signature checked (``record.signature``).

    An invalid signature raises here; an unsigned or unverifiable one (``record.signature_problem``) is
    raised by :func:`_decryptor_factory` once the keys were tried, unless ``allow_unsigned``.
    """
    settings_db = db or settings.db_name
    if not settings_db:
        settings.require("db_name")
    records, _orphans = list_backups(settings, store, host=host, db=settings_db)
    record = catalog.select_backup(records, backup, before)
    load_metadata(store, record)
    context = context or keys.KeyContext(settings)
    record.signature, record.signature_problem = _step("verify metadata", context.check_signature, record.metadata,
                                                       record.basename, record.object_key)
    if not record.has_object:
        raise IntegrityError("backup %s has metadata but its object %s is missing: pick an older backup with --backup"
                             % (record.basename, store.url(record.object_key)), step="select")
    if record.object_size != record.metadata["size_bytes"]:
        raise IntegrityError("backup %s: object is %d bytes but its metadata says %d: the object was replaced or cut short"
                             % (record.basename, record.object_size, record.metadata["size_bytes"]), step="select")
    return record


# --------------------------------------------------------------------------- restore and verify

class _RestoreStream:
    """download -> hash -> decrypt -> decompress -> a sink (pg_restore, or pg_restore -f /dev/null to verify)."""

    def __init__(self, store, record, new_decryptor, progress):
        self.store = store
        self.record = record
        self.new_decryptor = new_decryptor
        self.progress = progress

    def run(self, sink, toc=None):
        """Stream the object into ``sink`` (a _Child reading stdin) and ``toc`` if given; returns counts, or raises."""
        metadata = self.record.metadata
        digest = hashlib.sha256()
        opener = self.new_decryptor()
        unpack = decompressor(metadata["compression"])
        downloaded = produced = 0
        sink_open = True
        chunks = _prefetch(self.store.iter_object(self.record.object_key, READ_CHUNK))
        try:
            for chunk in chunks:
                downloaded += len(chunk)
                digest.update(chunk)
                plain = unpack.update(_step("decrypt", opener.update, chunk))
                if plain:
                    produced += len(plain)
                    if toc is not None:
                        toc.feed(plain)
                    sink_open = sink_open and _write(sink, plain)
                    if not sink_open:
                        break
                self.progress(downloaded, metadata["size_bytes"])
        except IntegrityError:
            if metadata.get("encryption") == openssl_enc.ENCRYPTION_NAME:
                # aes-256-cbc is not authenticated: a modified object first shows as garbled blocks or corrupt
                # gzip; hash the rest so that the signed checksum says what really happened
                for chunk in chunks:
                    downloaded += len(chunk)
                    digest.update(chunk)
                if downloaded == metadata["size_bytes"]:
                    self._check_object(downloaded, digest)
            raise
        if sink_open:
            self._check_object(downloaded, digest)  # before the end of the stream: a mismatch says more than a bad CRC
            plain = unpack.update(_step("decrypt", opener.finalize)) + unpack.finalize()
            produced += len(plain)
            if toc is not None:
                toc.feed(plain)
            sink_open = _write(sink, plain)
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


def _step(name, func, *args):
    try:
        return func(*args)
    except BackupError as exc:
        if not exc.step:
            exc.step = name
        raise


def _write(child, data):
    """Write to a child's stdin; False once it has gone away."""
    if not data:
        return True
    try:
        child.proc.stdin.write(data)
        return True
    except (BrokenPipeError, ValueError):
        return False


def _decryptor_factory(context, store, record):
    """A function that makes a fresh decryptor of this backup's object, once the keys held are known to open it.

    Format v1 (aes-256-gcm, hybrid-pq): the data key is opened from the envelope.
    aes-256-cbc (OpenSSL enc, the seed's): the passphrase is found with a ranged
    read of the object's first bytes. Either way before any download or database.
    """
    metadata = record.metadata
    encryption = metadata.get("encryption")
    if encryption in keys.GCM_ENCRYPTIONS:
        data_key = _step("decrypt", context.open, metadata, record.basename)
        return functools.partial(crypto.StreamDecryptor, data_key)
    if encryption == openssl_enc.ENCRYPTION_NAME:
        iterations = _step("decrypt", openssl_enc.parse_envelope, metadata["envelope"])
        phrases = _step("decrypt", context.passphrases, metadata)
        probe = openssl_enc.CbcDecryptor(phrases, iterations, openssl_enc.plausible_dump_start)
        head = store.get_range(record.object_key, 0, openssl_enc.PROBE_SIZE) if record.object_size else b""
        _step("decrypt", probe.update, head)
        if probe.passphrase_label is None:
            raise IntegrityError("backup %s's object is %d bytes, too short for an aes-256-cbc backup"
                                 % (record.basename, record.object_size or 0), step="decrypt")
        chosen = [item for item in phrases if item[0] == probe.passphrase_label]
        return functools.partial(openssl_enc.CbcDecryptor, chosen, iterations, openssl_enc.plausible_dump_start)
    raise IntegrityError("backup %s uses encryption %r, which this version cannot read"
                         % (record.basename, encryption), step="decrypt")


def run_verify(settings, backup="latest", before=None, host=None, db=None, progress=None, store=None,
               allow_unsigned=False):
    """Download, check the checksum, decrypt, decompress and parse the whole archive; touches no database."""
    progress = progress or _NoProgress()
    store = store or open_store(settings)
    context = keys.KeyContext(settings)
    record = select(settings, store, backup, before, host, db, context, allow_unsigned)
    new_decryptor = _decryptor_factory(context, store, record)
    keys.require_signature(record.signature_problem, allow_unsigned)
    pg = PgClient(settings)
    sink = toc = None
    started = time.time()
    try:
        sink = _Child([pg.tool("pg_restore"), "--file=/dev/null"], pg.environment(), stdin=subprocess.PIPE,
                      stdout=subprocess.DEVNULL, name="pg_restore")
        toc = _TocReader(pg)
        counts = _RestoreStream(store, record, new_decryptor, progress).run(sink, toc)
        status = sink.wait()
        if status != 0 or not counts["sink_open"]:
            raise IntegrityError("the archive does not parse (%s: %s)" % (sink.describe_exit(status), sink.stderr_text()),
                                 step="pg_restore")
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
            "encryption": record.metadata.get("encryption"), "signature": record.signature,
            "layout": record.layout or "host", "timestamp": record.metadata["timestamp"],
            "duration_seconds": round(time.time() - started, 3)}


def default_target(record):
    """``<db>_restored_<YYYYmmdd_HHMMSS>`` of the backup, within PostgreSQL's 63-byte name limit."""
    suffix = "_restored_" + catalog.format_timestamp(record.timestamp)
    return record.db[:_PG_NAME_LIMIT - len(suffix)] + suffix


def _side_name(target, tag, unique):
    suffix = "__%s_%s" % (tag, unique)
    return target[:_PG_NAME_LIMIT - len(suffix)] + suffix


def run_restore(settings, backup="latest", before=None, target_db=None, force=False, host=None, db=None,
                no_owner=False, progress=None, store=None, allow_unsigned=False):
    """Restore a backup into a new database (or, with ``force``, in place of an existing one).

    The data goes into a staging database first; only when pg_restore succeeded and
    the checksum and table count match is it renamed to the target. A replaced
    database is kept, renamed, never dropped. On any failure the staging database
    is dropped and the target is as it was.
    """
    progress = progress or _NoProgress()
    store = store or open_store(settings)
    context = keys.KeyContext(settings)
    record = select(settings, store, backup, before, host, db, context, allow_unsigned)
    new_decryptor = _decryptor_factory(context, store, record)
    keys.require_signature(record.signature_problem, allow_unsigned)
    target = target_db or default_target(record)
    if len(target.encode("utf-8")) > _PG_NAME_LIMIT:
        raise RefusedError("target database name %r is longer than PostgreSQL's 63 bytes: choose a shorter --target-db" % target)
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
    staging = _side_name(target, "restoring", secrets.token_hex(4))
    LOG.info("restore %s (%s) into %s on %s via staging database %s", record.basename, store.url(record.object_key),
             target, pg.where, staging)
    started = time.time()
    created = pg.create_database(staging, record.metadata.get("database_settings"))
    try:
        counts, tables = _restore_into(pg, store, record, new_decryptor, staging, no_owner, progress)
        replaced = None
        if exists:
            if pg.active_connections(target):
                raise RefusedError("database %r gained active connections during the restore: stop the application "
                                   "and run again" % target, step="swap")
            replaced = _side_name(target, "replaced", catalog.format_timestamp(catalog.utcnow()))
            pg.rename_database(target, replaced)
        pg.rename_database(staging, target)
    except BaseException as exc:
        _drop_quietly(pg, staging)
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
            "encryption": record.metadata.get("encryption"), "signature": record.signature,
            "layout": record.layout or "host"}


def _restore_into(pg, store, record, new_decryptor, staging, no_owner, progress):
    sink = None
    try:
        sink = _Child(pg.restore_argv(staging, no_owner=no_owner), pg.environment(), stdin=subprocess.PIPE,
                      stdout=subprocess.DEVNULL, name="pg_restore")
        counts = _RestoreStream(store, record, new_decryptor, progress).run(sink)
        status = sink.wait()
        if status != 0 or not counts["sink_open"]:
            raise PostgresError("%s: %s" % (sink.describe_exit(status), _last_line(sink.stderr_text())), step="pg_restore")
    except BaseException:
        if sink is not None:
            sink.kill()
        raise
    tables = pg.table_count(staging)
    expected = record.metadata.get("table_count")
    if expected is not None and tables != expected:
        raise IntegrityError("restored database has %d tables, the backup had %d" % (tables, expected), step="verify")
    return counts, tables


def _last_line(text):
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error text"


def _drop_quietly(pg, name):
    try:
        pg.drop_database(name)
    except BackupError:
        LOG.error("could not drop the staging database %s: drop it by hand (DROP DATABASE %s)", name, name)


# --------------------------------------------------------------------------- retention

def run_prune(settings, dry_run=False, store=None, now=None):
    """Delete backups past retention (never the newest BACKUP_MIN_KEEP good ones), orphans and stale uploads."""
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
    stale = now - datetime.timedelta(hours=STALE_UPLOAD_HOURS)
    old_orphans = [item for item in orphans if item["last_modified"] < stale]
    uploads = [item for item in store.list_multipart_uploads(catalog.object_prefix(settings.prefix, settings.host,
                                                                                   settings.db_name))
               if item["initiated"] < stale]
    if not dry_run:
        for record in delete:
            store.delete(record.metadata_key)  # uncommit first: a backup without metadata does not exist
            if record.has_object:
                store.delete(record.object_key)
            LOG.info("pruned %s (%s)", record.basename, record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for item in old_orphans:
            store.delete(item["key"])
            LOG.info("deleted orphan object %s (no metadata: an uncommitted backup)", item["key"])
        for item in uploads:
            store.abort_multipart(item["key"], item["upload_id"])
            LOG.info("aborted stale multipart upload of %s", item["key"])
    return {"kept": [record.basename for record in keep], "deleted": [record.basename for record in delete],
            "orphans_deleted": [item["key"] for item in old_orphans],
            "uploads_aborted": [item["key"] for item in uploads], "dry_run": dry_run,
            "retention_days": settings.retention_days, "min_keep": settings.min_keep}
