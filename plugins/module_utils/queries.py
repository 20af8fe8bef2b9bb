# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only questions about the bucket, for the modules and the host command alike.

:func:`find_backups` is the listing with its filters (host, database, since,
limit, details); :func:`preview_restore` says what a restore would do and proves
the backup would restore (checksum, decryption, archive) without touching
PostgreSQL. Neither writes anything anywhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from . import dbnames
from . import keys
from . import leftovers
from . import pipeline
from . import trust
from .errors import BackupError, IntegrityError


def find_backups(settings, host=None, db=None, since=None, limit=0, details=False, store=None, context=None,
                 with_leftovers=False):
    """Backups newest first as ``{"backups": [summary, ...], "orphans": [key, ...]}``.

    Without ``host`` the whole bucket is listed (narrowed to ``db`` when given);
    with it, that host's backups of ``db`` (default ``settings.db_name``).
    ``with_leftovers`` adds what interrupted runs left behind (leftovers.find) for this
    host's database. ``since`` (an aware datetime) keeps backups taken at or after it, ``limit``
    (> 0) the newest that many, and ``details`` reads each kept backup's
    metadata. Listings are paginated, so any number of objects works.
    """
    store = store or pipeline.open_store(settings)
    records, orphans = pipeline.list_backups(settings, store=store, host=host, db=db, everything=not host)
    if since is not None:
        records = [record for record in records if record.timestamp >= since]
    if limit and limit > 0:
        records = records[:limit]
    if details:
        checker = _verdicts(settings, context)
        for record in records:
            try:
                pipeline.load_metadata(store, record)
            except IntegrityError as exc:  # a refused document is listed as such, not a failed listing
                record.verdict = trust.Verdict(trust.INVALID, None, exc.message)
                continue
            record.verdict = checker(record)
            if record.seed and record.has_object and keys.holds_any_key(settings):
                _find_kdf(settings, store, record, context)
    found = {"backups": [record.summary() for record in records], "orphans": [item["key"] for item in orphans]}
    if with_leftovers:  # this host's database: open uploads and, when the server answers, staging databases
        found["leftovers"] = leftovers.find(settings, store, orphans, pg=pipeline.postgres_or_none(settings))
    return found


def _find_kdf(settings, store, record, context=None):
    """For a seed backup: which key derivation and passphrase open it (``record.kdf``), or why none does."""
    try:
        pipeline.probe_cbc(context or keys.KeyContext(settings), store, record)
    except BackupError as exc:
        record.kdf = "none found: %s" % exc.message


def _verdicts(settings, context=None):
    """A function giving each record's trust verdict, with the keys held here (none held: 'not checked')."""
    if not keys.holds_any_key(settings):
        return lambda record: trust.judge(record, None)
    context = context or keys.KeyContext(settings)
    return context.verdict


def preview_restore(settings, backup="latest", before=None, target_db=None, host=None, db=None, store=None,
                    progress=None, allow_unsigned=False, allow_seed=None, as_admin=False):
    """What :func:`pipeline.run_restore` would restore, and where, after a full verification of it.

    Returns ``(plan, verification)``: ``plan`` names the backup, its source and
    the target database; ``verification`` is :func:`pipeline.run_verify`'s result
    (download, SHA-256, decryption, decompression, archive parse). Raises
    BackupError exactly where the restore would (selection, key, integrity).
    """
    store = store or pipeline.open_store(settings)
    record = pipeline.select(settings, store, backup, before, host, db, allow_seed=allow_seed)
    target = dbnames.check_target_name(target_db or dbnames.default_target(record))
    verification = pipeline.run_verify(settings, backup=record.basename, host=record.host, db=record.db,
                                       store=store, progress=progress, allow_unsigned=allow_unsigned,
                                       allow_seed=allow_seed)
    plan = {"name": record.basename, "object_key": record.object_key, "metadata_key": record.metadata_key,
            "source_host": record.host, "source_db": record.db, "timestamp": record.metadata["timestamp"],
            "target_db": target, "expected_table_count": record.metadata.get("table_count"),
            "signature": record.verdict.describe(), "trusted": record.verdict.trusted,
            "sql_runs_as": settings.db_user if as_admin else settings.restore_role,
            "source_trusted": pipeline.untrusted_source(settings, record) is None}
    return plan, verification
