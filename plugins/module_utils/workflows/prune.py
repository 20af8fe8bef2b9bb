# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention: backups past BACKUP_RETENTION_DAYS are deleted (never the newest BACKUP_MIN_KEEP good ones), and what
interrupted runs left behind is swept once stale and unused (leftovers.py).

A good backup has its data object, of the size its metadata records, and metadata whose signature verifies here
and that names the backup stored at its place (catalog/trust.py): a document planted in the bucket, forged or
unsigned, never counts towards BACKUP_MIN_KEEP, so it cannot push a real backup out."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from .. import keys
from ..catalog import layout
from ..errors import ConfigError, IntegrityError
from . import leftovers, wiring
from .inventory import list_backups, load_metadata

LOG = logging.getLogger("quankey_backup")


def run_prune(settings, dry_run=False, store=None, now=None, *, pg=None):
    """Delete backups past retention (never the newest BACKUP_MIN_KEEP good ones), and what interrupted runs left
    behind once stale and unused (leftovers.py): orphan objects, open uploads, staging databases, restore logins.

    ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py; no PostgreSQL client
    when none can be made here: its leftovers are then not swept)."""
    store = wiring.store_or_open(settings, store)
    settings.require("db_name")
    context = keys.KeyContext(settings)
    if not context.signing_keys()[2]:
        raise ConfigError("prune keeps the newest %s backups whose metadata signature verifies here, and no key to "
                          "verify it with is set: set %s (or %s), as where the backups are made"
                          % (settings.label("min_keep"), settings.label("signing_key"), settings.label("encryption_key")))
    now = now or layout.utcnow()
    records, orphans = list_backups(settings, store, seed=False)  # the seed's layout is not ours to prune

    def is_good(record):
        if not record.has_object:
            return False
        try:
            metadata = load_metadata(store, record)
        except IntegrityError:
            return False
        return metadata["size_bytes"] == record.object_size and context.verdict(record).trusted

    keep, delete = layout.retention_plan(records, now, settings.retention_days, settings.min_keep, is_good)
    pg = wiring.postgres_or_none(settings, pg)
    found = leftovers.find(settings, store, orphans, now, pg=pg)
    if not dry_run:
        for record in delete:
            store.delete(record.metadata_key)  # uncommit first: a backup without metadata does not exist
            if record.has_object:
                store.delete(record.object_key)
            if not record.seed:
                store.delete(layout.globals_key(record.object_key))  # its globals, if it has them (none: a no-op)
            LOG.info("pruned %s (%s)", record.basename, record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    swept = leftovers.sweep(store, pg, leftovers.stale(found), dry_run)
    return {"kept": [record.basename for record in keep], "deleted": [record.basename for record in delete],
            "orphans_deleted": swept["orphans"], "uploads_aborted": swept["uploads"],
            "staging_databases_dropped": swept["staging_databases"], "restore_logins_dropped": swept["restore_logins"],
            "leftovers": found, "dry_run": dry_run,
            "retention_days": settings.retention_days, "min_keep": settings.min_keep}
