# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring and verifying: select -> download -> SHA-256 -> decrypt -> decompress -> pg_restore (or a restricted
psql for a plain-SQL dump) into a staging database under the restore role -> verify -> rename into place.

Every stage's exit status and byte count is checked; on any failure the staging database is dropped, the
target is as it was, and the error names the step that failed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import functools
import hashlib
import logging
import os
import re
import secrets
import subprocess
import tempfile

from .. import config
from .. import keys
from ..adapters.postgres import failure_detail, quote_ident, toc_owners
from ..adapters.process import Child, TocReader, prefetch
from ..adapters.s3 import READ_CHUNK
from ..catalog import documents, layout, trust
from ..catalog.dbnames import PG_NAME_LIMIT, REPLACED_TAG, STAGING_TAG, check_target_name, default_target, side_name
from ..errors import (BackupError, ChecksumMismatchError, ConfigError, IntegrityError, PostgresError, RefusedError,
                      in_step)
from ..formats import magic, modes
from ..formats.compression import decompressor
from ..formats.plainsql import PlainSqlGuard
from ..progress import Progress, Stages
from . import leftovers, ranged, wiring
from .globalset import GlobalsRestore, globals_to_restore, load_globals
from .inventory import select, select_with_replica

CUSTOM_ARCHIVE, PLAIN_SQL = "custom", "sql"  # what a backup's plaintext is


RESTORE_LOGIN_MINUTES = 15  # how long a restore role's one-restore password lets it log in (plus download time)


RESTORE_LOGIN_BYTES_PER_MINUTE = 300 * 1024 * 1024


SPOOL_MARGIN = 64 * 1024 * 1024  # free space kept beside a downloaded aes-256-cbc object
LOG = logging.getLogger("quankey_backup")


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
        if not modes.of(metadata, self.record.basename).authenticated:
            self._copy = self._checked_copy()
            self.kind = self._peek_kind()
        else:
            self.kind = PLAIN_SQL if metadata.get("format") == documents.PLAIN_DUMP_FORMAT else CUSTOM_ARCHIVE
        return self.kind

    def run(self, sink, toc=None, guard=None):
        """Stream the object into ``sink`` (``feed(bytes)``), ``toc`` and through ``guard`` if given; counts, or raises."""
        if self.kind is None:
            self.prepare()
        digest, opener = hashlib.sha256(), self.new_decryptor()
        if self._copy is not None:
            self._copy.seek(0)
            opened = _opened(iter(functools.partial(self._copy.read, READ_CHUNK), b""), digest, opener)
        else:
            # the download's thread also hashes and decrypts (hashlib and the cipher let go of the GIL): this thread
            # decompresses and feeds the sink, side by side with it
            opened = prefetch(_opened(self.store.iter_object(self.record.object_key, READ_CHUNK), digest, opener))
        counts = self._stream(opened, digest, opener, sink, toc, guard)
        counts["payload"] = self.kind
        return counts

    def _peek_kind(self):
        """What the checked copy holds, from its first decrypted, decompressed bytes."""
        opener, unpack = self.new_decryptor(), decompressor(self.record.metadata["compression"])
        head = b""
        self._copy.seek(0)
        for chunk in iter(functools.partial(self._copy.read, 64 * 1024), b""):
            head += unpack.update(in_step("decrypt", opener.update, chunk))
            if len(head) >= 64:
                break
        else:  # the whole (small) object was read: its last block and the compressed stream's end are still held back
            head += unpack.update(in_step("decrypt", opener.finalize)) + unpack.finalize()
        if head.startswith(magic.PG_DUMP):
            return CUSTOM_ARCHIVE
        if magic.is_payload(head):
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
            for chunk in prefetch(self.store.iter_object(self.record.object_key, READ_CHUNK)):
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

    def _stream(self, opened, digest, opener, sink, toc, guard):
        """``opened``: :func:`_opened` of the object's chunks, hashed into ``digest`` and decrypted by ``opener``."""
        metadata = self.record.metadata
        unpack = decompressor(metadata["compression"])
        downloaded = produced = 0
        sink_open = True
        for size, compressed in opened:
            downloaded += size
            plain = unpack.update(compressed)
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
            plain = unpack.update(in_step("decrypt", opener.finalize)) + unpack.finalize()
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


def _opened(chunks, digest, opener):
    """``(len(chunk), its decrypted bytes)`` for each of ``chunks`` (an object's bytes, in order), each first hashed
    into ``digest``; a segment that does not authenticate raises (step decrypt) before anything of it is yielded."""
    for chunk in chunks:
        digest.update(chunk)
        yield len(chunk), in_step("decrypt", opener.update, chunk)


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
    return modes.of(record.metadata, record.basename).opener(context, store, record)


def run_verify(settings, backup="latest", before=None, host=None, db=None, *, progress=None, store=None,
               allow_unsigned=False, allow_seed=None, pg=None):
    """Download, check the checksum, decrypt, decompress and parse the whole archive; touches no database.

    ``store`` and ``pg`` (its pg_restore parses the archive) are the adapters (default: the settings',
    workflows/wiring.py). ``progress``: as :func:`run_restore`'s.
    """
    progress = progress if progress is not None else Progress("verify")
    stages = Stages(progress)
    retried = store.retry_counts() if store is not None else None  # a store handed in may have served other runs
    with stages("prepare"):
        store = wiring.store_or_open(settings, store)
        context = keys.KeyContext(settings)
        allow_seed = settings.allow_seed if allow_seed is None else allow_seed
        primary = store
        store, record, fallback = select_with_replica(settings, store, backup, before, host, db, context=context,
                                                      allow_seed=allow_seed, choose=select)
        retried = retried if store is primary else None
        new_decryptor = decryptor_factory(context, store, record)
        trust.require(record.verdict, allow_unsigned, allow_seed)
        pg = wiring.postgres(settings, pg)
        sink = toc = None
        cluster = load_globals(store, record, new_decryptor)
    with stages("download_verify", total=record.metadata["size_bytes"]), \
            RestoreStream(store, record, new_decryptor, progress) as stream:
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
            "globals": _verified_globals(record, cluster), "duration_seconds": stages.elapsed(),
            "stage_seconds": stages.result(), "s3_retries": store.retry_counts(since=retried), "bucket": store.bucket,
            "replica_fallback": fallback}


def _verified_globals(record, document):
    """verify's word on a backup's globals: its metadata's summary, checked (None when it has none)."""
    if document is None:
        return None
    return dict(record.metadata["globals"], ok=True, warnings=document["warnings"])


def run_restore(settings, backup="latest", before=None, target_db=None, force=False, *, host=None, db=None,
                no_owner=False, progress=None, store=None, allow_unsigned=False, allow_seed=None, as_admin=False,
                restore_role=None, pg=None, with_globals=False, jobs=None, keep_role_owner=False):
    """Restore a backup into a new database (or, with ``force``, in place of an existing one).

    The data goes into a staging database first; only when pg_restore succeeded and
    the checksum and table count match is it renamed to the target. A replaced
    database is kept, renamed, never dropped. On any failure the staging database
    is dropped and the target is as it was.

    The archive's SQL runs as the restore role (``restore_role``, default BACKUP_RESTORE_ROLE,
    quankey_restore): a plain role, created when missing, through a login made for this restore
    only, so ``COPY ... TO PROGRAM``, untrusted languages and the like are refused. It runs as
    DB_USER only with ``as_admin`` (see :func:`_sql_runner`). Ownership is handed back to the
    archive's owner where that is safe (:meth:`SqlRunner.settle_ownership`); with ``keep_role_owner`` (a restore
    drill, workflows/drill.py) the restore role keeps them, so that SQL run as that role can read what was restored.

    ``with_globals``: first create the roles the backup's globals hold that this server lacks (a
    signed backup only; an existing role changes only with ``force``), and afterwards give the
    restored database the source's owner, ACL and settings (workflows/globalset.py, :class:`GlobalsRestore`). Roles it
    created are dropped again when the restore fails.

    ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py). ``progress`` (a
    progress.Progress; default one that logs every PROGRESS_LOG_SECONDS) hears the download's bytes towards the
    object's size; the result's ``stage_seconds`` says how long each stage took.
    """
    progress = progress if progress is not None else Progress("restore")
    stages = Stages(progress)
    retried = store.retry_counts() if store is not None else None  # a store handed in may have served other runs
    jobs = jobs if jobs is not None else settings.restore_jobs
    jobs = jobs or ranged.default_jobs()
    with stages("prepare"):
        store = wiring.store_or_open(settings, store)
        context = keys.KeyContext(settings)
        allow_seed = settings.allow_seed if allow_seed is None else allow_seed
        primary = store
        store, record, fallback = select_with_replica(settings, store, backup, before, host, db, context=context,
                                                      allow_seed=allow_seed, choose=select)
        retried = retried if store is primary else None
        new_decryptor = decryptor_factory(context, store, record)
        trust.require(record.verdict, allow_unsigned, allow_seed)
        cluster = globals_to_restore(store, record, new_decryptor) if with_globals else None
        target = check_target_name(target_db or default_target(record), settings.flag("target_db"))
        pg = wiring.postgres(settings, pg)
        exists = check_target(settings, pg, target, force)
        _warn_of_leftovers(pg, settings)
        runner = _sql_runner(settings, pg, record, as_admin, restore_role)
        staging = side_name(target, STAGING_TAG)
        restored_globals = GlobalsRestore(pg, cluster, force, privileged=untrusted_source(settings, record) is None)
        LOG.info("restore %s (%s) into %s on %s via staging database %s; its SQL runs as %s", record.basename,
                 store.url(record.object_key), target, pg.where, staging, runner.name)
        restored_globals.create_roles()
    # From here on, whatever stops the restore (a failure, SIGTERM, Ctrl-C) drops what it made: the login role, the
    # roles of the globals and the staging database. An interrupted psql ends its statement first (PgClient.query), so
    # a CREATE that committed as the interruption came is dropped too; a CREATE DATABASE that failed made nothing.
    created = runner_made = swapping = None
    try:
        with stages("prepare"):
            runner.create(record.metadata["size_bytes"],
                          also=restored_globals.acting_roles(own=untrusted_source(settings, record) is None)
                          if runner.role is not None and not no_owner else ())
            runner_made = True
            created = pg.create_database(staging, record.metadata.get("database_settings"), owner=runner.owner)
        counts, tables, owners = _restore_into(pg, store, record, new_decryptor, staging, runner=runner,
                                               no_owner=no_owner, stages=stages,
                                               no_tablespaces=bool(restored_globals.report.get("missing_tablespaces")),
                                               jobs=jobs)
        with stages("checks"):
            owner = runner.settle_ownership(staging, owners, no_owner, keep=keep_role_owner)
            owner = restored_globals.settle_database(staging, owner)
        with stages("swap"):
            replaced = None
            if exists:
                if pg.active_connections(target):
                    raise RefusedError("database %r gained active connections during the restore: stop the application "
                                       "and run again" % target, step="swap")
                replaced = side_name(target, REPLACED_TAG)
            swapping = True
            pg.swap_databases(staging, target, replaced)
    except BaseException as exc:
        interrupted = not isinstance(exc, BackupError)  # or a bug: either may have come between a CREATE and its return
        if interrupted:  # a psql killed with this process may have left its statement running: let it end first
            _wait_quietly(pg)
        if interrupted and swapping and not _exists_quietly(pg, staging):
            # interrupted as the swap committed: the restore is done, and must not be said undone
            runner.drop()
            exc.outcome = "it had just finished: %s holds the restored backup%s" % (
                target, " (the database it replaced is %s)" % replaced if replaced else "")
            raise
        if created is not None or interrupted:
            _drop_quietly(pg, staging)
        if runner_made or interrupted:  # a runner.create that failed dropped what it made
            runner.drop()
        undone = restored_globals.undo()
        if isinstance(exc, BackupError) and created is not None:
            exc.message += " (nothing was restored: the staging database was dropped%s%s)" % (
                "; %r is untouched" % target if exists else "",
                "; the roles it had created were dropped again" if undone else "")
        raise
    LOG.info("restored %s into %s: %d tables in %.1fs (%s)", record.basename, target, tables, stages.elapsed(),
             stages.text())
    return {"name": record.basename, "object_key": record.object_key, "target_db": target, "replaced_db": replaced,
            "table_count": tables, "expected_table_count": record.metadata.get("table_count"),
            "size_bytes": counts["downloaded_bytes"], "dump_bytes": counts["dump_bytes"],
            "checksum_sha256": counts["sha256"], "checksum_ok": True, "decryption_ok": True, "table_count_ok": True,
            "jobs": counts["jobs"], "integrity": "sha256" if counts["sha256"] else "segments",
            "database_settings": created, "timestamp": record.metadata["timestamp"],
            "duration_seconds": stages.elapsed(), "stage_seconds": stages.result(), "source_host": record.host,
            "source_db": record.db,
            "encryption": record.metadata.get("encryption"), "signature": record.verdict.describe(),
            "trusted": record.verdict.trusted, "layout": record.layout or "host", "kdf": record.kdf,
            "sql_ran_as": runner.name, "owner": owner, "archive_owners": owners, "source_trusted": runner.trusted,
            "globals": restored_globals.report if cluster is not None else None,
            "s3_retries": store.retry_counts(since=retried), "bucket": store.bucket, "replica_fallback": fallback}


def check_target(settings, pg, target, force=False):
    """Whether ``target`` exists, after the checks a restore makes on the server before it writes (read-only, so
    check mode makes them too): the server answers, pg_restore is new enough for it, and an existing target is
    replaced only with ``force`` and without sessions. Raises PostgresError, ConfigError or RefusedError."""
    pg.check_client_version(pg.server_version_num(), "pg_restore")
    exists = pg.database_exists(target)
    if exists and not force:
        raise RefusedError("database %r already exists on %s: restore under another name with %s, or pass %s to "
                           "replace it (the old one is kept, renamed)"
                           % (target, pg.where, settings.flag("target_db"), settings.flag("force")))
    if exists and pg.active_connections(target):
        raise RefusedError("database %r has %d active connections: stop the application (e.g. pm2 stop quankey) "
                           "before replacing it" % (target, pg.active_connections(target)))
    return exists


def check_restore_role(settings, pg, role, create=False):
    """Whether the restore role ``role`` exists (with ``create``: is there, created when missing), after the checks
    that may refuse it: not the login that restores, and a plain role (no superuser, no server files, ...).

    Without ``create`` it only reads (check mode): a missing role is not refused, the restore creates it.
    """
    if role == pg.user:
        raise ConfigError("%s is %s, the login that restores (%s): the restore role must be a role of its own, e.g. "
                          "%s; to run the backup's SQL as %s, pass %s"
                          % (settings.label("restore_role"), role, settings.label("db_user"),
                             config.DEFAULT_RESTORE_ROLE, role, settings.flag("as_admin")))
    if create:
        if pg.create_restore_role(role):
            LOG.info("created the restore role %s (a plain role that cannot log in; each restore logs in as a "
                     "temporary member of it)", role)
    elif not pg.role_exists(role):
        return False
    risks = _short_risks(pg.role_risks(role))
    if risks:
        raise RefusedError("restore role %r (%s) may not run a backup's SQL: %s; make it a plain role again (ALTER ROLE "
                           "%s NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS, and revoke those memberships) or name "
                           "another" % (role, settings.label("restore_role"), "; ".join(risks), role), step="restore role")
    return True


def prepare_restore_role(settings, check=False, *, pg=None):
    """Make sure BACKUP_RESTORE_ROLE exists (unless ``check``) and say whether it may run restored SQL.

    ``pg`` is the PostgreSQL adapter (default: the settings', workflows/wiring.py).
    """
    pg = wiring.postgres(settings, pg)
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
        staging, _logins = leftovers.find_in_postgres(pg, settings, layout.utcnow())
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
    """Who runs the archive's SQL (a :class:`SqlRunner`), after every check that can refuse it.

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
        return SqlRunner(pg, None, trusted=True)
    role = restore_role or settings.restore_role
    check_restore_role(settings, pg, role, create=True)
    return SqlRunner(pg, role, trusted=doubt is None)


def _short_risks(risks):
    """A role's risks for a message: a superuser's alone, not the memberships that follow from it."""
    return ["it is a superuser"] if "it is a superuser" in risks else risks


class SqlRunner:
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

    def create(self, object_size, also=()):
        """Make the temporary login role, before the staging database it will own; a member of the restore role and of
        the roles in ``also`` (``ALTER DEFAULT PRIVILEGES FOR ROLE x`` in an archive needs membership in ``x``).

        pg_restore logs in once it has read the archive's start, which for an aes-256-cbc object comes
        after the whole download: the password stays valid RESTORE_LOGIN_MINUTES plus a minute per
        RESTORE_LOGIN_BYTES_PER_MINUTE of the object (the role is dropped as soon as the restore ends).
        """
        if self.role is None:
            return
        self._password = secrets.token_urlsafe(32)
        minutes = RESTORE_LOGIN_MINUTES + object_size // RESTORE_LOGIN_BYTES_PER_MINUTE
        self.admin.create_login_role(self.login_role, self._password,
                                     layout.utcnow() + datetime.timedelta(minutes=minutes), self.role)
        if also:
            try:
                self.admin.query("GRANT %s TO %s" % (", ".join(quote_ident(name) for name in also),
                                                     quote_ident(self.login_role)), step="restore role")
            except BaseException:
                self.drop()
                raise

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

    def settle_ownership(self, staging, owners, no_owner, keep=False):
        """Hand what this restore created to its owner-to-be; returns that owner.

        The archive's main owner (most TOC entries) gets everything when it exists here and the backup
        is trusted, or when it is a plain role (a SECURITY DEFINER function of an untrusted archive
        must not end up owned by a superuser). With ``no_owner``, a trusted backup's objects go to the
        admin login instead. Otherwise, or with ``keep``, the restore role keeps them (and that is said).
        """
        if self.role is None:
            return None if not no_owner else self.admin.user
        main = max(sorted(owners), key=lambda name: owners[name]) if owners else None
        wanted = self.role
        if keep:
            pass
        elif no_owner:
            wanted = self.admin.user if self.trusted else self.role
        elif main and self.admin.role_exists(main) and (self.trusted or not self.admin.role_risks(main)):
            wanted = main
        elif main:
            LOG.warning("the restored objects stay owned by the restore role %s: the archive's owner %s %s", self.role,
                        main, "does not exist here (--with-globals creates the roles a backup kept)"
                        if not self.admin.role_exists(main) else
                        "may not own what an untrusted backup created (a function of it would run with its rights)")
        others = sorted(name for name in owners if name != main)
        if others and not no_owner and wanted == main:
            LOG.warning("the archive's objects had several owners (%s): all of them are owned by %s now",
                        ", ".join([main] + others), wanted)
        self.admin.reassign_owned(staging, self.login_role, wanted)
        self.drop(staging)
        self.login_role = None
        return wanted


def _restore_argv(client, staging, runner, no_owner, no_tablespaces):
    """pg_restore and its options for the staging database, as the runner."""
    argv = client.restore_argv(staging, no_owner=no_owner)
    if runner.role is not None and not no_owner:
        argv.insert(1, "--no-owner")  # the restore role creates everything; ownership is settled after
    if no_tablespaces:
        argv.insert(1, "--no-tablespaces")
    return argv


def _restore_into(pg, store, record, new_decryptor, staging, *, runner, no_owner, stages, no_tablespaces=False, jobs=1):
    """Restore into ``staging`` as the runner: pg_restore for an archive, psql (restricted) for a plain-SQL dump.

    With ``jobs`` > 1 and a backup that has a range index, ``jobs`` pg_restore processes at once (workflows/ranged.py);
    else one stream. Returns ``(counts, tables, owners in the archive)``. ``stages`` (progress.Stages) times the
    download and restore, then the checks.
    """
    single = ranged.why_single(record, jobs, new_decryptor)
    if single is None and record.metadata.get("format") != documents.PLAIN_DUMP_FORMAT:
        LOG.info("restoring %s with %d pg_restore processes at once, from ranged reads of its object", record.basename,
                 jobs)
        counts, owners = _restore_ranged(pg, store, record, new_decryptor, staging, runner=runner, no_owner=no_owner,
                                         stages=stages, no_tablespaces=no_tablespaces, jobs=jobs)
        guard = None
    else:
        if jobs > 1:
            LOG.info("restoring %s with one stream: %s", record.basename, single)
        counts, owners, guard = _restore_stream(pg, store, record, new_decryptor, staging, runner=runner,
                                                no_owner=no_owner, stages=stages, no_tablespaces=no_tablespaces)
    with stages("checks"):
        tables = pg.table_count(staging)
    expected = record.metadata.get("table_count")
    if guard is not None and expected is None:
        expected = guard.tables
    if expected is not None and tables != expected:
        raise IntegrityError("restored database has %d tables, the backup had %d" % (tables, expected), step="verify")
    return counts, tables, owners


def _restore_ranged(pg, store, record, new_decryptor, staging, *, runner, no_owner, stages, no_tablespaces, jobs):
    """The parallel restore (workflows/ranged.py): schema, table data by ``jobs`` processes, then indexes."""
    client = runner.login(staging)
    job = ranged.RangedRestore(store, record, new_decryptor, pg=pg,
                               argv=_restore_argv(client, staging, runner, no_owner, no_tablespaces),
                               env=client.environment(), jobs=jobs, progress=stages.progress, explain=_restore_failure)
    try:
        with stages("schema"):
            job.read_prefix()
            job.pre_data()
        with stages("download_restore", total=record.metadata["size_bytes"]):
            job.data()
        with stages("indexes"):
            job.post_data()
    finally:
        job.close()
    return job.counts(), toc_owners(job.listing)


def _restore_stream(pg, store, record, new_decryptor, staging, *, runner, no_owner, stages, no_tablespaces):
    """The single-stream restore: one pg_restore (or psql) fed the whole object in order."""
    sink = toc = None
    with stages("download_restore", total=record.metadata["size_bytes"]), \
            RestoreStream(store, record, new_decryptor, stages.progress) as stream:
        try:
            kind = stream.prepare()
            client = runner.login(staging)
            guard = None
            if kind == PLAIN_SQL:
                guard = PlainSqlGuard(secrets.token_hex(16), drop_ownership=runner.role is not None)
                argv = client.script_argv(staging)
            else:
                toc = TocReader(pg)
                argv = _restore_argv(client, staging, runner, no_owner, no_tablespaces)
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
    counts["jobs"] = 1
    return counts, owners, guard


def _restore_failure(stderr):
    """Why pg_restore (or psql, for a plain-SQL dump) failed, with the fix for the common causes."""
    detail = failure_detail(stderr)
    if "\\restrict" in detail and "invalid command" in detail:
        return detail + ("; this psql cannot restrict backslash commands (that came with PostgreSQL 15.14, 16.10, 17.6): "
                         "a plain-SQL backup is restored only by a psql that can, so that the dump cannot run commands "
                         "here: upgrade the PostgreSQL client or point PG_BIN_DIR at a newer one")
    missing = re.search(r'role "([^"]+)" does not exist', detail)
    if missing:
        detail += ("; the archive's objects are owned by or granted to role %s, which this server lacks: restore with "
                   "--with-globals (with_globals: true) to create the roles the backup kept, create it by hand "
                   "(CREATE ROLE %s), or restore with --no-owner (no_owner: true) to skip ownership and privileges"
                   % (missing.group(1), missing.group(1)))
    elif re.search(r"permission denied|must be (superuser|owner|a member)|must have privileges|privileges of the", detail):
        detail += "; the backup's SQL needs a privilege that the role it runs as does not have"
    return detail


def _wait_quietly(pg):
    """Wait for this process's statements still active on the server (PgClient.wait_for_own_statements); said when
    they did not end, never raises."""
    try:
        if not pg.wait_for_own_statements():
            LOG.error("a statement of this restore was still running on %s when its clean-up began", pg.where)
    except BackupError as exc:
        LOG.error("could not look for this restore's statements still running on %s: %s", pg.where, exc)


def _exists_quietly(pg, name):
    """Whether database ``name`` exists; True when that cannot be told (so nothing is taken for done)."""
    try:
        return pg.database_exists(name)
    except BackupError:
        return True


def _drop_quietly(pg, name):
    try:
        pg.drop_database(name)
    except BackupError:
        LOG.error("could not drop the staging database %s: drop it by hand (DROP DATABASE %s)", name, name)


def preview_restore(settings, backup="latest", before=None, target_db=None, host=None, db=None, *, store=None,
                    progress=None, allow_unsigned=False, allow_seed=None, as_admin=False, pg=None, force=False,
                    restore_role=None, with_globals=False):
    """What :func:`run_restore` would restore, and where, after a full verification of it.

    Returns ``(plan, verification)``: ``plan`` names the backup, its source and
    the target database; ``verification`` is :func:`run_verify`'s result
    (download, SHA-256, decryption, decompression, archive parse). Raises
    BackupError exactly where the restore would (selection, key, integrity, the target's name, the server's
    checks of :func:`check_target` and, unless ``as_admin``, :func:`check_restore_role`), writing nothing:
    the server is only read. ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py).
    """
    store = wiring.store_or_open(settings, store)
    context = keys.KeyContext(settings)
    allow_seed = settings.allow_seed if allow_seed is None else allow_seed
    # run_restore's checks, in its order: selection, the keys open the data key, trust, the target, the server
    store, record, fallback = select_with_replica(settings, store, backup, before, host, db, context=context,
                                                  allow_seed=allow_seed, choose=select)
    new_decryptor = decryptor_factory(context, store, record)
    trust.require(record.verdict, allow_unsigned, allow_seed)
    cluster = globals_to_restore(store, record, new_decryptor) if with_globals else None
    target = check_target_name(target_db or default_target(record), settings.flag("target_db"))
    pg = wiring.postgres(settings, pg)
    exists = check_target(settings, pg, target, force)
    role = None if as_admin else (restore_role or settings.restore_role)
    role_exists = check_restore_role(settings, pg, role) if role else None
    restored_globals = GlobalsRestore(pg, cluster, force, privileged=untrusted_source(settings, record) is None)
    verification = run_verify(settings, backup=record.basename, host=record.host, db=record.db,
                              store=store, progress=progress, allow_unsigned=allow_unsigned, allow_seed=allow_seed,
                              pg=pg)
    if fallback:  # run_verify read the store chosen here: the replica, as the primary failed
        verification["replica_fallback"] = fallback
    plan = {"name": record.basename, "object_key": record.object_key, "metadata_key": record.metadata_key,
            "source_host": record.host, "source_db": record.db, "timestamp": record.metadata["timestamp"],
            "target_db": target, "expected_table_count": record.metadata.get("table_count"),
            "signature": record.verdict.describe(), "trusted": record.verdict.trusted,
            "sql_runs_as": settings.db_user if as_admin else role, "restore_role_exists": role_exists,
            "target_exists": exists, "source_trusted": untrusted_source(settings, record) is None,
            "globals": restored_globals.plan() if cluster is not None else None}
    return plan, verification
