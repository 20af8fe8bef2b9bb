# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Adoption: the seed's backups of a database, verified and re-encrypted into this collection's format.

For each seed backup (flat layout, unsigned, aes-256-cbc) of ``DB_NAME``, oldest first:

1. download it whole and check its SHA-256 against its ``.meta`` (workflows/restore.py's RestoreStream);
2. in one pass, decrypt and decompress it, parse it (``pg_restore --file=/dev/null`` and its
   table of contents for an archive, the plain-SQL guard for a SQL dump), count its tables, and
   write the same plaintext, compressed and encrypted like a new backup (format version 2,
   bound to this host, database and the backup's own name), to this host's place;
3. commit it with signed metadata that keeps the original name and time (so selection by
   time, retention and health treat it like any other backup) and records where it came from
   (``adopted_from``);
4. verify the copy as a restore would (download, checksum, decrypt, parse): only then may the
   original be deleted (``delete_originals``).

Idempotent (a backup already adopted is checked and counted, not copied again), resumable (an
interrupted copy leaves no metadata, so the next run copies it again), fail closed per backup.
Adopting is the explicit consent the seed's backups need (``--allow-seed`` elsewhere), given
only to backups that decrypt with the seed's passphrase; ``dry_run`` verifies and writes nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import re
import subprocess
import time

from .. import keys
from ..adapters.postgres import count_toc_tables
from ..adapters.process import NO_PROGRESS, Child, TocReader
from ..adapters.s3 import choose_part_size
from ..catalog import documents, layout
from ..errors import BackupError, ConflictError, IntegrityError, NotFoundError
from ..formats.plainsql import PlainSqlGuard
from . import wiring
from .backup import SealedWriter, commit, new_encryptor
from .inventory import load_metadata, seed_backups
from .restore import PLAIN_SQL, RestoreStream, decryptor_factory, run_verify

LOG = logging.getLogger("quankey_backup")

ADOPTED, WOULD_ADOPT, ALREADY, FAILED = "adopted", "would adopt", "already adopted", "failed"
_VERSION_RE = re.compile(r"Dumped from database version:?\s+(\d+)\.(\d+)")
_DUMPER_RE = re.compile(r"Dumped by pg_dump version:?\s+(\d+)\.(\d+)")


def run_adopt(settings, dry_run=False, delete_originals=False, store=None, progress=None, *, pg=None):
    """Adopt every seed backup of ``settings.db_name`` (see the module); a JSON-ready summary, never raising per backup.

    ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py).
    """
    settings.require("db_name", "bucket")
    context = keys.KeyContext(settings)
    context.require_sealing()
    store = wiring.store_or_open(settings, store)
    seed = seed_backups(settings, store)
    adoption = _Adoption(settings, context, store, wiring.postgres(settings, pg), progress or NO_PROGRESS)
    results = [adoption.one(record, dry_run, delete_originals) for record in seed]
    counts = dict((status, sum(1 for item in results if item["status"] == status))
                  for status in (ADOPTED, WOULD_ADOPT, ALREADY, FAILED))
    failed = [item for item in results if item["status"] == FAILED]
    return {"database": settings.db_name, "host": settings.host, "bucket": store.bucket, "dry_run": dry_run,
            "delete_originals": delete_originals, "backups": results, "adopted": counts[ADOPTED],
            "would_adopt": counts[WOULD_ADOPT], "already_adopted": counts[ALREADY], "failed": counts[FAILED],
            "originals_deleted": sum(1 for item in results if item.get("original_deleted")),
            "changed": bool(counts[ADOPTED] or counts[WOULD_ADOPT] or any(item.get("original_deleted")
                                                                          for item in results)),
            "exit_code": failed[0]["exit_code"] if failed else 0}


def _existing_copy(store, record, target, dry_run=False):
    """The metadata of this seed backup's adopted copy, None when there is none; ConflictError for another backup there.

    An uncommitted copy (an interrupted adoption's) is deleted, to be made again; a dry run only says so.
    """
    try:
        document = load_metadata(store, target)
    except NotFoundError:
        if store.exists(target.object_key):  # an interrupted copy: uncommitted, ours to replace
            LOG.warning("%s %s: an uncommitted copy of %s from an interrupted adoption",
                        "a real run removes" if dry_run else "removing", target.object_key, record.basename)
            if not dry_run:
                store.delete(target.object_key)
        return None
    origin = document.get("adopted_from") or {}
    if origin.get("checksum_sha256") == record.metadata["checksum_sha256"] and origin.get("object_key") == record.object_key:
        return document
    raise ConflictError("a backup named %s already exists at %s and is not this seed backup's copy: adopt it under "
                        "another BACKUP_HOST_ID, or move that backup away" % (record.basename, target.metadata_key))


class _Adoption:
    """One adopt run: its settings, keys, adapters and progress, applied to each seed backup in turn."""

    def __init__(self, settings, context, store, pg, progress):
        self.settings = settings
        self.context = context
        self.store = store
        self.pg = pg
        self.progress = progress

    def one(self, record, dry_run, delete_originals):
        """Adopt one seed backup (or say what would happen); never raises BackupError."""
        settings, store = self.settings, self.store
        target = layout.BackupRecord(settings.host, settings.db_name, record.basename,
                                     layout.metadata_key(settings.prefix, settings.host, settings.db_name,
                                                         record.basename),
                                     layout.object_key(settings.prefix, settings.host, settings.db_name, record.basename))
        item = {"name": record.basename, "timestamp": record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "seed_object_key": record.object_key, "object_key": target.object_key, "status": FAILED}
        try:
            load_metadata(store, record)
            existing = _existing_copy(store, record, target, dry_run)
            if existing is not None:
                item["status"] = ALREADY
            elif dry_run:
                item.update(self.check(record))
                item["status"] = WOULD_ADOPT
            else:
                item.update(self.copy(record, target))
                item["status"] = ADOPTED
            if item["status"] != WOULD_ADOPT and (delete_originals or item["status"] == ADOPTED):
                verified = run_verify(settings, backup=target.basename, host=target.host, db=target.db, store=store,
                                      allow_seed=False, pg=self.pg)
                item["copy_verified"] = True
                item["table_count"] = verified["table_count"]
            if delete_originals and not dry_run and item.get("copy_verified"):  # a dry run deletes nothing
                store.delete(record.metadata_key)  # uncommit first: without its .meta the seed object is no backup
                store.delete(record.object_key)
                item["original_deleted"] = True
                LOG.info("deleted the original seed backup %s (its adopted copy verified)", record.basename)
        except BackupError as exc:
            item["status"] = FAILED
            item["error"] = "%s: %s" % (record.basename, exc)
            item["exit_code"] = exc.exit_code
            LOG.error("adoption of %s failed (the original is untouched): %s", record.basename, exc)
        return item

    def check(self, record):
        """Verify a seed backup end to end without writing anything; what was found."""
        return self.read(record, writer=None)

    def copy(self, record, target):
        """Verify and re-encrypt in one pass, then commit the copy with signed metadata; what was found."""
        settings, store, context = self.settings, self.store, self.context
        started = time.time()
        identity = (target.host, target.db, target.basename)
        encryption, envelope, kid, recipient_ids, encryptor = new_encryptor(context, identity)
        upload = store.open_multipart(target.object_key, choose_part_size(record.metadata["size_bytes"] * 4))
        try:
            writer = SealedWriter(settings.compression, encryptor, upload)
            found = self.read(record, writer=writer)
            stored = writer.finish()
            size = upload.complete()
            if size != stored["stored_bytes"]:
                raise IntegrityError("stored %d bytes but produced %d" % (size, stored["stored_bytes"]), step="upload")
        except BaseException:
            upload.abort()
            raise
        view = settings.describe()
        view.update(db_name=target.db, host=target.host,
                    retention_days=record.metadata.get("retention_days", settings.retention_days))
        metadata = documents.build_metadata(
            view, basename=target.basename, when=record.timestamp, object_key=target.object_key, size_bytes=size,
            checksum=stored["sha256"], envelope=envelope, key_id=kid, table_count=found["table_count"],
            dump_bytes=found["dump_bytes"], duration=time.time() - started, server_version=found["server_version"],
            pg_dump_version=found["pg_dump_version"], database_settings=None, encryption_name=encryption,
            dump_format=documents.PLAIN_DUMP_FORMAT if found["payload"] == PLAIN_SQL else documents.DUMP_FORMAT)
        metadata["adopted_from"] = {"object_key": record.object_key, "metadata_key": record.metadata_key,
                                    "checksum_sha256": record.metadata["checksum_sha256"], "kdf": record.kdf}
        if recipient_ids:
            metadata["recipient_ids"] = recipient_ids
        commit(store, target.metadata_key, target.object_key, documents.encode_metadata(context.sign(metadata)))
        LOG.info("adopted %s: %d tables, %d bytes stored at %s", record.basename, found["table_count"], size,
                 store.url(target.object_key))
        found.update(size_bytes=size, checksum_sha256=stored["sha256"], encryption=encryption)
        return found

    def read(self, record, writer):
        """One pass over a seed backup: checksum, decrypt, decompress, parse (and, with ``writer``, copy)."""
        pg, context = self.pg, self.context
        record.verdict = context.verdict(record)
        new_decryptor = decryptor_factory(context, self.store, record)
        sink = toc = None
        with RestoreStream(self.store, record, new_decryptor, self.progress) as stream:
            try:
                if stream.prepare() == PLAIN_SQL:
                    guard = PlainSqlGuard()
                    counts = stream.run(_Tee(_Parse(guard), writer))
                    guard.finish()
                    tables, listing = guard.tables, ""
                else:
                    sink = Child([pg.tool("pg_restore"), "--file=/dev/null"], pg.environment(),
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, name="pg_restore")
                    toc = TocReader(pg)
                    counts = stream.run(_Tee(sink, writer), toc)
                    status = sink.wait()
                    if status != 0 or not counts["sink_open"]:
                        raise IntegrityError("the archive does not parse (%s: %s)"
                                             % (sink.describe_exit(status), sink.stderr_text()), step="pg_restore")
                    listing = toc.listing(step="verify")
                    tables = count_toc_tables(listing)
            except BaseException:
                for child in (sink, toc):
                    if child is not None:
                        child.kill()
                raise
        return {"payload": counts["payload"], "kdf": record.kdf, "table_count": tables,
                "dump_bytes": counts["dump_bytes"], "server_version": _version(_VERSION_RE, listing),
                "pg_dump_version": _version(_DUMPER_RE, listing), "seed_checksum_ok": True}


def _version(pattern, listing):
    match = pattern.search(listing or "")
    return "%s.%s" % match.groups() if match else None


class _Parse:
    """A sink that hands a plain-SQL dump to the guard only to parse it (its output is not needed)."""

    def __init__(self, guard):
        self.guard = guard

    def feed(self, data):
        self.guard.feed(data)
        return True


class _Tee:
    """A sink that feeds each of its sinks (None ones skipped); False once the first is closed."""

    def __init__(self, *sinks):
        self.sinks = [sink for sink in sinks if sink is not None]

    def feed(self, data):
        fed = True
        for sink in self.sinks:  # every sink gets the data, even after one has closed
            fed = sink.feed(data) and fed
        return fed
