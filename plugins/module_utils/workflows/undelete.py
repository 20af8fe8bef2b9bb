# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bringing back a backup that delete markers hide (a versioned bucket): the markers above the newest version of its
metadata, data and globals objects are removed, so those versions are the objects again, and the backup is then
checked as a restore would select it (its metadata signature verifies here, its data object has the recorded size,
its globals object too).

Nothing is removed unless every object the backup needs has a version to come back: a backup whose data (or
metadata) has no version left is refused, and the bucket is left as it was."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from .. import keys
from ..catalog import layout, trust
from ..errors import ConfigError, IntegrityError, RefusedError
from . import inventory, wiring

LOG = logging.getLogger("quankey_backup")


def _basename(backup):
    stem = inventory.backup_stem(backup)
    if not layout.is_basename(stem):
        raise ConfigError("%r is not a backup's name (<name>_backup_<YYYYmmdd_HHMMSS>): give the name `quankey-backup "
                          "list --include-deleted` shows" % backup)
    return stem


def plan_undelete(record, versions):
    """``[(key, [delete marker version ids, newest first])]`` of the objects to bring back, or RefusedError when one
    the backup needs has no version left (the globals object only when there is a version or marker of it)."""
    plan, missing = [], []
    for key in (record.metadata_key, record.object_key, layout.globals_key(record.object_key)):
        entries = versions.get(key) or []
        if not entries and key == layout.globals_key(record.object_key):
            continue  # a backup without globals (BACKUP_GLOBALS=false)
        markers = []
        for item in entries:
            if not item["deleted"]:
                break
            markers.append(item["version_id"])
        if len(markers) == len(entries):
            missing.append(key)
        elif markers:
            plan.append((key, markers))
    if missing:
        raise RefusedError("cannot undelete %s: %s %s no version left under %s (deleted for good, or never written), so "
                           "the backup cannot come back whole; nothing was changed"
                           % (record.basename, ", ".join(missing), "has" if len(missing) == 1 else "have",
                              "its delete marker" if len(missing) == 1 else "their delete markers"), step="undelete")
    return plan


def run_undelete(settings, backup, host=None, db=None, dry_run=False, *, store=None):
    """Bring back backup ``backup`` (a name) of ``host`` and ``db`` (default this host and DB_NAME), then check it.

    Returns ``name``, ``host``, ``database``, ``objects_restored`` (keys whose delete markers were removed, or would
    be), ``markers_removed``, ``signature`` (the verdict of its metadata), ``size_bytes`` and ``dry_run``. Refused
    (RefusedError) when an object has no version to bring back; the check raises as a restore's selection would.
    """
    store = wiring.store_or_open(settings, store)
    host = host or settings.host
    db = db or settings.db_name
    if not db:
        settings.require("db_name")
    name = _basename(backup)
    record = layout.BackupRecord(host, db, name, layout.metadata_key(settings.prefix, host, db, name),
                                 layout.object_key(settings.prefix, host, db, name))
    versions = inventory.versions_by_key(store, layout.metadata_key(settings.prefix, host, db, name))
    versions.update(inventory.versions_by_key(store, layout.object_prefix(settings.prefix, host, db) + name + "."))
    if not versions:
        raise RefusedError("no backup %s of host %s, database %s in %s, deleted or not: check the name with "
                           "`quankey-backup list --include-deleted`" % (name, host, db, store.url()), step="undelete")
    plan = plan_undelete(record, versions)
    result = {"name": name, "host": host, "database": db, "objects_restored": [key for key, _markers in plan],
              "markers_removed": sum(len(markers) for _key, markers in plan), "dry_run": dry_run}
    if dry_run:
        result.update(signature=None, size_bytes=None)
        return result
    for key, markers in plan:
        for version_id in markers:
            store.delete_version(key, version_id)
        LOG.info("undeleted %s (%d delete marker(s) removed)", store.url(key), len(markers))
    checked = check_backup(settings, store, name, host, db)
    result.update(checked)
    return result


def check_backup(settings, store, name, host, db):
    """Check a backup as a restore selects it: metadata read and its signature verified here, data object of the
    recorded size, globals object (when it has one) of its recorded size. ``{"signature", "size_bytes"}``."""
    context = keys.KeyContext(settings)
    record = inventory.select(settings, store, backup=name, host=host, db=db, context=context, allow_seed=False)
    trust.require(record.verdict)
    kept = record.metadata.get("globals")
    if kept:
        head = store.head(kept["object_key"])
        if head is None or head.get("ContentLength") != kept["size_bytes"]:
            raise IntegrityError("backup %s is back, but its globals object %s is %s where its metadata records %d bytes"
                                 % (name, store.url(kept["object_key"]),
                                    "missing" if head is None else "%s bytes" % head.get("ContentLength"),
                                    kept["size_bytes"]), step="undelete")
    return {"signature": record.verdict.describe(), "size_bytes": record.object_size}
