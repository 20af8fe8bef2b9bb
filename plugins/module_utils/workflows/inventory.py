# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is in the bucket for a host and database: listing (with the seed's flat layout), metadata loading, the
selection a restore or verify uses, and the read-only listing the modules and ``list`` show."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from .. import keys
from ..catalog import documents, layout, trust
from ..errors import AccessDeniedError, BackupError, IntegrityError, NotFoundError, RefusedError, StorageError
from ..formats import modes
from . import leftovers, wiring

LOG = logging.getLogger("quankey_backup")


def list_backups(settings, store=None, host=None, db=None, everything=False, seed=True):
    """Backups newest first (and orphan objects) for a host and database; ``everything`` lists the whole bucket.

    With ``seed``, backups of the seed's flat layout are included in every host's
    scope when their metadata names the database (they predate hosts); a host whose
    IAM policy does not allow listing that layout simply does not see them.
    """
    store = wiring.store_or_open(settings, store)
    if not everything:
        host = host or settings.host
        db = db or settings.db_name
    meta = list(store.list_objects(layout.metadata_prefix(settings.prefix, host, db if host else None)))
    objs = list(store.list_objects(layout.object_prefix(settings.prefix, host, db if host else None)))
    records, orphans = layout.records_from_listing(settings.prefix, meta, objs)
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


def versions_by_key(store, prefix):
    """``{key: [version or delete marker, newest first]}`` under ``prefix`` (store.list_versions' dicts); an
    AccessDeniedError names the permission it needs."""
    found = {}
    try:
        for item in store.list_versions(prefix):
            found.setdefault(item["key"], []).append(item)
    except AccessDeniedError as exc:
        raise AccessDeniedError("%s; listing deleted backups reads the bucket's versions: let these credentials "
                                "s3:ListBucketVersions on %s" % (exc.message, prefix), step="list")
    for entries in found.values():
        entries.sort(key=lambda item: (item["latest"], item["last_modified"]), reverse=True)
    return found


def deletion_of(record, versions):
    """How a backup is deleted in a versioned bucket: None when no delete marker hides any of its objects, else
    ``{"at": the newest marker's time (UTC text), "objects": [keys hidden by a delete marker]}``."""
    hidden, times = [], []
    for key in (record.metadata_key, record.object_key, layout.globals_key(record.object_key)):
        entries = versions.get(key) or []
        if entries and entries[0]["deleted"]:
            hidden.append(key)
            times.append(entries[0]["last_modified"])
    if not hidden:
        return None
    return {"at": max(times).strftime("%Y-%m-%dT%H:%M:%SZ"), "objects": hidden}


def with_deleted(settings, store, host=None, db=None):
    """This layout's backups (not the seed's) newest first, those hidden by delete markers included, each with
    ``record.deleted`` (:func:`deletion_of`), from the bucket's versions; and the versions by key."""
    versions = versions_by_key(store, layout.metadata_prefix(settings.prefix, host, db if host else None))
    versions.update(versions_by_key(store, layout.object_prefix(settings.prefix, host, db if host else None)))
    listing = {"meta": [], "objs": []}
    for key, entries in versions.items():
        real = [item for item in entries if not item["deleted"]]
        if real:  # the newest version that is no delete marker: what undelete brings back
            place = "meta" if key.startswith(settings.prefix + "metadata/") else "objs"
            listing[place].append({"key": key, "size": real[0]["size"], "last_modified": real[0]["last_modified"]})
    records, _orphans = layout.records_from_listing(settings.prefix, listing["meta"], listing["objs"])
    records = [record for record in records if not record.seed and (not db or record.db == db)]
    for record in records:
        record.deleted = deletion_of(record, versions)
    return records, versions


def backup_stem(backup):
    """A backup's name from what a user gave: the name, or its data object's or metadata's key."""
    stem = (backup or "").strip().rsplit("/", 1)[-1]
    for suffix in (layout.OBJECT_SUFFIX, layout.METADATA_SUFFIX):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    return stem


def deleted_refusal(settings, store, backup, host=None, db=None):
    """When ``backup`` (a name) is a backup that delete markers hide, the RefusedError that says `undelete` brings it
    back; else None (also when these credentials may not list versions)."""
    stem = backup_stem(backup)
    if stem == "latest" or not layout.is_basename(stem):
        return None
    host, db = host or settings.host, db or settings.db_name
    try:
        versions = versions_by_key(store, layout.metadata_prefix(settings.prefix, host, db) + stem)
        versions.update(versions_by_key(store, layout.object_prefix(settings.prefix, host, db) + stem))
    except BackupError as exc:
        LOG.debug("versions of %s not listed: %s", stem, exc)
        return None
    record = layout.BackupRecord(host, db, stem, layout.metadata_key(settings.prefix, host, db, stem),
                                 layout.object_key(settings.prefix, host, db, stem))
    deleted = deletion_of(record, versions)
    if deleted is None:
        return None
    return RefusedError("backup %s was deleted (a delete marker hides %s since %s) but this bucket keeps versions: bring "
                        "it back with `quankey-backup undelete %s%s`, then restore it"
                        % (stem, ", ".join(deleted["objects"]), deleted["at"], stem,
                           "" if host == settings.host and db == settings.db_name else " --host %s --db %s" % (host, db)),
                        step="select")


def _seed_records(settings, store, denied_ok=True):
    """Records of the seed's flat layout (directly under metadata/ and backups/postgresql/).

    [] when these credentials may not list it (a least-privilege host), unless ``denied_ok`` is false:
    then the AccessDeniedError says which IAM statement adopting the seed's backups needs.
    """
    try:
        meta = list(store.list_objects(layout.metadata_prefix(settings.prefix), delimiter="/"))
        if not meta:
            return []
        objs = list(store.list_objects(layout.object_prefix(settings.prefix), delimiter="/"))
    except AccessDeniedError as exc:
        if not denied_ok:
            raise AccessDeniedError("%s; the seed's backups lie directly under %smetadata/ and %sbackups/postgresql/: "
                                    "let these credentials list and read them (s3:ListBucket with prefixes metadata/ "
                                    "and backups/postgresql/, s3:GetObject on their objects; docs/MIGRATION.md)"
                                    % (exc.message, settings.prefix, settings.prefix), step="list")
        LOG.debug("backups of the seed's layout not listed: %s", exc)
        return []
    records, _orphans = layout.records_from_listing(settings.prefix, meta, objs)
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
        record.metadata = documents.decode_metadata(data, record.metadata_key, seed=record.seed,
                                                    object_key_=record.object_key)
        record.metadata_etag = etag
    return record.metadata


def select(settings, store, backup="latest", before=None, host=None, db=None, *, context=None, allow_seed=None):
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
        if layout.is_base_basename(backup):
            raise RefusedError("%s is a physical base backup (quankey-backup basebackup), not a dump: it is not restored "
                               "into a database, drilled or pruned as one. Check it with `quankey-backup verify "
                               "--backup %s`; restore a dump by its name (`quankey-backup list`, kind dump)"
                               % (layout.base_stem(backup), layout.base_stem(backup)), step="select")
        _refused_seed_meta(settings, store, backup)
        refusal = deleted_refusal(settings, store, backup, host, settings_db)
        if refusal is not None:
            raise refusal
        raise
    load_metadata(store, record)
    context = context or keys.KeyContext(settings)
    record.verdict = context.verdict(record)
    if record.verdict.outcome == trust.INVALID:
        trust.require(record.verdict)  # raises
    if not record.has_object:
        refusal = deleted_refusal(settings, store, record.basename, record.host, record.db)
        if refusal is not None:
            raise refusal
        raise IntegrityError("backup %s has metadata but its object %s is missing: pick an older backup with %s"
                             % (record.basename, store.url(record.object_key), settings.flag("backup")), step="select")
    if record.object_size != record.metadata["size_bytes"]:
        raise IntegrityError("backup %s: object is %d bytes but its metadata says %d: the object was replaced or cut short"
                             % (record.basename, record.object_size, record.metadata["size_bytes"]), step="select")
    return record


def select_with_replica(settings, store, backup="latest", before=None, host=None, db=None, *, context=None,
                        allow_seed=None, choose=None):
    """:func:`select` on ``store``; when the primary is out of reach (StorageError once its retry window is spent) or
    the backup is not found there (NotFoundError), and a replica is set (S3_REPLICA_BUCKET), the same selection on the
    replica, with a warning. Returns ``(store, record, fallback)``: the store the backup is read from, the record, and
    None or ``{"bucket", "reason"}`` when it is the replica's. The replica's metadata is judged as the primary's (its
    signature, naming and place): trust does not depend on where the bytes come from. ``choose``: the selection
    (default :func:`select`)."""
    choose = choose or select
    try:
        return store, choose(settings, store, backup, before, host, db, context=context, allow_seed=allow_seed), None
    except (StorageError, NotFoundError) as exc:
        if not settings.replica_bucket:
            raise
        reason = str(exc)
    replica = wiring.open_replica(settings)
    LOG.warning("THE PRIMARY BUCKET s3://%s FAILED (%s): reading the backup from the replica s3://%s instead",
                store.bucket, reason, replica.bucket)
    try:
        record = choose(settings, replica, backup, before, host, db, context=context, allow_seed=allow_seed)
    except BackupError as exc:
        exc.message = "%s (the primary failed first: %s)" % (exc.message, reason)
        raise
    LOG.warning("backup %s is read from the replica s3://%s (the primary s3://%s failed)", record.basename,
                replica.bucket, store.bucket)
    return replica, record, {"bucket": replica.bucket, "reason": reason}


def _refused_seed_meta(settings, store, backup):
    """When a backup asked for by name is a seed backup whose .meta was refused (so it was not listed), say why."""
    stem = backup_stem(backup)
    if stem == "latest" or not layout.is_basename(stem):
        return
    key = layout.metadata_prefix(settings.prefix) + stem + layout.METADATA_SUFFIX
    try:
        data = store.get_bytes(key)
    except NotFoundError:
        return
    try:
        documents.decode_metadata(data, key, seed=True, object_key_=layout.seed_object_key(settings.prefix, stem))
    except IntegrityError as exc:
        exc.step = "select"
        raise


def _choose(records, backup, before, allow_seed):
    """layout.select_backup, passing over the seed's backups unless they are allowed (and saying so when it matters)."""
    if allow_seed:
        return layout.select_backup(records, backup, before)
    ours = [record for record in records if not record.seed]
    seed = [record for record in records if record.seed]
    try:
        record = layout.select_backup(ours, backup, before)
    except NotFoundError:
        try:
            wanted = layout.select_backup(seed, backup, before) if seed else None
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


def find_backups(settings, host=None, db=None, since=None, limit=0, details=False, *, store=None, context=None,
                 with_leftovers=False, pg=None, include_deleted=False):
    """Backups newest first as ``{"backups": [summary, ...], "orphans": [key, ...]}``.

    Without ``host`` the whole bucket is listed (narrowed to ``db`` when given);
    with it, that host's backups of ``db`` (default ``settings.db_name``).
    ``with_leftovers`` adds what interrupted runs left behind (leftovers.find) for this
    host's database. ``since`` (an aware datetime) keeps backups taken at or after it, ``limit``
    (> 0) the newest that many, and ``details`` reads each kept backup's
    metadata. Listings are paginated, so any number of objects works. ``store`` and ``pg`` are the adapters
    (default: the settings', workflows/wiring.py). ``include_deleted`` (a versioned bucket) also lists the backups
    delete markers hide, each summary then saying ``deleted``: None, or when and which objects (:func:`deletion_of`).
    """
    store = wiring.store_or_open(settings, store)
    records, orphans = list_backups(settings, store=store, host=host, db=db, everything=not host)
    if include_deleted:
        ours, _versions = with_deleted(settings, store, host, db)
        records = [record for record in records if record.seed] + ours
        records.sort(key=lambda record: (record.timestamp, record.basename), reverse=True)
    if since is not None:
        records = [record for record in records if record.timestamp >= since]
    if limit and limit > 0:
        records = records[:limit]
    if details:
        checker = _verdicts(settings, context)
        for record in records:
            if getattr(record, "deleted", None) and record.metadata_key in record.deleted["objects"]:
                continue  # its metadata is hidden: `undelete` first, then it is read and judged
            try:
                load_metadata(store, record)
            except IntegrityError as exc:  # a refused document is listed as such, not a failed listing
                record.verdict = trust.Verdict(trust.INVALID, None, exc.message)
                continue
            record.verdict = checker(record)
            if record.seed and record.has_object and keys.holds_any_key(settings):
                _find_kdf(settings, store, record, context)
    found = {"backups": [_summary(record, include_deleted) for record in records],
             "orphans": [item["key"] for item in orphans]}
    if with_leftovers:  # this host's database: open uploads and, when the server answers, staging databases
        found["leftovers"] = leftovers.find(settings, store, orphans, pg=wiring.postgres_or_none(settings, pg))
    return found


def _summary(record, include_deleted):
    summary = record.summary()
    if include_deleted:
        summary["deleted"] = getattr(record, "deleted", None)
    return summary


def _find_kdf(settings, store, record, context=None):
    """For a seed backup: which key derivation and passphrase open it (``record.kdf``), or why none does."""
    try:
        modes.of(record.metadata, record.basename).probe(context or keys.KeyContext(settings), store, record)
    except BackupError as exc:
        record.kdf = "none found: %s" % exc.message


def _verdicts(settings, context=None):
    """A function giving each record's trust verdict, with the keys held here (none held: 'not checked')."""
    if not keys.holds_any_key(settings):
        return lambda record: trust.judge(record, None)
    context = context or keys.KeyContext(settings)
    return context.verdict
