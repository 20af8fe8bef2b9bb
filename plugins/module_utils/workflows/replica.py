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
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import logging
import time

from ..adapters.s3 import COPY_LIMIT, choose_part_size
from ..errors import ConflictError, IntegrityError
from . import wiring

LOG = logging.getLogger("quankey_backup")
OK, FAILED = "ok", "failed"
SERVER_SIDE, STREAMED = "server-side", "streamed"


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
