# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore drills: know that the newest backup restores, every week, not during an incident.

:func:`run_drill` restores the newest backup of a host and database (or of every host and database in the bucket)
with the restore workflow (workflows/restore.py: checksum, signature, table count, the least-privilege restore role)
into a scratch database ``quankey_drill__drill_<stamp>_<hex>`` (one a killed drill left is dropped by the next
drill once a day old), then checks the row counts the backup recorded (BACKUP_COUNT_ROWS)
and runs the assertions (DRILL_ASSERTIONS, each one row whose first column is true), both as the restore role;
it measures the restore's wall time (RTO) and the backup's age when the drill started (RPO), always drops the
scratch database (also on failure or Ctrl-C), and stores a report at ``<prefix>drills/<host>/<db>/<stamp>.json``,
signed as metadata is (formats/signing.py) when this host holds a signing key, else unsigned (and said so).

Health (:func:`drill_findings`, :func:`latest_drills`) believes a report only when its signature verifies with a key
held there and it names its own place (host, database, time of its key): someone who can write to the bucket cannot
silence the rule with a forged "passed" report. Where no signing key is held, nothing is verified (as for metadata).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import logging
import os
import shutil
import tempfile
import time

from .. import keys
from ..adapters.postgres import quote_ident
from ..adapters.process import ROW_COUNT_TABLES_SQL, json_pair
from ..catalog import dbnames, documents, layout, trust
from ..errors import BackupError, ConfigError, ConflictError, IntegrityError, NotFoundError, StorageError
from ..formats import signing
from ..progress import Progress
from ..units import human_duration
from . import pitr, restore, wiring
from .inventory import list_backups, load_metadata

LOG = logging.getLogger("quankey_backup")

PASSED, FAILED, NONE = "passed", "failed", "none"
SCRATCH_PREFIX = "quankey_drill_"
SCRATCH_TARGET = "quankey_drill"  # scratch databases are dbnames.side_name(SCRATCH_TARGET, DRILL_TAG): they carry their age
SCRATCH_STALE_HOURS = 24  # a scratch database older than this was left by a drill that was killed: the next drill drops it
REPORT_TYPE = "quankey_drill_report"
REPORT_VERSION = 1
DEFAULT_MAX_AGE_DAYS = 35
DRILL_LOOKBACK = 8  # health reads at most this many of a database's newest reports
COUNT_BATCH = 200  # tables counted by one query
# Where a failed restore's step puts the failure among the checks
_STEP_CHECKS = {"verify metadata": "signature", "verify checksum": "checksum", "download": "checksum",
                "verify": "table_count", "drill": "row_counts"}
REPORT_FIELDS = ("report_type", "report_version", "host", "database", "backup", "backup_timestamp", "started",
                 "finished", "rto_seconds", "rpo_seconds", "result", "checks", "tables", "rows_checked",
                 "scratch_database", "report_key", "error")


def _iso(when):
    return when.astimezone(layout.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_drill(settings, *, host=None, db=None, all_hosts=False, assertions=(), store=None, progress=None, now=None,
              pg=None):
    """Drill the newest backup of ``host``/``db`` (default this host's, DB_NAME), or with ``all_hosts`` of every host
    and database in the bucket; ``{"status": passed|failed|none, "drills": [report, ...]}`` (none: nothing to drill).

    ``assertions``: SQL run after DRILL_ASSERTIONS. ``now``: when the drills start (for tests; default the clock).
    ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py); the scratch databases are
    made on ``pg``'s server, whose DB_USER creates and drops them.
    """
    checks = list(settings.drill_assertions or []) + [text.strip() for text in assertions if text and text.strip()]
    store = wiring.store_or_open(settings, store)
    if not all_hosts and not db:
        settings.require("db_name")
    pg = wiring.postgres(settings, pg)
    context = keys.KeyContext(settings)
    targets = _targets(settings, store, host, db, all_hosts)
    if not targets and not all_hosts:
        raise NotFoundError(_nothing_to_drill(settings, store, host, db))
    sweep_scratch(pg, now or layout.utcnow())
    drills = []
    for record in targets:
        report = drill_one(settings, store, pg, record, checks, context=context, progress=progress, started=now)
        drills.append(report)
    status = NONE if not drills else (PASSED if all(item["result"] == PASSED for item in drills) else FAILED)
    return {"status": status, "drills": drills}


def plan_drill(settings, *, host=None, db=None, all_hosts=False, store=None, now=None):
    """What :func:`run_drill` would drill (check mode), restoring, checking and storing nothing: one entry per host and
    database, ``{"host", "database", "backup", "backup_timestamp", "rpo_seconds"}`` (the backup's age now)."""
    store = wiring.store_or_open(settings, store)
    if not all_hosts and not db:
        settings.require("db_name")
    now = now or layout.utcnow()
    targets = _targets(settings, store, host, db, all_hosts)
    if not targets and not all_hosts:
        raise NotFoundError(_nothing_to_drill(settings, store, host, db))
    return [{"host": record.host, "database": record.db, "backup": record.basename,
             "backup_timestamp": _iso(record.timestamp),
             "rpo_seconds": round((now - record.timestamp).total_seconds(), 3)} for record in targets]


def _nothing_to_drill(settings, store, host, db):
    """Why there is nothing to drill, and, for a host that has base backups but no dumps (pg_backup_kind physical),
    that it is drilled point-in-time instead."""
    host = host or settings.host
    message = "no backup of %s on host %s to drill in %s" % (db or settings.db_name, host, store.url())
    try:
        bases, _orphans = layout.base_records_from_listing(settings.prefix, store.list_objects(
            layout.base_prefix(settings.prefix, host)))
    except StorageError:  # base/ out of reach with these keys: the plain message
        return message
    if not bases:
        return message
    return ("%s: host %s makes no dumps but has %d base backup(s) (pg_backup_kind physical): drill its cluster "
            "point-in-time instead, `quankey-backup drill --pitr --host %s` (the restore_drill role's "
            "restore_drill_pitr_hosts, or playbooks/drill.yml -e pitr=true -e backup_host=%s)"
            % (message, host, len(bases), host, host))


def _targets(settings, store, host, db, all_hosts):
    """The record to drill of each host and database: its newest backup with an object (not the seed's)."""
    if all_hosts:
        records, _orphans = list_backups(settings, store, everything=True, seed=False)
    else:
        records, _orphans = list_backups(settings, store, host=host or settings.host, db=db or settings.db_name,
                                         seed=False)
    newest = {}
    for record in records:  # newest first
        if record.seed or not record.has_object:
            continue
        newest.setdefault((record.host, record.db), record)
    return [newest[key] for key in sorted(newest)]


def drill_one(settings, store, pg, record, assertions, *, context=None, progress=None, started=None):
    """Drill one backup (a listed record); the report, stored (signed when a signing key is held here)."""
    context = context or keys.KeyContext(settings)
    started = started or layout.utcnow()
    scratch = dbnames.side_name(SCRATCH_TARGET, dbnames.DRILL_TAG, started)
    report = {"report_type": REPORT_TYPE, "report_version": REPORT_VERSION, "host": record.host,
              "database": record.db, "backup": record.basename, "backup_timestamp": _iso(record.timestamp),
              "started": _iso(started), "finished": None, "rto_seconds": None,
              "rpo_seconds": round((started - record.timestamp).total_seconds(), 3), "result": FAILED, "checks": [],
              "tables": None, "rows_checked": None, "scratch_database": scratch, "report_key": None, "error": None}
    LOG.info("drill of %s/%s: restoring %s into the scratch database %s on %s", record.host, record.db,
             record.basename, scratch, pg.where)
    checks = report["checks"]
    try:
        _drill(settings, store, pg, record, assertions, context, progress, scratch, report)
    except BackupError as exc:
        report["error"] = str(exc)
        checks.append(_check(_STEP_CHECKS.get(exc.step, "restore"), False, exc.message))
    except KeyboardInterrupt as exc:
        exc.outcome = None  # a restore that had just finished: its scratch database is dropped below all the same
        raise
    finally:
        _drop_scratch(pg, scratch)
    report["result"] = PASSED if checks and all(item["ok"] for item in checks) and not report["error"] else FAILED
    report["finished"] = _iso(layout.utcnow())
    return _store_report(settings, store, context, report)


PITR_DATABASE = "@cluster"  # the "database" of a point-in-time drill's report: the whole cluster (no database is named so)
PITR_SCRATCH_PARENT = "/var/tmp"  # where a point-in-time drill's scratch data directory goes unless --data-dir says


def run_pitr_drill(settings, *, host=None, target=None, scratch_parent=None, store=None, progress=None, now=None):
    """Point-in-time drill of ``host``'s cluster (default this host's): its newest base backup that reaches ``target``
    (a pitr.Target; default the archive's end) restored by pitr.py into a scratch data directory under
    ``scratch_parent`` (the cluster's size on disk), recovered with no archiving, promoted and proved, then removed.
    ``{"status": passed|failed, "drills": [report]}``; the report (database ``@cluster``) is stored and signed as a
    dump drill's is. RTO: the restore's wall time; RPO: how old the last replayed commit was when the drill began."""
    store = wiring.store_or_open(settings, store)
    context = keys.KeyContext(settings)
    started = now or layout.utcnow()
    host = host or settings.host
    target = target or pitr.Target("latest")
    report = {"report_type": REPORT_TYPE, "report_version": REPORT_VERSION, "host": host, "database": PITR_DATABASE,
              "backup": None, "backup_timestamp": None, "started": _iso(started), "finished": None,
              "rto_seconds": None, "rpo_seconds": None, "result": FAILED, "checks": [], "tables": None,
              "rows_checked": None, "scratch_database": None, "report_key": None, "error": None}
    parent = tempfile.mkdtemp(prefix="quankey-drill-pitr-", dir=scratch_parent or PITR_SCRATCH_PARENT)
    os.chmod(parent, 0o711)  # the server's OS user reaches its data directory inside
    data_dir = os.path.join(parent, "data")
    report["scratch_database"] = data_dir
    checks = report["checks"]
    signing_held = bool(context.signing_keys()[2])
    LOG.info("point-in-time drill of host %s: restoring to %s into the scratch data directory %s", host,
             target.describe(), data_dir)
    try:
        clock = time.time()
        restored = pitr.run_restore_pitr(settings, data_dir, target=target, host=host, action="promote", archive=False,
                                         store=store, progress=progress if progress is not None else Progress("drill"),
                                         allow_unsigned=not signing_held)
        report["rto_seconds"] = round(time.time() - clock, 3)
        report["backup"] = restored["base_backup"]
        report["backup_timestamp"] = restored["base_timestamp"]
        _pitr_checks(report, restored, target, signing_held, started)
    except BackupError as exc:
        report["error"] = str(exc)
        checks.append(_check(_STEP_CHECKS.get(exc.step, "recovery"), False, exc.message))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    report["result"] = PASSED if checks and all(item["ok"] for item in checks) and not report["error"] else FAILED
    report["finished"] = _iso(layout.utcnow())
    stored = _store_report(settings, store, context, report)
    return {"status": stored["result"], "drills": [stored]}


def plan_pitr_drill(settings, *, host=None, target=None, scratch_parent=None, store=None, now=None):
    """What :func:`run_pitr_drill` would drill (check mode), writing nothing: pitr.py's plan of the restore into a
    scratch data directory under ``scratch_parent``, as :func:`plan_drill`'s one entry (database ``@cluster``)."""
    host = host or settings.host
    now = now or layout.utcnow()
    parent = scratch_parent or PITR_SCRATCH_PARENT
    planned = pitr.plan_restore_pitr(settings, os.path.join(parent, "quankey-drill-pitr-plan"), target=target,
                                     host=host, store=store, allow_unsigned=not bool(keys.KeyContext(settings)
                                                                                     .signing_keys()[2]))
    when = layout.parse_time(planned["base_timestamp"])
    return [{"host": host, "database": PITR_DATABASE, "backup": planned["base_backup"],
             "backup_timestamp": planned["base_timestamp"], "rpo_seconds": round((now - when).total_seconds(), 3),
             "target": planned["target"], "scratch_parent": parent}]


def _pitr_checks(report, restored, target, signing_held, started):
    checks = report["checks"]
    checks.append(_check("base_backup", restored["manifest_ok"], "%s: %d files checked against its manifest"
                         % (restored["base_backup"], restored["files"])))
    if signing_held:
        checks.append(_check("signature", restored["trusted"], "metadata signature %s" % restored["signature"]))
    checks.append(_check("recovery", restored["reached"]["state"] == "promoted",
                         "recovered to %s: %s at %s on timeline %s, %d WAL files in %.1fs"
                         % (target.describe(), restored["reached"]["state"], restored["replay_lsn"],
                            restored["timeline"], restored["wal_files_restored"], report["rto_seconds"])))
    answered = ", ".join("%s (%d relations)" % item for item in sorted(restored["relations"].items()))
    checks.append(_check("consistency", bool(restored["databases"]), "every database answered: %s" % answered))
    last = restored["last_replayed_commit"]
    if last:
        report["rpo_seconds"] = round((started - layout.parse_time(last)).total_seconds(), 3)
    else:
        report["rpo_seconds"] = round((started - layout.parse_time(report["backup_timestamp"])).total_seconds(), 3)


def _check(name, ok, detail):
    return {"name": name, "ok": bool(ok), "detail": detail}


def _drill(settings, store, pg, record, assertions, context, progress, scratch, report):
    """Restore, then check; fills ``report`` (raises BackupError when the restore fails)."""
    checks = report["checks"]
    load_metadata(store, record)
    record.verdict = context.verdict(record)
    signing_held = bool(context.signing_keys()[2])
    if record.verdict.outcome == trust.INVALID:
        trust.require(record.verdict)  # raises: a tampered document is never restored
    clock = time.time()
    restored = restore.run_restore(settings, backup=record.basename, target_db=scratch, host=record.host,
                                   db=record.db, store=store, pg=pg, allow_unsigned=not signing_held,
                                   progress=progress if progress is not None else Progress("drill"),
                                   keep_role_owner=True)
    report["rto_seconds"] = round(time.time() - clock, 3)
    report["tables"] = restored["table_count"]
    checks.append(_check("restore", True, "restored in %.1fs into %s as the restore role"
                         % (report["rto_seconds"], scratch)))
    checks.append(_check("checksum", restored["checksum_ok"], "SHA-256 of the object matches its metadata"
                         if restored["integrity"] == "sha256" else "every segment authenticated"))
    if signing_held:
        checks.append(_check("signature", restored["trusted"], "metadata signature %s" % restored["signature"]))
    else:
        LOG.warning("drill of %s: no signing key here, so the metadata signature of %s was not checked (and the report "
                    "is stored unsigned): set BACKUP_SIGNING_KEY on the drill host", record.db, record.basename)
    checks.append(_check("table_count", restored["table_count_ok"], "%d tables, as the backup recorded"
                         % restored["table_count"]))
    runner = restore.SqlRunner(pg, settings.restore_role, trusted=restored["trusted"])
    runner.create(0)
    try:
        client = runner.login(scratch)
        expected = documents.row_counts_of(record.metadata)
        if expected is not None:
            ok, detail, rows = compare_row_counts(expected, count_rows(client, scratch))
            report["rows_checked"] = rows
            checks.append(_check("row_counts", ok, detail))
        for number, sql in enumerate(assertions, 1):
            checks.append(_check("assertion %d" % number, *run_assertion(client, scratch, sql)))
    finally:
        runner.drop(scratch)


def count_rows(client, database):
    """``{(schema, table): rows}`` of the restored database's tables, counted by ``client`` (the restore role), with
    row security off (a policy would make the count wrong: it fails instead)."""
    tables = [tuple(json_pair(row[0])) for row in client.query(ROW_COUNT_TABLES_SQL, database, step="drill")]
    counts = {}
    for start in range(0, len(tables), COUNT_BATCH):
        batch = tables[start:start + COUNT_BATCH]
        sql = "SET row_security = off;\n" + " UNION ALL ".join(
            "SELECT %d, pg_catalog.count(*) FROM %s.%s" % (index, quote_ident(schema), quote_ident(table))
            for index, (schema, table) in enumerate(batch))
        for index, rows in client.query(sql, database, step="drill"):
            counts[batch[int(index)]] = int(rows)
    return counts


def compare_row_counts(expected, found):
    """``(ok, detail, rows checked)``: every table the backup counted has as many rows restored (pure)."""
    problems = []
    rows = 0
    for (schema, table), wanted in sorted(expected.items()):
        name = "%s.%s" % (schema, table)
        if (schema, table) not in found:
            problems.append("%s is missing (%d rows recorded)" % (name, wanted))
            continue
        rows += found[(schema, table)]
        if found[(schema, table)] != wanted:
            problems.append("%s has %d rows, %d recorded" % (name, found[(schema, table)], wanted))
    if problems:
        shown = "; ".join(problems[:5]) + ("; and %d more" % (len(problems) - 5) if len(problems) > 5 else "")
        return False, ("%d of %d tables differ from the counts recorded at backup: %s"
                       % (len(problems), len(expected), shown)), rows
    return True, "%d tables, %d rows, as recorded at backup" % (len(expected), rows), rows


def run_assertion(client, database, sql):
    """``(ok, detail)`` of one assertion run by ``client`` (the restore role) in a read-only transaction."""
    script = ('SET search_path TO "$user", public;\nBEGIN TRANSACTION READ ONLY;\n%s\n;\nROLLBACK;\n' % sql)
    try:
        rows = client.query(script, database, step="drill assertion")
    except BackupError as exc:
        return False, "%s: %s" % (_short(sql), exc.message)
    if len(rows) != 1:
        return False, "%s: returned %d rows, one expected" % (_short(sql), len(rows))
    if rows[0][0] != "t":
        return False, "%s: returned %r, true expected" % (_short(sql), rows[0][0])
    return True, _short(sql)


def _short(sql):
    text = " ".join(sql.split())
    return text if len(text) <= 120 else text[:117] + "..."


def stale_scratch(names, now, hours=SCRATCH_STALE_HOURS):
    """The scratch databases among ``names`` (database name, sessions) made more than ``hours`` ago and not in use."""
    stale = []
    for name, sessions in names:
        parsed = dbnames.parse_side_name(name)
        if parsed is None or parsed[0] != SCRATCH_TARGET or parsed[1] != dbnames.DRILL_TAG or sessions:
            continue
        if (now - parsed[2]).total_seconds() > hours * 3600:
            stale.append(name)
    return stale


def sweep_scratch(pg, now):
    """Drop the scratch databases drills killed outright (SIGKILL, a lost machine) left on the drill server; said, and
    a failure to look or drop is only a warning (the drill goes on)."""
    try:
        names = [(name, sessions) for name, _size, sessions in pg.side_databases()]
    except BackupError as exc:
        LOG.warning("could not look for scratch databases earlier drills left behind: %s", exc)
        return []
    dropped = []
    for name in stale_scratch(names, now):
        LOG.warning("dropping %s, the scratch database of a drill that was killed more than %d hours ago",
                    name, SCRATCH_STALE_HOURS)
        try:
            pg.drop_database(name)
            dropped.append(name)
        except BackupError as exc:
            LOG.warning("could not drop %s (a killed drill's scratch database): %s", name, exc)
    return dropped


def _drop_scratch(pg, scratch):
    """Drop the scratch database (the restore itself drops its staging database when it fails); best effort, said."""
    try:
        pg.drop_database(scratch)
    except BackupError as exc:
        LOG.error("could not drop the drill's scratch database %s: drop it by hand (DROP DATABASE \"%s\"): %s",
                  scratch, scratch, exc)


def _store_report(settings, store, context, report):
    """Sign (when a signing key is held here) and store the report where none is; the report as returned."""
    started = layout.parse_time(report["started"])
    key = layout.drill_key(settings.prefix, report["host"], report["database"], started)
    report["report_key"] = key
    kid, signing_key, _by_id = context.signing_keys()
    document = signing.sign_metadata(report, kid, signing_key) if signing_key is not None else dict(report)
    if signing_key is None:
        LOG.warning("the drill report %s is stored unsigned: this host holds no signing key (BACKUP_SIGNING_KEY), so "
                    "health takes it as no proof where signatures are checked", store.url(key))
    returned = dict(report, signed=signing_key is not None)
    try:
        store.put_bytes(key, encode_report(document), content_type="application/json", if_none_match=True)
    except (StorageError, ConflictError) as exc:
        LOG.error("could not store the drill report %s: %s", store.url(key), exc)
        returned["report_key"] = None
        returned["error"] = "; ".join(text for text in (report["error"], "report not stored: %s" % exc) if text)
    return returned


def encode_report(report):
    """Canonical JSON bytes of a report."""
    return (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8")


# -- reading reports (health, list --details, backup_info) ---------------------------------------------------------------

def decode_report(data, key, prefix):
    """A stored report, checked: its fields and that it names its own place (host, database and time of its key).
    IntegrityError names what is wrong."""
    place = layout.drill_key_parts(prefix, key)
    if place is None:
        raise IntegrityError("%s is not a drill report's key" % key)
    try:
        report = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("drill report %s is not valid JSON (%s)" % (key, exc))
    if not isinstance(report, dict) or report.get("report_type") != REPORT_TYPE:
        raise IntegrityError("%s is not a drill report" % key)
    unknown = sorted(set(report) - set(REPORT_FIELDS) - {signing.SIGNATURE_FIELD})
    missing = sorted(set(REPORT_FIELDS) - set(report))
    if unknown or missing:
        raise IntegrityError("drill report %s has %s: it was not written by quankey-backup or was modified"
                             % (key, "field(s) %s" % ", ".join(unknown) if unknown else "no %s" % ", ".join(missing)))
    host, db, started = place
    try:
        named = layout.parse_time(report["started"]) if isinstance(report["started"], str) else None
    except BackupError:
        named = None
    if report["host"] != host or report["database"] != db or named != started or report["report_key"] != key:
        raise IntegrityError("drill report %s is not this place's: it names %r/%r started %r: it was copied or modified"
                             % (key, report["host"], report["database"], report["started"]))
    if report["result"] not in (PASSED, FAILED) or not isinstance(report["checks"], list):
        raise IntegrityError("drill report %s has an invalid result or checks" % key)
    return report


def judge_report(report, signing_keys):
    """``(outcome, problem)``: trust.VALID or trust.NOT_CHECKED (no signing key held here: ``signing_keys`` None)
    when it may be believed; else UNSIGNED, UNKNOWN_KEY or INVALID, with why."""
    if signing_keys is None:
        return trust.NOT_CHECKED, None
    outcome, kid = signing.verify_metadata(report, signing_keys)
    if outcome == signing.VALID:
        return trust.VALID, None
    what = {signing.UNSIGNED: "is unsigned (its drill host holds no signing key)",
            signing.UNKNOWN_KEY: "is signed with key %s, not held here" % kid,
            signing.INVALID: "has an invalid signature: it was forged or modified"}[outcome]
    return outcome, what


def latest_drills(settings, store, host, db, signing_keys, limit=DRILL_LOOKBACK):
    """What the newest reports of ``host``/``db`` say: ``{"last": the newest believed report or None, "last_passed":
    the newest believed passed one or None, "untrusted": [{"key", "outcome", "problem"}], "reports": how many}``.
    Reads at most ``limit`` reports, newest first, stopping at the first believed passed one. Raises StorageError."""
    prefix = layout.drill_prefix(settings.prefix, host, db)
    listed = []
    for item in store.list_objects(prefix):
        place = layout.drill_key_parts(settings.prefix, item["key"])
        if place is not None and place[0] == host and place[1] == db:
            listed.append((place[2], item["key"]))
    listed.sort(reverse=True)
    found = {"last": None, "last_passed": None, "untrusted": [], "reports": len(listed)}
    for _started, key in listed[:limit]:
        try:
            report = decode_report(store.get_bytes(key), key, settings.prefix)
        except (IntegrityError, NotFoundError) as exc:
            found["untrusted"].append({"key": key, "outcome": trust.INVALID, "problem": str(exc)})
            continue
        outcome, problem = judge_report(report, signing_keys)
        if outcome not in (trust.VALID, trust.NOT_CHECKED):
            found["untrusted"].append({"key": key, "outcome": outcome, "problem": "drill report %s %s" % (key, problem)})
            continue
        if found["last"] is None:
            found["last"] = report
        if report["result"] == PASSED:
            found["last_passed"] = report
            break
    return found


def held_signing_keys(settings):
    """{key id: key} that verify reports here, or None when no key is held (nothing is verified then)."""
    if not keys.holds_any_key(settings):
        return None
    try:
        return keys.KeyContext(settings).signing_keys()[2] or None
    except ConfigError:
        return None


def last_drill(settings, host, db, store=None):
    """The newest believed drill report of ``host``/``db`` as :func:`summary` gives it; None when there is none, or
    when the reports cannot be read here (a host whose IAM policy does not reach ``drills/``: said in the log)."""
    store = wiring.store_or_open(settings, store)
    try:
        found = latest_drills(settings, store, host, db, held_signing_keys(settings))
    except StorageError as exc:
        LOG.info("the restore drill reports of %s/%s were not read: %s", host, db, exc)
        return None
    return summary(found["last"])


def summary(report):
    """A report as health, list --details and backup_info show it (None for None)."""
    if report is None:
        return None
    return {"timestamp": report["started"], "result": report["result"], "backup": report["backup"],
            "rto_seconds": report["rto_seconds"], "rpo_seconds": report["rpo_seconds"],
            "report_key": report["report_key"]}


TABLE_COLUMNS = ("HOST", "DATABASE", "BACKUP", "AGE", "RTO", "RESULT")


def failure_reason(entry):
    """Why a drill failed: its error, else its failed checks."""
    return entry.get("error") or "; ".join("%s: %s" % (check.get("name"), check.get("detail"))
                                           for check in entry.get("checks") or [] if not check.get("ok")) or "failed"


def _table_row(entry):
    age = human_duration(entry["rpo_seconds"]) if entry.get("rpo_seconds") is not None else "-"
    rto = human_duration(entry["rto_seconds"]) if entry.get("rto_seconds") is not None else "-"
    result = entry.get("result") or "-"
    if result == FAILED:
        result = "%s: %s" % (result, failure_reason(entry))
    return (entry.get("host") or "-", entry.get("database") or "-", entry.get("backup") or "-", age, rto, result)


def table(entries):
    """Drills (reports, or :func:`plan_drill`'s entries) as aligned lines, the fleet view: a header, then one line per
    host and database (host, database, backup, its age, the restore's time, the result and why it failed)."""
    rows = [TABLE_COLUMNS] + [_table_row(entry) for entry in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_COLUMNS) - 1)]
    return ["  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip() for row in rows]


def drill_findings(found, now, max_age_days, explicit):
    """The drill rule (pure): ``[(severity, message)]`` from :func:`latest_drills`' answer.

    The last believed drill failed: critical. No believed passed drill newer than ``max_age_days``: a warning, but
    only when the database has drill reports at all or ``explicit`` (DRILL_MAX_AGE_DAYS set): a fleet that does not
    drill yet is not warned, while one that did is held to it. A report with an invalid signature: a warning (forged or
    modified); one that is unsigned or signed with a key not held here: info (not counted).
    """
    findings = []
    last, passed = found["last"], found["last_passed"]
    if last is not None and last["result"] == FAILED:
        failed = [item for item in last["checks"] if isinstance(item, dict) and not item.get("ok")]
        why = last.get("error") or "; ".join("%s: %s" % (item.get("name"), item.get("detail")) for item in failed)
        findings.append(("critical", "the last restore drill (%s) of backup %s failed: %s"
                         % (last["started"], last["backup"], why)))
    if found["reports"] or explicit:
        age_days = (now - layout.parse_time(passed["started"])).total_seconds() / 86400.0 if passed else None
        if passed is None:
            findings.append(("warning", "no passed restore drill%s: run `quankey-backup drill` (or playbooks/drill.yml) "
                             "at least every %d days" % (" among the newest %d reports" % DRILL_LOOKBACK
                                                         if found["reports"] else "", max_age_days)))
        elif age_days > max_age_days:
            findings.append(("warning", "the last passed restore drill (%s, backup %s) is %.0f days old (limit %d, "
                             "DRILL_MAX_AGE_DAYS): drills have stopped"
                             % (passed["started"], passed["backup"], age_days, max_age_days)))
    for item in found["untrusted"]:
        findings.append(("warning" if item["outcome"] == trust.INVALID else "info",
                         "%s; it is not counted" % item["problem"]))
    return findings
