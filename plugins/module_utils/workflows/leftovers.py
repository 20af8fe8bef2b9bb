# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What interrupted runs leave behind, found, aged, sized, and swept when it is safe.

- **orphan objects**: a data object without metadata (a backup killed after its upload);
- **open multipart uploads**: a backup killed during its upload, whose abort could not reach the store;
- **staging databases** ``<target>__restoring_<YYmmddHHMMSS>_<hex>``: a restore killed before it ended;
- **restore logins** ``<restore role>_<hex>``: the temporary login of such a restore.

Ages are taken with care: a store may report a multipart upload's start wrongly (the test bed's says
2010), so an upload's age is the youngest of its start, its newest part and the time in its key;
a staging database's age is the time in its name. Health and ``list`` report them;
``prune`` removes those that are stale and not in use (see :func:`sweep`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from ..catalog import layout
from ..catalog.dbnames import STAGING_TAG, parse_side_name
from ..errors import BackupError
from ..units import human_size

LOG = logging.getLogger("quankey_backup")

STALE_HOURS = 24  # orphans, open uploads and staging databases older than this are swept by prune


def _hours(delta):
    return round(delta.total_seconds() / 3600.0, 2)


def _key_time(key):
    """The time in a backup object's key (``..._backup_<YYYYmmdd_HHMMSS>.encrypted``), or None."""
    stem = key.rsplit("/", 1)[-1]
    if stem.endswith(layout.OBJECT_SUFFIX):
        stem = stem[:-len(layout.OBJECT_SUFFIX)]
    if not layout.is_basename(stem):
        return None
    return layout.parse_timestamp(stem.rsplit("_backup_", 1)[1])


def upload_age(upload, parts, now):
    """Hours since an open upload last showed life: its start, its newest part or its key's time, the youngest."""
    times = [upload["initiated"]] + [part["last_modified"] for part in parts]
    keyed = _key_time(upload["key"])
    if keyed is not None:
        times.append(keyed)
    return _hours(now - max(times))


def find_in_store(settings, store, orphans, now):
    """Orphans and open uploads of this host and database: dicts with key, size_bytes, age_hours (and upload_id)."""
    found_orphans = [{"key": item["key"], "size_bytes": item["size"], "age_hours": _hours(now - item["last_modified"])}
                     for item in orphans]
    uploads = []
    for upload in store.list_multipart_uploads(layout.object_prefix(settings.prefix, settings.host, settings.db_name)):
        parts = list(store.list_parts(upload["key"], upload["upload_id"]))
        uploads.append({"key": upload["key"], "upload_id": upload["upload_id"],
                        "size_bytes": sum(part["size"] for part in parts), "parts": len(parts),
                        "age_hours": upload_age(upload, parts, now)})
    return found_orphans, uploads


def find_in_postgres(pg, settings, now):
    """Staging databases (any target) and the restore role's logins on this server: lists of dicts."""
    staging = []
    for name, size, sessions in pg.side_databases():
        parsed = parse_side_name(name)
        if parsed is None or parsed[1] != STAGING_TAG:
            continue
        staging.append({"name": name, "target": parsed[0], "size_bytes": size, "sessions": sessions,
                        "age_hours": _hours(now - parsed[2])})
    logins = [{"name": name, "expired": until is None or until < now}
              for name, until in pg.restore_logins(settings.restore_role)]
    return staging, logins


def find(settings, store, orphans, now=None, pg=None):
    """Everything left behind, as a JSON-ready dict; PostgreSQL's part only when ``pg`` is given and answers."""
    now = now or layout.utcnow()
    found_orphans, uploads = find_in_store(settings, store, orphans, now)
    result = {"orphans": found_orphans, "uploads": uploads, "staging_databases": [], "restore_logins": [],
              "postgres_checked": False}
    if pg is not None:
        try:
            result["staging_databases"], result["restore_logins"] = find_in_postgres(pg, settings, now)
            result["postgres_checked"] = True
        except BackupError as exc:
            result["postgres_error"] = str(exc)
    return result


def stale(found, hours=STALE_HOURS):
    """The part of :func:`find`'s result that is safe to remove: old enough, and not in use."""
    return {
        "orphans": [item for item in found["orphans"] if item["age_hours"] >= hours],
        "uploads": [item for item in found["uploads"] if item["age_hours"] >= hours],
        "staging_databases": [item for item in found["staging_databases"]
                              if item["age_hours"] >= hours and not item["sessions"]],
        "restore_logins": [item for item in found["restore_logins"] if item["expired"]],
    }


def sweep(store, pg, gone, dry_run=False):
    """Remove what :func:`stale` selected (nothing with ``dry_run``); returns what was (or would be) removed."""
    done = {"orphans": [], "uploads": [], "staging_databases": [], "restore_logins": []}
    for item in gone["orphans"]:
        if not dry_run:
            store.delete(item["key"])
            LOG.info("deleted orphan object %s (%d bytes, %.0f h old; no metadata: an uncommitted backup)", item["key"],
                     item["size_bytes"], item["age_hours"])
        done["orphans"].append(item["key"])
    for item in gone["uploads"]:
        if not dry_run:
            store.abort_multipart(item["key"], item["upload_id"])
            LOG.info("aborted the open multipart upload of %s (%d bytes in %d parts, %.0f h without news)", item["key"],
                     item["size_bytes"], item["parts"], item["age_hours"])
        done["uploads"].append(item["key"])
    for item in gone["staging_databases"]:
        if not dry_run:
            pg.drop_database(item["name"])
            LOG.info("dropped the staging database %s of an interrupted restore (%d bytes, %.0f h old)", item["name"],
                     item["size_bytes"], item["age_hours"])
        done["staging_databases"].append(item["name"])
    for item in gone["restore_logins"]:
        if not dry_run:
            try:
                pg.drop_role(item["name"])
            except BackupError as exc:  # it still owns something (a staging database in use): left for later
                LOG.warning("the expired restore login %s was left: %s", item["name"], exc)
                continue
            LOG.info("dropped the expired restore login %s of an interrupted restore", item["name"])
        done["restore_logins"].append(item["name"])
    return done


def describe(found):
    """One line per leftover, for health findings and the listing."""
    lines = []
    for item in found["staging_databases"]:
        lines.append("staging database %s of an interrupted restore: %s, %.1f h old%s" % (
            item["name"], human_size(item["size_bytes"]), item["age_hours"],
            ", in use (%d sessions)" % item["sessions"] if item["sessions"] else ""))
    for item in found["uploads"]:
        lines.append("open multipart upload of %s: %s in %d parts, %.1f h without news" % (
            item["key"], human_size(item["size_bytes"]), item["parts"], item["age_hours"]))
    for item in found["orphans"]:
        lines.append("object without metadata %s: %s, %.1f h old" % (item["key"], human_size(item["size_bytes"]),
                                                                     item["age_hours"]))
    for item in found["restore_logins"]:
        lines.append("restore login %s%s" % (item["name"], " (expired)" if item["expired"] else " (a restore running?)"))
    return lines
