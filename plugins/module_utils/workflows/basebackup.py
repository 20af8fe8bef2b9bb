# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Physical base backups (issue 18, item 3): ``quankey-backup basebackup`` and their ``verify``.

``pg_basebackup -D - -Ft -X none --manifest-checksums=SHA256`` writes the main tablespace as one tar on stdout, its
backup manifest inside and no WAL (``wal-push`` archives the WAL). The tar streams through the dumps' own path
(workflows/backup.py: ``SealedWriter`` compresses, encrypts, hashes and feeds the multipart upload; ``commit``
writes the metadata last) and, at the same time, through formats/basetar.py's ``TarChecker``, which checks every file
against the manifest before anything is committed. Nothing touches local disk. A cluster with tablespaces beyond
pg_default and pg_global is refused (pg_basebackup can write only one tablespace to stdout, and writing the others
to a directory would put the cluster on local disk).

The signed metadata (catalog/documents.py, ``postgresql_base``) records the start and stop LSN, the timeline, the
backup_label, the manifest's SHA-256, size and counts, and the cluster's system identifier. The objects live under
``<prefix>base/<host>/`` (catalog/layout.py), apart from the dumps, so that listing, prune, restore and drill of
dumps never see one. ``verify`` downloads, authenticates, decrypts and decompresses it and checks the tar against
its manifest again, and the WAL range and manifest against the signed metadata.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import subprocess
import time

from .. import keys
from ..adapters.postgres import explain_client_error
from ..adapters.process import CHUNK, Child
from ..adapters.s3 import choose_part_size, lock_of_settings
from ..catalog import documents, layout, trust
from ..errors import AccessDeniedError, ConfigError, IntegrityError, NotFoundError, PostgresError, RefusedError, in_step
from ..formats import basetar
from ..formats.compression import check_compression
from ..progress import Progress, Stages
from . import backup, wiring
from .restore import RestoreStream, decryptor_factory

LOG = logging.getLogger("quankey_backup")
MIN_SERVER_VERSION = 130000  # backup manifests came with PostgreSQL 13
BASE_NAME = "cluster"  # a base backup's name stem unless BACKUP_NAME gives one: cluster_base_<YYYYmmdd_HHMMSS>
CHECKED_FIELDS = ("timeline", "start_lsn", "stop_lsn", "start_wal_file", "checkpoint_lsn", "backup_label", "manifest")


# --------------------------------------------------------------------------- taking one

def _client_version(pg, server_version):
    """pg_basebackup's ``major.minor``; ConfigError when it is missing or older than the server."""
    major, minor = pg.client_version("pg_basebackup")
    if major < server_version // 10000:
        raise ConfigError("pg_basebackup %d.%d cannot back up a PostgreSQL %d server: install postgresql-client-%d or set "
                          "%s to its bin directory" % (major, minor, server_version // 10000, server_version // 10000,
                                                       pg.settings.label("pg_bin_dir")))
    return "%d.%d" % (major, minor)


def _check_cluster(settings, pg):
    """``(server version number, pg_basebackup version, system identifier, cluster bytes)``, once the cluster is
    known to be one this command backs up: PostgreSQL 13 or later, no extra tablespace, a login that may replicate."""
    facts = pg.cluster_facts()  # one query: also proves we can connect and log in
    server_version = facts["version"]
    if server_version < MIN_SERVER_VERSION:
        raise ConfigError("PostgreSQL %d.%d has no backup manifests, which a base backup is checked against: base "
                          "backups need PostgreSQL 13 or later (use `quankey-backup backup`, the logical dumps)"
                          % (server_version // 10000, server_version % 10000))
    tool_version = _client_version(pg, server_version)
    extra = facts["extra_tablespaces"]
    if extra:
        raise RefusedError("the cluster at %s has tablespace(s) beyond pg_default and pg_global (%s): a base backup "
                           "streams only the main tablespace (pg_basebackup writes one tablespace to stdout, and "
                           "nothing may be written to local disk), so it would be incomplete. Back this cluster up with "
                           "`quankey-backup backup` (logical dumps), or move the tables into pg_default"
                           % (pg.where, ", ".join("%s at %s" % (row[0], row[1]) for row in extra)), step="prepare")
    identifier, size = facts["identifier"], facts["size"]
    if not facts["replication"]:
        raise ConfigError("login %r may not take a base backup: it needs the REPLICATION attribute (`ALTER ROLE %s "
                          "REPLICATION`) and a `host replication %s ...` line in pg_hba.conf" % (pg.user, pg.user, pg.user))
    return server_version, tool_version, identifier, size


def _explain(pg, child):
    """One line for pg_basebackup's failure, naming the fix for the replication connection's usual problems."""
    text = child.stderr_text()
    lowered = text.lower()
    if "no pg_hba.conf entry for replication connection" in lowered:
        if str(pg.settings.db_host or "").startswith("/"):  # the local socket, as the role's scheduled base backup
            return ("PostgreSQL at %s refuses a replication connection of login %r over its local socket (no "
                    "pg_hba.conf entry): add `local replication %s peer` to pg_hba.conf (Debian's default has `local "
                    "replication all peer`) and reload" % (pg.where, pg.user, pg.user))
        return ("PostgreSQL at %s refuses a replication connection of login %r (no pg_hba.conf entry): add `host "
                "replication %s <this host's address> scram-sha-256` to pg_hba.conf and reload" % (pg.where, pg.user, pg.user))
    if "max_wal_senders" in lowered or ("too many clients" in lowered and "replication" in lowered):
        return ("PostgreSQL at %s has no free WAL sender for the base backup: raise max_wal_senders (restart) or wait for "
                "another base backup or replica to finish (%s)" % (pg.where, text.strip().splitlines()[-1]))
    if "must be superuser or replication role" in lowered or "permission denied to start walsender" in lowered:
        return "login %r may not take a base backup: `ALTER ROLE %s REPLICATION`" % (pg.user, pg.user)
    return explain_client_error(text, pg.where, pg.user, "replication", pg.settings.label)


def run_basebackup(settings, progress=None, store=None, now=None, *, pg=None, fast_checkpoint=None):
    """Take one physical base backup of the cluster; returns a summary dict, or raises (upload aborted, nothing
    committed).

    ``fast_checkpoint`` (``basebackup --fast``): ask PostgreSQL for an immediate checkpoint instead of a spread one.
    ``store`` and ``pg`` are the adapters (default: the settings'). The result's ``stage_seconds`` says how long each
    stage took.
    """
    progress = progress if progress is not None else Progress("basebackup")
    stages = Stages(progress)
    started = time.time()
    with stages("prepare"):
        settings.require("bucket")
        check_compression(settings.compression, settings.label("compression"))
        context = keys.KeyContext(settings)
        context.require_sealing()
        if not context.mode().has_data_key:
            raise ConfigError("%s=%s cannot write base backups: it exists to read the seed's backups and authenticates "
                              "nothing; use aes-256-gcm or hybrid-pq" % (settings.label("encryption"), context.mode().name))
        pg = wiring.postgres(settings, pg)
        server_version, tool_version, identifier, size = _check_cluster(settings, pg)
        store = wiring.store_or_open(settings, store)
        store.check_bucket(layout.base_prefix(settings.prefix, settings.host))
        store.object_lock = lock_of_settings(settings)
        store.check_object_lock()
        when = now or layout.utcnow()
        basename = layout.base_basename(settings.backup_name or BASE_NAME, when)  # the cluster's, not DB_NAME's
        obj_key = layout.base_object_key(settings.prefix, settings.host, basename)
        meta_key = layout.base_metadata_key(settings.prefix, settings.host, basename)
        if store.exists(meta_key) or store.exists(obj_key):
            raise RefusedError("a base backup named %s already exists in %s: another one is running at the same time, or "
                               "the clock went back; run again" % (basename, store.url()))
        encryption, envelope, kid, recipient_ids, make = backup.new_encryptors(
            context, (settings.host, layout.BASE_BINDING_DATABASE, basename))
        fast = bool(fast_checkpoint)
        LOG.info("base backup %s of the cluster at %s (system %s, about %d bytes, %s checkpoint) to %s", basename,
                 pg.where, identifier, size, "fast" if fast else "spread", store.url(obj_key))
    with stages("basebackup_upload", total=size, estimated=True):
        stored, checked = _stream(pg, store, obj_key, settings.compression, make(), size, fast, progress)
    with stages("commit"):
        view = settings.describe()
        metadata = documents.build_base_metadata(
            view, basename=basename, when=when, object_key=obj_key, size_bytes=stored["size_bytes"],
            checksum=stored["sha256"], tar_bytes=checked["tar_bytes"], envelope=envelope, key_id=kid,
            encryption_name=encryption, duration=time.time() - started,
            server_version="%d.%d" % (server_version // 10000, server_version % 10000),
            pg_basebackup_version=tool_version, system_identifier=identifier, checked=checked)
        if recipient_ids:
            metadata["recipient_ids"] = recipient_ids
        metadata = context.sign(metadata)
        backup.commit(store, meta_key, obj_key, documents.encode_metadata(metadata))
    LOG.info("base backup %s committed: %d bytes stored (tar %d bytes, %d files), WAL %s to %s on timeline %d, in "
             "%.1fs", basename, stored["size_bytes"], checked["tar_bytes"], checked["manifest"]["files"],
             checked["start_lsn"], checked["stop_lsn"], checked["timeline"], stages.elapsed())
    return {
        "kind": "base", "name": basename, "object_key": obj_key, "metadata_key": meta_key, "bucket": store.bucket,
        "host": settings.host, "size_bytes": stored["size_bytes"], "tar_bytes": checked["tar_bytes"],
        "checksum_sha256": stored["sha256"], "files": checked["manifest"]["files"],
        "manifest_sha256": checked["manifest"]["sha256"], "start_lsn": checked["start_lsn"],
        "stop_lsn": checked["stop_lsn"], "timeline": checked["timeline"], "start_wal_file": checked["start_wal_file"],
        "system_identifier": identifier, "server_version": metadata["server_version"],
        "compression": settings.compression, "encryption": encryption, "key_id": kid,
        "signing_key_id": metadata["signature"]["key_id"], "recipient_ids": recipient_ids,
        "fast_checkpoint": fast, "timestamp": metadata["timestamp"], "duration_seconds": stages.elapsed(),
        "stage_seconds": stages.result(),
    }


def _stream(pg, store, key, compression, encryptor, size, fast, progress):
    """pg_basebackup's tar -> (TarChecker, and compress -> encrypt -> SHA-256 -> multipart upload); ``(stored, checked)``
    once the upload completed and the tar matched its manifest, else raises with the upload aborted."""
    child = upload = sealing = None
    try:
        child = Child(pg.basebackup_argv(fast), pg.environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      name="pg_basebackup")
        upload = store.open_multipart(key, choose_part_size(size * 2))
        writer = backup.SealedWriter(compression, encryptor, upload)
        # two stages: reading and the manifest check here, compression, encryption and the upload's writes on a thread
        # of their own (zstd and SHA-256 release the GIL)
        sealing = backup.QueuedSink(writer, depth=8, methods=("feed",), name="seal-upload")
        checker = basetar.TarChecker()
        read = child.proc.stdout.read
        produced = 0
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            produced += len(chunk)
            in_step("pg_basebackup", checker.feed, chunk)
            sealing.feed(chunk)
            progress(produced)
        sealing.close()  # every byte sealed and handed to the upload, or its failure raised
        stored = writer.finish()
        status = child.wait()
        if status != 0:
            raise PostgresError("%s: %s" % (child.describe_exit(status), _explain(pg, child)), step="pg_basebackup")
        checked = in_step("pg_basebackup", checker.finish)
        stored["size_bytes"] = upload.complete()
        if stored["size_bytes"] != stored["stored_bytes"]:
            raise IntegrityError("stored %d bytes but produced %d" % (stored["size_bytes"], stored["stored_bytes"]),
                                 step="upload")
        return stored, checked
    except BaseException:
        if child is not None:
            child.kill()
        if sealing is not None:
            sealing.close(quiet=True)  # the upload is no longer written to
        if upload is not None:
            upload.abort()
        raise


# --------------------------------------------------------------------------- listing, selecting, judging

def list_base_backups(settings, store=None, host=None):
    """Base backups newest first, and orphan objects, of ``host`` (None: every host in the bucket)."""
    store = wiring.store_or_open(settings, store)
    return layout.base_records_from_listing(settings.prefix, store.list_objects(layout.base_prefix(settings.prefix,
                                                                                                   host)))


def load_metadata(store, record):
    """Fetch, check and attach a base backup's metadata."""
    if record.metadata is None:
        record.metadata = documents.decode_base_metadata(in_step("select", store.get_bytes, record.metadata_key),
                                                         record.metadata_key)
    return record.metadata


def judge(record, signing_keys):
    """The trust.Verdict on a base backup whose metadata is loaded: it must name its own place (host, name, object key,
    time) and be signed with a key held here (``signing_keys``: {id: key}, or None when none is configured)."""
    return trust.judge_base(record, signing_keys)


def find_base_backups(settings, host=None, details=False, *, store=None, context=None):
    """Base backups newest first as ``[summary, ...]`` (each ``kind: base``); ``details`` reads and judges each one's
    metadata (a refused document is listed as invalid, not a failed listing)."""
    store = wiring.store_or_open(settings, store)
    try:
        records, _orphans = list_base_backups(settings, store, host)
    except AccessDeniedError as exc:  # a host whose IAM policy does not reach base/ lists its dumps all the same
        LOG.debug("base backups not listed: %s", exc)
        return []
    if details and records:  # no base backups: no keys to read (a seed's passphrase in BACKUP_ENCRYPTION_KEY lists)
        held = None
        if keys.holds_any_key(settings):
            held = (context or keys.KeyContext(settings)).signing_keys()[2]
        for record in records:
            try:
                load_metadata(store, record)
            except IntegrityError as exc:
                record.verdict = trust.Verdict(trust.INVALID, None, exc.message)
                continue
            record.verdict = judge(record, held)
    return [record.summary() for record in records]


def select_base(settings, store, backup="latest", host=None, *, context=None, records=None):
    """The base backup ``backup`` (``latest`` or a name, or its key) of ``host`` (default this host), its metadata
    loaded and judged; NotFoundError names what the bucket holds. ``records``: the host's listing, when the caller
    has just made it (:func:`list_base_backups`' first item)."""
    host = host or settings.host
    if records is None:
        records, _orphans = list_base_backups(settings, store, host)
    wanted = (backup or "latest").strip()
    if not records:
        raise NotFoundError("no base backups of host %s in %s: take one with `quankey-backup basebackup`"
                            % (host, store.url(layout.base_prefix(settings.prefix, host))), step="select")
    if wanted == "latest":
        record = records[0]
    else:
        stem = layout.base_stem(wanted)
        found = [item for item in records if stem == item.basename]
        if not found:
            raise NotFoundError("base backup %r of host %s not found: `quankey-backup list` shows them (kind base)"
                                % (wanted, host), step="select")
        record = found[0]
    load_metadata(store, record)
    context = context or keys.KeyContext(settings)
    record.verdict = judge(record, context.signing_keys()[2])
    if record.verdict.outcome == trust.INVALID:
        trust.require(record.verdict)  # raises
    if not record.has_object:
        raise IntegrityError("base backup %s has metadata but its object %s is missing: pick another with --backup"
                             % (record.basename, store.url(record.object_key)), step="select")
    if record.object_size != record.metadata["size_bytes"]:
        raise IntegrityError("base backup %s: object is %d bytes but its metadata says %d: the object was replaced or "
                             "cut short" % (record.basename, record.object_size, record.metadata["size_bytes"]),
                             step="select")
    return record


# --------------------------------------------------------------------------- verify

def check_against_metadata(record, counts, checked, step="verify"):
    """Check a base backup's streamed tar (``counts`` of RestoreStream.run, ``checked`` of TarChecker.finish) against
    its signed metadata: its size, WAL range, timeline, label and manifest; IntegrityError names the first mismatch."""
    metadata = record.metadata
    if counts["dump_bytes"] != metadata["tar_bytes"]:
        raise IntegrityError("the base backup's tar is %d bytes but was %d when taken"
                             % (counts["dump_bytes"], metadata["tar_bytes"]), step=step)
    for field in CHECKED_FIELDS:
        if checked[field] != metadata[field]:
            raise IntegrityError("base backup %s: its tar gives %s %r but its signed metadata says %r: the object is not "
                                 "the one that was backed up" % (record.basename, field, checked[field], metadata[field]),
                                 step=step)


def run_verify_base(settings, backup="latest", host=None, *, store=None, progress=None, allow_unsigned=False):
    """Download a base backup, check its SHA-256 against the signed metadata, authenticate and decrypt it, decompress
    it and check every file of its tar against its manifest (formats/basetar.py), and the tar's WAL range, label
    and manifest against the metadata. Touches no database and no local disk."""
    progress = progress if progress is not None else Progress("verify")
    stages = Stages(progress)
    with stages("prepare"):
        store = wiring.store_or_open(settings, store)
        context = keys.KeyContext(settings)
        record = select_base(settings, store, backup, host, context=context)
        new_decryptor = decryptor_factory(context, store, record)
        trust.require(record.verdict, allow_unsigned)
    metadata = record.metadata
    with stages("download_verify", total=metadata["size_bytes"]), \
            RestoreStream(store, record, new_decryptor, progress) as stream:
        checker = basetar.TarChecker()
        counts = stream.run(checker)
        checked = in_step("verify", checker.finish)
    check_against_metadata(record, counts, checked)
    return {"kind": "base", "name": record.basename, "host": record.host, "object_key": record.object_key,
            "bucket": store.bucket, "size_bytes": counts["downloaded_bytes"], "tar_bytes": counts["dump_bytes"],
            "checksum_sha256": counts["sha256"], "checksum_ok": True, "decryption_ok": True, "manifest_ok": True,
            "files": checked["manifest"]["files"], "start_lsn": checked["start_lsn"], "stop_lsn": checked["stop_lsn"],
            "timeline": checked["timeline"], "system_identifier": metadata["system_identifier"],
            "key_id": metadata["key_id"], "encryption": metadata["encryption"],
            "signature": record.verdict.describe(), "trusted": record.verdict.trusted,
            "timestamp": metadata["timestamp"], "duration_seconds": stages.elapsed(), "stage_seconds": stages.result()}
