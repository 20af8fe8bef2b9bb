# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rekey: re-wrap backups' data keys to the active key (or seal them to the recipients) and re-sign their
metadata, rewriting only the metadata objects; each backup checked first and left as it was if it fails
(docs/KEYS.md)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from .. import keys
from ..catalog import documents, trust
from ..errors import BackupError, ConfigError, IntegrityError
from ..formats import crypto, modes, signing
from . import wiring
from .inventory import list_backups, load_metadata

LOG = logging.getLogger("quankey_backup")

# Rekey outcomes of one backup.
REKEYED, WOULD_REKEY, UNCHANGED, FAILED = "rekeyed", "would rekey", "unchanged", "failed"


def rekey_metadata(record, context):
    """Re-wrap one backup's data key for the configured mode (active key, or recipients) and re-sign its metadata.

    The new envelope is format version 2, bound to the backup's place (host, database, name); a
    version-1 envelope is moved to version 2 even when its key is already the target.
    Returns ``(new metadata, data key, old ids as text)``, or ``(None, None, old ids)`` when nothing would change.
    Raises IntegrityError (WrongKeyError, TamperedError) when the keys held cannot open it.
    """
    metadata, basename = record.metadata, record.basename
    mode = modes.of(metadata, basename)
    refusal = mode.why_not_rekeyable(context)
    if refusal:
        raise IntegrityError("backup %s is %s: %s" % (basename, mode.name, refusal))
    old_ids = ", ".join(keys.wrapping_ids(metadata))
    if _on_target(metadata, context):
        return None, None, old_ids  # nothing to open: a recipients-only host can tell too
    data_key = context.open(record)
    target = context.mode()
    envelope, kid, ids = target.reseal(context, data_key, (record.host, record.db, basename))
    updated = dict(metadata)
    updated.update(encryption=target.name, envelope=envelope, key_id=kid,
                   metadata_version=documents.version_for(metadata.get("row_counts")))
    updated.pop("recipient_ids", None)
    if ids is not None:
        updated["recipient_ids"] = ids
    return context.sign(updated), data_key, old_ids


def _on_target(metadata, context):
    """Whether a backup is already wrapped (format version 2) for the configured mode and signed by the active signing key."""
    mode = context.mode()
    wrapped = (sorted(keys.wrapping_ids(metadata)) == mode.target_ids(context)
               and metadata.get("key_id") == mode.active_key_id(context))
    return (wrapped and keys.envelope_version(metadata) == 2 and metadata.get("encryption") == mode.name
            and signing.signature_key_id(metadata) == context.signer()[0])


def run_rekey(settings, host=None, db=None, everything=False, dry_run=False, store=None):
    """Re-wrap the data keys of backups not wrapped for the configured mode; only metadata objects are rewritten.

    The target is the active key (aes-256-gcm) or the recipients (hybrid-pq); the
    metadata is re-signed with the active signing key. Scope as ``quankey-backup
    list``: ``host`` (default this host) and ``db`` (default DB_NAME), or with
    ``everything`` the whole bucket (narrowed to ``db`` when given). Each backup is
    checked before its metadata is rewritten: its signature must verify, the keys
    held must open its data key, and that key must match the data object's key
    commitment (a ranged read of its header). A backup that fails is reported and
    the others go on (fail closed per backup). Returns a JSON-ready summary. ``store`` is the S3 adapter
    (default: the settings', workflows/wiring.py).
    """
    context = keys.KeyContext(settings)
    if not context.mode().rekeyable:
        raise ConfigError("%s is %s: rekey re-wraps data keys, which %s backups do not have; set it to %s"
                          % (settings.label("encryption"), settings.encryption, settings.encryption,
                             " or ".join(modes.REKEYABLE)))
    context.require_sealing()
    target = context.active_key_id()
    store = wiring.store_or_open(settings, store)
    records, _orphans = list_backups(settings, store, host=host, db=db, everything=everything, seed=False)
    results = []
    for record in records:
        results.append(_rekey_one(store, record, context, target, dry_run))
    counts = dict((outcome, sum(1 for item in results if item["status"] == outcome))
                  for outcome in (REKEYED, WOULD_REKEY, UNCHANGED, FAILED))
    failed = [item for item in results if item["status"] == FAILED]
    return {
        "active_key_id": target, "encryption": settings.encryption, "keyring_key_ids": context.known_ids(),
        "signing_key_id": context.signer()[0], "dry_run": dry_run, "bucket": store.bucket,
        "backups": results, "rekeyed": counts[REKEYED], "would_rekey": counts[WOULD_REKEY],
        "unchanged": counts[UNCHANGED], "failed": counts[FAILED],
        "changed": bool(counts[REKEYED] or counts[WOULD_REKEY]),
        "exit_code": failed[0]["exit_code"] if failed else 0,
    }


def _rekey_one(store, record, context, target, dry_run):
    """Rekey one backup (or say what would change); never raises BackupError."""
    item = {"name": record.basename, "host": record.host, "database": record.db, "metadata_key": record.metadata_key,
            "from_key_id": None, "to_key_id": target, "status": FAILED}
    try:
        metadata = load_metadata(store, record)
        item["from_key_id"] = keys.wrapping_key_id(metadata)
        verdict = context.verdict(record)
        if verdict.outcome == trust.INVALID:
            trust.require(verdict)  # raises: a document that is not this backup's is never rewritten
        updated, data_key, old_ids = rekey_metadata(record, context)
        trust.require(verdict)  # never re-sign what could not be verified (unsigned, or signed with a key not held)
        if updated is None:
            item["status"] = UNCHANGED
            return item
        if not record.has_object:
            raise IntegrityError("backup %s has metadata but its object %s is missing: it cannot be restored, so it is "
                                 "not rekeyed (prune removes it once past retention)" % (record.basename, record.object_key))
        crypto.check_key_commitment(store.get_range(record.object_key, 0, crypto.HEADER_SIZE), data_key, record.basename)
        if dry_run:
            item["status"] = WOULD_REKEY
            return item
        # only if unchanged since read: a concurrent rekey, prune or backup is never overwritten silently
        store.put_bytes(record.metadata_key, documents.encode_metadata(updated), if_match=record.metadata_etag)
        item["status"] = REKEYED
        LOG.info("rekeyed %s: data key re-wrapped from %s to %s and metadata re-signed (metadata %s rewritten, "
                 "data object untouched)", record.basename, old_ids, updated["key_id"], record.metadata_key)
    except BackupError as exc:
        item["status"] = FAILED
        item["error"] = "%s: %s" % (record.basename, exc)
        item["exit_code"] = exc.exit_code
        LOG.error("rekey of %s failed (left as it was): %s", record.basename, exc)
    return item
