# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention: a backup is deleted unless a rule keeps it (catalog/retention.py): its age (BACKUP_RETENTION_DAYS), the
newest BACKUP_MIN_KEEP good ones, and the calendar rules (BACKUP_KEEP_DAILY, _WEEKLY, _MONTHLY, _YEARLY: the newest
good backup of each of the N most recent days, ISO weeks, months, years); and what interrupted runs left behind is
swept once stale and unused (leftovers.py). A backup whose objects are locked (S3 Object Lock,
BACKUP_OBJECT_LOCK_MODE) is not deleted until its lock ends: kept, 'locked until <UTC time>'.

A good backup has its data object, of the size its metadata records, and metadata whose signature verifies here
and that names the backup stored at its place (catalog/trust.py): a document planted in the bucket, forged or
unsigned, never counts towards BACKUP_MIN_KEEP or a calendar rule, so it cannot push a real backup out.

Physical backups (issue 18): the host's base backups (``<prefix>base/<host>/``) are one more series under the same
rules, judged the same way (their object there, of the recorded size, their metadata signed here and naming their
place). Then its archived WAL (``<prefix>wal/<host>/``): a WAL file is deleted when no kept base backup can need it,
before the start (``start_wal_file``) of every kept base backup, on its timeline or an earlier one
(catalog/retention.py's ``wal_plan``); timeline history files never. Without a trusted kept base backup no WAL is
deleted at all (``wal_note`` says so). A locked WAL object is kept, as a locked backup is."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from .. import keys
from ..config import BACKUP_KINDS
from ..catalog import documents, layout, retention, trust, walnames
from ..errors import AccessDeniedError, BackupError, ConfigError, IntegrityError
from . import leftovers, wiring
from .inventory import list_backups, load_metadata

LOG = logging.getLogger("quankey_backup")
KEEP_TAG = "quankey-keep"  # tag of a data object a monthly or yearly rule keeps: monthly, yearly


def policy_of(settings):
    """The settings' retention (catalog/retention.py's Policy)."""
    return retention.Policy(settings.retention_days, settings.min_keep, daily=settings.keep_daily,
                            weekly=settings.keep_weekly, monthly=settings.keep_monthly, yearly=settings.keep_yearly)


def run_prune(settings, dry_run=False, store=None, now=None, *, pg=None, replica=None, replica_only=False, kind="both"):
    """Delete the backups no retention rule keeps (catalog/retention.py: age, the newest BACKUP_MIN_KEEP good ones, the
    calendar rules), and what interrupted runs left behind once stale and unused (leftovers.py): orphan objects, open
    uploads, staging databases, restore logins.

    The result names every backup's fate (``backups``: keep or delete, the rules that keep it, whether it is good)
    as well as the names ``kept`` and ``deleted``. ``store`` and ``pg`` are the adapters (default: the settings',
    workflows/wiring.py; no PostgreSQL client when none can be made here: its leftovers are then not swept).

    The replica (S3_REPLICA_BUCKET; ``replica``: its store, default the settings'): with ``replica_only`` only the
    replica is pruned (`prune --replica`); else, with S3_REPLICA_PRUNE, the replica too, after the primary, its result
    under ``replica`` (``{"error", "exit_code"}`` when that failed: the primary's prune stands). The replica is pruned
    by the same rules computed on its own listing and its own objects, never by what the primary deleted: a primary
    emptied by whoever took it over empties nothing on the replica.

    ``kind`` (one of :data:`config.BACKUP_KINDS`, the kinds a host backs up): ``logical`` prunes only the dumps (and
    their leftovers), ``physical`` only the host's base backups and archived WAL (:func:`prune_physical`; no
    database, no replica: it holds dumps only; ``kept`` and ``deleted`` then name base backups), ``both`` everything.
    The pg_backup role's base backup runner prunes ``physical`` after each base backup; its dumps' runner ``logical``
    when base backups are scheduled, else ``both``."""
    if kind not in BACKUP_KINDS:
        raise ConfigError("prune --kind %r is not a kind: choose one of %s" % (kind, ", ".join(BACKUP_KINDS)))
    if replica_only and kind == "physical":
        raise ConfigError("prune --replica --kind physical: the replica holds dumps only; prune the replica with "
                          "--kind logical or without --kind")
    context = _prune_context(settings, database=kind != "physical")
    now = now or layout.utcnow()
    if replica_only:
        return prune_store(settings, _replica_store(settings, replica), context, now, dry_run, kind="logical")
    store = wiring.store_or_open(settings, store)
    if kind == "physical":
        return prune_physical_only(settings, store, context, now, dry_run)
    result = prune_store(settings, store, context, now, dry_run, pg=wiring.postgres_or_none(settings, pg), kind=kind)
    result["replica"] = None
    if settings.replica_bucket and settings.replica_prune:
        try:
            result["replica"] = prune_store(settings, _replica_store(settings, replica), context, now, dry_run,
                                            kind="logical")
        except BackupError as exc:
            LOG.error("prune of the replica s3://%s failed (the primary's prune is done): %s", settings.replica_bucket,
                      exc)
            result["replica"] = {"bucket": settings.replica_bucket, "error": str(exc), "exit_code": exc.exit_code}
    return result


def _prune_context(settings, database=True):
    """The keys prune judges backups with; ConfigError without a key that verifies metadata signatures (or, with
    ``database``, without DB_NAME)."""
    if database:
        settings.require("db_name")
    context = keys.KeyContext(settings)
    if not context.signing_keys()[2]:
        raise ConfigError("prune keeps the newest %s backups whose metadata signature verifies here, and no key to "
                          "verify it with is set: set %s (or %s), as where the backups are made"
                          % (settings.label("min_keep"), settings.label("signing_key"), settings.label("encryption_key")))
    return context


def _replica_store(settings, replica=None):
    """The replica's store (``replica`` when given); ConfigError without S3_REPLICA_BUCKET."""
    if replica is not None:
        return replica
    if not settings.replica_bucket:
        raise ConfigError("prune --replica prunes the replica bucket and none is set: set %s (docs/CLI.md, Replica)"
                          % settings.label("replica_bucket"))
    return wiring.open_replica(settings)


def backup_problem(store, context, record):
    """None when the backup at ``record`` in ``store`` is good (its data object there, of the size its metadata
    records, and metadata whose signature verifies here and that names the backup at its place), else why not, in a
    few words. Loads the record's metadata (unless loaded) and judges it."""
    if not record.has_object:
        return "no data object"
    try:
        metadata = load_metadata(store, record)
    except IntegrityError:
        return "metadata unreadable"
    if metadata["size_bytes"] != record.object_size:
        return "data object is %d bytes, its metadata says %s" % (record.object_size, metadata["size_bytes"])
    record.verdict = context.verdict(record)
    return None if record.verdict.trusted else "metadata signature: %s" % record.verdict.describe()


def prune_store(settings, store, context, now, dry_run=False, pg=None, kind="both"):
    """:func:`run_prune` on one bucket (the primary or the replica): the retention rules on ``store``'s own listing
    of this host and database, the backups to delete deleted (metadata first), keepers tagged, leftovers swept
    (PostgreSQL's only with ``pg``); then, unless ``kind`` is ``logical``, the host's base backups and archived WAL
    (:func:`prune_physical`). The result says which bucket (``bucket``)."""
    policy = policy_of(settings)
    records, orphans = list_backups(settings, store, seed=False)  # the seed's layout is not ours to prune
    fates = retention.plan(records, now, policy, lambda record: backup_problem(store, context, record),
                           locked=lambda record: locked_until(store, record))
    delete = [fate for fate in fates if not fate.keep]
    found = leftovers.find(settings, store, orphans, now, pg=pg)
    if not dry_run:
        for fate in delete:
            record = fate.record
            store.delete(record.metadata_key)  # uncommit first: a backup without metadata does not exist
            if record.has_object:
                store.delete(record.object_key)
            if not record.seed:
                store.delete(layout.globals_key(record.object_key))  # its globals, if it has them (none: a no-op)
            LOG.info("pruned %s (%s) in s3://%s: %s", record.basename, record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     store.bucket, fate.reason(policy))
    tagged = tag_keepers(store, fates, dry_run)
    swept = leftovers.sweep(store, pg, leftovers.stale(found), dry_run)
    result = {"kept": [fate.record.basename for fate in fates if fate.keep],
              "deleted": [fate.record.basename for fate in delete], "backups": [fate.summary(policy) for fate in fates],
              "orphans_deleted": swept["orphans"], "uploads_aborted": swept["uploads"],
              "staging_databases_dropped": swept["staging_databases"], "restore_logins_dropped": swept["restore_logins"],
              "leftovers": found, "dry_run": dry_run, "tagged": tagged, "bucket": store.bucket}
    result.update(policy.describe(), kind=kind)
    if kind == "logical":
        return result
    physical = prune_physical(settings, store, context, now, policy, dry_run)
    result["orphans_deleted"] += physical.pop("base_orphans_deleted")  # a killed basebackup's, as a dump's are
    result["uploads_aborted"] += physical.pop("base_uploads_aborted")
    result.update(physical)
    return result


def prune_physical_only(settings, store, context, now, dry_run=False):
    """`prune --kind physical`: the host's base backups and archived WAL alone (:func:`prune_physical`), with prune's
    result keys; ``kept`` and ``deleted`` name the base backups, ``backups`` is empty (no dump is judged)."""
    policy = policy_of(settings)
    physical = prune_physical(settings, store, context, now, policy, dry_run)
    result = {"kept": list(physical["base_kept"]), "deleted": list(physical["base_deleted"]), "backups": [],
              "orphans_deleted": physical.pop("base_orphans_deleted"),
              "uploads_aborted": physical.pop("base_uploads_aborted"), "staging_databases_dropped": [],
              "restore_logins_dropped": [], "leftovers": None, "dry_run": dry_run, "tagged": [], "bucket": store.bucket,
              "replica": None, "kind": "physical"}
    result.update(policy.describe())
    result.update(physical)
    return result


def base_problem(store, context, record):
    """:func:`backup_problem` for a physical base backup (its metadata as documents.py decodes it, trust.judge_base's
    verdict)."""
    if not record.has_object:
        return "no data object"
    try:
        if record.metadata is None:
            record.metadata = documents.decode_base_metadata(store.get_bytes(record.metadata_key), record.metadata_key)
    except IntegrityError:
        return "metadata unreadable"
    metadata = record.metadata
    if metadata["size_bytes"] != record.object_size:
        return "data object is %d bytes, its metadata says %s" % (record.object_size, metadata["size_bytes"])
    record.verdict = trust.judge_base(record, context.signing_keys()[2])
    return None if record.verdict.trusted else "metadata signature: %s" % record.verdict.describe()


def _base_summary(fate, policy):
    summary = fate.summary(policy)
    summary.update(kind="base", database=None,
                   start_wal_file=(fate.record.metadata or {}).get("start_wal_file"),
                   timeline=(fate.record.metadata or {}).get("timeline"))
    return summary


def base_leftovers(settings, store, orphans, now):
    """What interrupted base backups of this host left, as leftovers.find's dict (orphans: base data objects without
    metadata; uploads: open multipart uploads under ``base/<host>/``). An upload is as young as the time in its
    base backup's name, when that is younger than what the store says (a store may misreport an upload's start)."""
    def hours(when):
        return round((now - when).total_seconds() / 3600.0, 2)

    found_orphans = [{"key": item["key"], "size_bytes": item["size"], "age_hours": hours(item["last_modified"])}
                     for item in orphans]
    uploads = []
    for upload in store.list_multipart_uploads(layout.base_prefix(settings.prefix, settings.host)):
        parts = list(store.list_parts(upload["key"], upload["upload_id"]))
        age = leftovers.upload_age(upload, parts, now)
        stem = layout.base_stem(upload["key"])
        if layout.is_base_basename(stem):
            age = min(age, hours(layout.parse_timestamp(stem.rsplit("_base_", 1)[1])))
        uploads.append({"key": upload["key"], "upload_id": upload["upload_id"],
                        "size_bytes": sum(part["size"] for part in parts), "parts": len(parts), "age_hours": age})
    return {"orphans": found_orphans, "uploads": uploads, "staging_databases": [], "restore_logins": []}


def prune_physical(settings, store, context, now, policy, dry_run=False):
    """The host's physical base backups under the retention ``policy`` (one series), then its archived WAL that no
    kept base backup needs (catalog/retention.py's ``wal_plan``); the part of prune's result about them:
    ``base_kept``, ``base_deleted`` (names), ``base_backups`` (each one's fate), ``wal_deleted`` (how many WAL files
    were deleted, or would be with ``dry_run``), ``wal_kept``, ``wal_locked`` (kept because still locked),
    ``wal_kept_from`` (no WAL file at or after it is deleted: the earliest start of a kept base backup) and
    ``wal_note`` (why no WAL is deleted, or None); and what interrupted base backups left, once stale
    (leftovers.py's STALE_HOURS): ``base_orphans_deleted`` (data objects without metadata) and ``base_uploads_aborted``
    (open multipart uploads). A host whose credentials may not list ``base/`` or ``wal/`` is left alone (``wal_note``
    says so)."""
    result = {"base_kept": [], "base_deleted": [], "base_backups": [], "wal_deleted": 0, "wal_kept": 0,
              "wal_locked": 0, "wal_kept_from": None, "wal_note": None, "base_orphans_deleted": [],
              "base_uploads_aborted": []}
    host = settings.host
    try:
        records, orphans = layout.base_records_from_listing(settings.prefix, store.list_objects(
            layout.base_prefix(settings.prefix, host)))
        listing = list(store.list_objects(layout.wal_prefix(settings.prefix, host)))
        found = base_leftovers(settings, store, orphans, now)
    except AccessDeniedError as exc:  # a host whose IAM policy does not reach base/ or wal/ (it has no physical kind)
        LOG.debug("base backups and WAL not pruned in s3://%s: %s", store.bucket, exc)
        result["wal_note"] = "base backups and WAL not listed here: %s" % exc
        return result
    swept = leftovers.sweep(store, None, leftovers.stale(found), dry_run)
    result.update(base_orphans_deleted=swept["orphans"], base_uploads_aborted=swept["uploads"])
    fates = retention.plan(records, now, policy, lambda record: base_problem(store, context, record),
                           locked=lambda record: locked_until(store, record))
    for fate in fates:
        if fate.keep and fate.good is None:  # kept by age alone: WAL retention needs its start and its verdict
            fate.problem = base_problem(store, context, fate.record)
            fate.good = fate.problem is None
    if not dry_run:
        for fate in fates:
            if fate.keep:
                continue
            record = fate.record
            store.delete(record.metadata_key)  # uncommit first
            if record.has_object:
                store.delete(record.object_key)
            LOG.info("pruned base backup %s (%s) in s3://%s: %s", record.basename, retention.utc_text(record.timestamp),
                     store.bucket, fate.reason(policy))
    result.update(base_kept=[fate.record.basename for fate in fates if fate.keep],
                  base_deleted=[fate.record.basename for fate in fates if not fate.keep],
                  base_backups=[_base_summary(fate, policy) for fate in fates])
    files = {}
    for item in listing:
        name = item["key"].rsplit("/", 1)[-1]
        try:
            wal = walnames.parse(name)
        except ConfigError:
            continue  # not a file PostgreSQL archives: not prune's to touch
        if item["key"] == layout.wal_key(settings.prefix, host, wal.timeline, name):
            files[name] = item["key"]
    kept = [fate for fate in fates if fate.keep]
    if not any(fate.good for fate in kept):
        result["wal_kept"] = len(files)
        if files:
            result["wal_note"] = ("no trusted base backup of host %s is kept (signed, its signature valid here), so prune "
                                  "keeps all %d archived WAL file(s): take one with `quankey-backup basebackup`"
                                  % (host, len(files)))
            LOG.warning("%s", result["wal_note"])
        return result
    # every kept base backup whose metadata reads bounds what is deleted (one not trusted only keeps more)
    starts = [fate.record.metadata["start_wal_file"] for fate in kept if fate.record.metadata is not None]
    plan = retention.wal_plan(sorted(files), starts)
    result["wal_kept_from"] = plan["kept_from"]
    deleted = locked = 0
    for name in plan["delete"]:
        key = files[name]
        lock = store.lock_of(key)
        if lock is not None and lock[1] > now:
            locked += 1
            continue
        if not dry_run:
            store.delete(key)
        deleted += 1
    result.update(wal_deleted=deleted, wal_locked=locked, wal_kept=len(files) - deleted)
    if deleted or locked:
        LOG.info("%s %d archived WAL file(s) of host %s in s3://%s before %s, the start of the oldest kept base backup"
                 "%s", "would delete" if dry_run else "pruned", deleted, host, store.bucket, plan["kept_from"],
                 "; %d kept while locked" % locked if locked else "")
    return result


def locked_until(store, record):
    """Until when a backup's objects are locked (S3 Object Lock: the latest retain-until of its metadata and data
    objects, an aware UTC time), or None. Two HEAD requests: prune asks only about backups no rule keeps. A lock these
    credentials may not read (no s3:GetObjectRetention: S3 then leaves it out of HEAD) counts as none: the delete that
    follows then leaves a delete marker on a versioned bucket, which `undelete` removes."""
    found = []
    for key in (record.metadata_key, record.object_key if record.has_object else None):
        lock = store.lock_of(key) if key else None
        if lock is not None:
            found.append(lock[1])
    return max(found) if found else None


def keeper_tag(fate):
    """The KEEP_TAG value of a kept backup (``yearly`` or ``monthly``, the longest calendar rule that keeps it), or
    None: the bucket's lifecycle rules (playbooks/prepare_bucket.yml) move data objects so tagged to an archive
    storage class after some days."""
    for rule in ("yearly", "monthly"):
        if fate.keep and any(words.startswith(rule + " ") for words in fate.rules):
            return rule
    return None


def tag_keepers(store, fates, dry_run=False):
    """Tag the data object of each backup a monthly or yearly rule keeps (KEEP_TAG), where it is not tagged so yet;
    the names tagged (or to tag, with ``dry_run``). Keys that may not tag (no s3:PutObjectTagging) are told once, in a
    warning: retention itself does not depend on the tags."""
    tagged = []
    for fate in fates:
        value = keeper_tag(fate)
        if value is None or not fate.record.has_object:
            continue
        key = fate.record.object_key
        try:
            tags = store.get_tags(key)
            if tags.get(KEEP_TAG) == value:
                continue
            if not dry_run:
                store.put_tags(key, dict(tags, **{KEEP_TAG: value}))
        except AccessDeniedError as exc:
            LOG.warning("the %s keepers are not tagged %s for the bucket's archive rules (%s): give the prune identity "
                        "s3:GetObjectTagging and s3:PutObjectTagging (docs/ROLES.md)", value, KEEP_TAG, exc)
            break
        tagged.append(fate.record.basename)
    return tagged
