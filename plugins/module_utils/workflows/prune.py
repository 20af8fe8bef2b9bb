# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention: backups past BACKUP_RETENTION_DAYS are deleted (never the newest BACKUP_MIN_KEEP good ones), and what
interrupted runs left behind is swept once stale and unused (leftovers.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from ..catalog import layout
from ..errors import IntegrityError
from . import leftovers
from .inventory import list_backups, load_metadata, open_store, postgres_or_none

LOG = logging.getLogger("quankey_backup")


def run_prune(settings, dry_run=False, store=None, now=None):
    """Delete backups past retention (never the newest BACKUP_MIN_KEEP good ones), and what interrupted runs left
    behind once stale and unused (leftovers.py): orphan objects, open uploads, staging databases, restore logins."""
    store = store or open_store(settings)
    settings.require("db_name")
    now = now or layout.utcnow()
    records, orphans = list_backups(settings, store, seed=False)  # the seed's layout is not ours to prune

    def is_good(record):
        if not record.has_object:
            return False
        try:
            return load_metadata(store, record)["size_bytes"] == record.object_size
        except IntegrityError:
            return False

    keep, delete = layout.retention_plan(records, now, settings.retention_days, settings.min_keep, is_good)
    pg = postgres_or_none(settings)
    found = leftovers.find(settings, store, orphans, now, pg=pg)
    if not dry_run:
        for record in delete:
            store.delete(record.metadata_key)  # uncommit first: a backup without metadata does not exist
            if record.has_object:
                store.delete(record.object_key)
            LOG.info("pruned %s (%s)", record.basename, record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    swept = leftovers.sweep(store, pg, leftovers.stale(found), dry_run)
    return {"kept": [record.basename for record in keep], "deleted": [record.basename for record in delete],
            "orphans_deleted": swept["orphans"], "uploads_aborted": swept["uploads"],
            "staging_databases_dropped": swept["staging_databases"], "restore_logins_dropped": swept["restore_logins"],
            "leftovers": found, "dry_run": dry_run,
            "retention_days": settings.retention_days, "min_keep": settings.min_keep}
