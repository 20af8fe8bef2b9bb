# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The replica (S3_REPLICA_BUCKET): a committed backup copied to a second bucket and verified there.

The objects go as they are (already encrypted: no plaintext on the way), data and globals first, the metadata (the
commit marker) last, so the replica never holds metadata whose objects are missing. A replica on the primary's
endpoint with the primary's credentials is copied server-side (CopyObject, objects up to 5 GiB), anything else is
streamed: ranged GETs from the primary into a multipart upload to the replica, memory bounded by the parts in flight.
Either way the data object's size and SHA-256 are checked against the signed metadata (hashed while streaming, or
read back after a server-side copy) before the replica's metadata is written.

:func:`run_replicate` (`quankey-backup replicate`) backfills: every good backup of this host's database (or of all its
databases) that the replica lacks, or holds other than the primary, is copied again with :func:`replicate`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import logging
import time

from .. import keys
from ..adapters.s3 import COPY_LIMIT, choose_part_size
from ..catalog import documents
from ..errors import AccessDeniedError, BackupError, ConfigError, ConflictError, IntegrityError, NotFoundError
from . import wiring
from .inventory import list_backups
from .prune import backup_problem

LOG = logging.getLogger("quankey_backup")
OK, FAILED = "ok", "failed"
SERVER_SIDE, STREAMED = "server-side", "streamed"
# A backup's state on the replica, as `replicate` finds and leaves it
PRESENT, COPIED, WOULD_COPY, SKIPPED = "present", "copied", "would-copy", "skipped"  # or FAILED
IDENTICAL, MISSING, DIFFERS = "identical", "missing", "differs"  # the replica's metadata of a backup
EXIT_INCOMPLETE = 1  # replicate --dry-run: the replica lacks something a run would copy


def method_for(server_side, size):
    """How an object of ``size`` bytes is copied: server-side when the replica shares the primary's endpoint and
    credentials and one CopyObject can copy it, else streamed."""
    return SERVER_SIDE if server_side and size <= COPY_LIMIT else STREAMED


def objects_of(metadata):
    """``[(key, size, sha256)]`` a backup's metadata names: its data object, then its globals object when it has one."""
    objects = [(metadata["object_key"], metadata["size_bytes"], metadata["checksum_sha256"])]
    summary = metadata.get("globals")
    if summary:
        objects.append((summary["object_key"], summary["size_bytes"], summary["checksum_sha256"]))
    return objects


def check_copy(replica, key, size, sha256, got_size, got_sha256):
    """Raise IntegrityError when a copy's size or SHA-256 is not the signed metadata's."""
    if got_size != size or got_sha256 != sha256:
        raise IntegrityError("the replica's copy %s is %d bytes with SHA-256 %s, the metadata says %d bytes with %s: "
                             "the copy is not the backup (it is left without metadata there, so it is no backup)"
                             % (replica.url(key), got_size, got_sha256, size, sha256), step="replica")


def _hash_object(store, key):
    digest = hashlib.sha256()
    size = 0
    for chunk in store.iter_object(key):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _stream(store, replica, key, size, sha256):
    """GET from the primary into a multipart upload to the replica, hashed on the way; aborted unless it matches."""
    digest = hashlib.sha256()
    with replica.open_multipart(key, choose_part_size(size)) as upload:
        for chunk in store.iter_object(key):
            digest.update(chunk)
            upload.write(chunk)
        check_copy(replica, key, size, sha256, upload.bytes_written, digest.hexdigest())  # raising aborts the upload
        upload.complete()


def _copy_object(store, replica, key, size, sha256, method):
    """One object to the replica, checked; an object already there is checked instead of copied again."""
    head = replica.head(key)
    if head is None:
        if method == STREAMED:
            _stream(store, replica, key, size, sha256)
            return
        replica.copy_from(store, key)
    check_copy(replica, key, size, sha256, *_hash_object(replica, key))


def replicate(store, replica, metadata_key, document, metadata, server_side=False):
    """Copy the committed backup whose signed metadata is ``metadata`` (``document``: its bytes as stored at
    ``metadata_key``) from ``store`` to ``replica``; returns what was done. Raises BackupError on any failure."""
    started = time.time()
    method = method_for(server_side, metadata["size_bytes"])
    for key, size, sha256 in objects_of(metadata):
        _copy_object(store, replica, key, size, sha256, method)
    try:
        replica.put_bytes(metadata_key, document, if_none_match=True)
    except ConflictError:
        if replica.get_bytes(metadata_key) != document:
            raise IntegrityError("the replica already holds other metadata at %s: it is left as it is; compare it with "
                                 "the primary's" % replica.url(metadata_key), step="replica")
    return {"status": OK, "bucket": replica.bucket, "method": method, "error": None,
            "seconds": round(time.time() - started, 3)}


def replicate_committed(settings, store, metadata_key, document, metadata, replica=None):
    """The backup workflow's replica step: None without S3_REPLICA_BUCKET, else :func:`replicate`'s answer, or on
    failure ``{"status": "failed", "error": ...}`` with a warning. Never raises: the primary's copy is committed, so
    the backup succeeded; `quankey-backup health` reports a replica missing or behind."""
    if not settings.replica_bucket and replica is None:
        return None
    bucket = replica.bucket if replica is not None else settings.replica_bucket
    try:
        replica = replica if replica is not None else wiring.open_replica(settings)
        result = replicate(store, replica, metadata_key, document, metadata, server_side=wiring.same_account(settings))
    except Exception as exc:  # pylint: disable=broad-except  # any failure of the copy: the backup stands, said loudly
        LOG.warning("backup %s is committed in s3://%s but its copy to the replica s3://%s failed: %s; health reports "
                    "it until a later backup reaches the replica", metadata.get("name"), store.bucket, bucket, exc)
        return {"status": FAILED, "bucket": bucket, "method": None, "error": str(exc), "seconds": None}
    LOG.info("backup %s copied to the replica s3://%s (%s) and verified in %.1fs", metadata.get("name"), bucket,
             result["method"], result["seconds"])
    return result


def compare(replica, metadata_key, document, metadata, verify=False):
    """How the replica holds one backup: ``(metadata, problems)``. ``metadata``: IDENTICAL (the very bytes of the
    primary's ``document``), MISSING or DIFFERS; ``problems``: ``[{"key", "problem"}]``, one per object the signed
    ``metadata`` names that the replica lacks, holds with another size, or (``verify``: downloaded and hashed) with
    another SHA-256."""
    try:
        held = replica.get_bytes(metadata_key)
    except NotFoundError:
        held = None
    state = MISSING if held is None else (IDENTICAL if bytes(held) == bytes(document) else DIFFERS)
    problems = []
    for key, size, sha256 in objects_of(metadata):
        head = replica.head(key)
        if head is None:
            problems.append({"key": key, "problem": "missing"})
        elif head["ContentLength"] != size:
            problems.append({"key": key, "problem": "%d bytes, the signed metadata says %d" % (head["ContentLength"], size)})
        elif verify:
            got_size, got = _hash_object(replica, key)
            if got_size != size or got != sha256:
                problems.append({"key": key, "problem": "SHA-256 %s, the signed metadata says %s" % (got, sha256)})
    return state, problems


def _remove_wrong(replica, metadata_key, state, problems):
    """Before a copy again: the replica's metadata of the backup first (uncommitted there, so the replica never holds
    metadata whose objects are wrong), then each object it holds wrong. Deleting needs s3:DeleteObject on the replica:
    without it, nothing is changed and the error says what to do."""
    wrong = [item["key"] for item in problems if item["problem"] != "missing"]
    if not wrong:
        return
    try:
        for key in ([metadata_key] if state == IDENTICAL else []) + wrong:
            replica.delete(key)
            LOG.warning("deleted the replica's wrong copy %s before copying it again", replica.url(key))
    except AccessDeniedError as exc:
        found = "; ".join("%s: %s" % (item["key"], item["problem"]) for item in problems)
        raise AccessDeniedError("the replica's copy is wrong (%s) and these credentials may not delete it to copy it "
                                "again (%s): have the replica's administrator (or the prune identity) delete %s and "
                                "run replicate again" % (found, exc, ", ".join(wrong)), step="replica")


def _backfill_one(store, replica, context, record, server_side, verify, dry_run):
    """One backup of the primary, compared with the replica's copy and copied where that is missing or wrong; an item
    of :func:`run_replicate`'s ``backups``. Never raises BackupError."""
    item = {"name": record.basename, "host": record.host, "database": record.db, "metadata_key": record.metadata_key,
            "status": FAILED, "problems": [], "metadata": None, "method": None, "error": None}
    try:
        document = store.get_bytes(record.metadata_key)
        try:
            record.metadata = documents.decode_metadata(document, record.metadata_key, object_key_=record.object_key)
        except IntegrityError:
            problem = "metadata unreadable"
        else:
            problem = backup_problem(store, context, record)
        if problem is not None:  # nothing to copy that a restore would take: the primary's own health says it
            item.update(status=SKIPPED, error="not a good backup on the primary (%s): not copied" % problem)
            LOG.warning("replicate: %s is skipped, not a good backup on the primary s3://%s (%s)", record.basename,
                        store.bucket, problem)
            return item
        state, problems = compare(replica, record.metadata_key, document, record.metadata, verify)
        item.update(metadata=state, problems=problems)
        if state == DIFFERS:
            raise IntegrityError("the replica holds other metadata at %s than the primary (a rekey since it was copied, "
                                 "or a write not ours): it is left as it is; compare the two, and replace the "
                                 "replica's by hand if the primary's is the one to keep"
                                 % replica.url(record.metadata_key), step="replica")
        if state == IDENTICAL and not problems:
            item["status"] = PRESENT
            return item
        if dry_run:
            item["status"] = WOULD_COPY
            return item
        _remove_wrong(replica, record.metadata_key, state, problems)
        done = replicate(store, replica, record.metadata_key, document, record.metadata, server_side=server_side)
        item.update(status=COPIED, method=done["method"], seconds=done["seconds"])
        LOG.info("replicate: %s copied to the replica s3://%s (%s) and verified in %.1fs (it was %s)", record.basename,
                 replica.bucket, done["method"], done["seconds"], _words(state, problems))
    except BackupError as exc:
        item.update(status=FAILED, error="%s: %s" % (record.basename, exc), exit_code=exc.exit_code)
        LOG.error("replicate: %s is not on the replica s3://%s as it should be: %s", record.basename, replica.bucket, exc)
    return item


def _words(state, problems):
    """What was wrong with a backup on the replica, for people."""
    said = ["metadata %s" % state] if state != IDENTICAL else []
    return ", ".join(said + ["%s %s" % (item["key"].rsplit("/", 1)[-1], item["problem"]) for item in problems])


def run_replicate(settings, all_databases=False, verify=False, dry_run=False, *, store=None, replica=None):
    """Backfill the replica (S3_REPLICA_BUCKET): each good backup of this host's database on the primary (with
    ``all_databases``, of every database of this host) that the replica lacks - its metadata not the primary's very
    bytes, a data or globals object missing or of another size, or with ``verify`` (each object downloaded) another
    SHA-256 than the signed metadata's - is copied by :func:`replicate` (data and globals first, checked, metadata
    last). Backups that are not good on the primary (prune's rule) are skipped and said; metadata on the replica
    that differs from the primary's is never overwritten (reported). ``dry_run``: compare only.

    Returns ``{"backups": [...], "present", "copied", "would_copy", "failed", "skipped", "complete", "exit_code",
    ...}``: exit_code 0 when the replica holds every good backup, EXIT_INCOMPLETE with ``dry_run`` when
    a run would copy some, else the first failure's code."""
    if not settings.replica_bucket and replica is None:
        raise ConfigError("replicate copies backups to the replica bucket and none is set: set %s (and, for another "
                          "endpoint or account, S3_REPLICA_ENDPOINT_URL, S3_REPLICA_REGION, S3_REPLICA_ACCESS_KEY_ID, "
                          "S3_REPLICA_SECRET_ACCESS_KEY; docs/CLI.md, Replica)" % settings.label("replica_bucket"))
    settings.require("db_name")
    context = keys.KeyContext(settings)
    if not context.signing_keys()[2]:
        raise ConfigError("replicate copies the backups whose metadata signature verifies here, and no key to verify it "
                          "with is set: set %s (or %s), as where the backups are made"
                          % (settings.label("signing_key"), settings.label("encryption_key")))
    store = wiring.store_or_open(settings, store)
    replica = replica if replica is not None else wiring.open_replica(settings)
    server_side = bool(settings.replica_bucket) and wiring.same_account(settings)
    if all_databases:
        records = list_backups(settings, store, host=settings.host, everything=True, seed=False)[0]
    else:
        records = list_backups(settings, store, seed=False)[0]
    results = [_backfill_one(store, replica, context, record, server_side, verify, dry_run) for record in records]
    counts = dict((status, sum(1 for item in results if item["status"] == status))
                  for status in (PRESENT, COPIED, WOULD_COPY, FAILED, SKIPPED))
    failed = [item for item in results if item["status"] == FAILED]
    if failed:
        exit_code = failed[0]["exit_code"]
    else:
        exit_code = EXIT_INCOMPLETE if counts[WOULD_COPY] else 0
    return {"bucket": store.bucket, "replica_bucket": replica.bucket, "host": settings.host,
            "database": None if all_databases else settings.db_name, "verify": verify, "dry_run": dry_run,
            "backups": results, "present": counts[PRESENT], "copied": counts[COPIED], "would_copy": counts[WOULD_COPY],
            "failed": counts[FAILED], "skipped": counts[SKIPPED], "complete": exit_code == 0,
            "changed": bool(counts[COPIED]), "exit_code": exit_code}
