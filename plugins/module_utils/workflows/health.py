# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Will the backups restore, and will their owner know at once when they won't?

The seed's alert rules (age over 36 h, size under 1 MiB, S3 access, encryption
failures, low frequency) and a few more, each a finding with a severity.
:func:`assess` is pure; :func:`check_health` gathers what it needs from S3 with
a listing, a few small metadata reads and a ranged GET of the header of each of
those backups' objects (never a download). Keys are used only for their ids
and to check the metadata signatures: a recent backup wrapped with a key this
host does not hold is a warning, a metadata signature that does not verify is
critical ("metadata signature invalid").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from .. import keys
from ..catalog import documents, layout, trust, walnames
from ..formats import crypto, modes
from . import drill, leftovers, wiring
from .inventory import list_backups as _list_backups, load_metadata as _load_metadata
from ..errors import (AccessDeniedError, BackupError, ConfigError, EXIT_HEALTH_CRITICAL, EXIT_HEALTH_WARNING, EXIT_OK,
                      IntegrityError, StorageError, WrongKeyError)
from ..units import human_size

OK, INFO, WARNING, CRITICAL = "ok", "info", "warning", "critical"
_RANK = {OK: 0, INFO: 0, WARNING: 1, CRITICAL: 2}
EXIT_CODES = {OK: EXIT_OK, WARNING: EXIT_HEALTH_WARNING, CRITICAL: EXIT_HEALTH_CRITICAL}
SCHEDULE_INTERVAL_HOURS = {"daily": 24, "12-hour": 12, "6-hour": 6}
METADATA_LOOKBACK = 8
# A monitor wants an answer: health retries S3 for at most this long (S3_RETRY_WINDOW_SECONDS if that is shorter)
# and says s3_access critical after it, where a backup would wait out the whole window.
HEALTH_RETRY_WINDOW = 20
KNOWN_ENCRYPTIONS = modes.NAMES
_SIGNING_FIX = ("set BACKUP_SIGNING_KEY to the signing key of the hosts that made it, or add the master key of that id "
                "to BACKUP_DECRYPTION_KEYS")


class HealthPolicy:
    """Thresholds of the rules (defaults are the seed's)."""

    def __init__(self, *, max_age_hours=36, min_size_bytes=1024 * 1024, interval_hours=24, window_days=7,
                 size_drop_ratio=0.5, orphan_grace_hours=24, leftover_hours=1):
        self.max_age_hours = float(max_age_hours)
        self.min_size_bytes = int(min_size_bytes)
        self.interval_hours = float(interval_hours)
        self.window_days = float(window_days)
        self.size_drop_ratio = float(size_drop_ratio)
        self.orphan_grace_hours = float(orphan_grace_hours)
        self.leftover_hours = float(leftover_hours)


def interval_for_schedule(schedule, label="BACKUP_SCHEDULE"):
    """Hours between backups for a preset (daily, 12-hour, 6-hour) or a number of hours.

    ``label``: where the schedule was set, for the message (``settings.label("schedule")``).
    """
    if schedule in SCHEDULE_INTERVAL_HOURS:
        return SCHEDULE_INTERVAL_HOURS[schedule]
    try:
        hours = float(schedule)
    except (TypeError, ValueError):
        raise ConfigError("%s %r is not a preset (%s) or a number of hours"
                          % (label, schedule, ", ".join(SCHEDULE_INTERVAL_HOURS)))
    return hours


def _finding(rule, severity, message):
    return {"rule": rule, "severity": severity, "message": message}


def _hours(delta):
    return delta.total_seconds() / 3600.0


def assess(records, orphans, now, policy, *, header_error=None, metadata_errors=None, header_errors=None,
           keyring_ids=None, keyring_error=None, signing_keys=None, signature_fix=_SIGNING_FIX):
    """Findings for one host and database. ``records`` newest first, with metadata loaded on the newest few.

    ``header_error``: what the ranged read of the newest object's header found wrong (None when fine).
    ``metadata_errors``: {basename: message} for metadata that would not parse.
    ``header_errors``: {basename: message} for recent objects whose header is wrong (the newest's too).
    ``keyring_ids``: ids of the keys this host holds (master keys, identities, recipients), None when
    none is configured (key ids are then not checked); ``keyring_error``: why the keys could not be read.
    ``signing_keys``: {key id: key} to check metadata signatures with, None when there are none here;
    ``signature_fix``: where to set a missing signing key (in the caller's words). The signature rule
    is trust.judge's verdict, the one restore obeys.
    """
    findings = []
    metadata_errors = metadata_errors or {}
    header_errors = dict(header_errors or {})
    if not records:
        findings.append(_finding("no_backups", CRITICAL, "no backups found: the first backup has not run, or writes "
                                 "fail (see /var/log/quankey/backup.log)"))
        return findings
    latest = records[0]
    age = _hours(now - latest.timestamp)
    if age > policy.max_age_hours:
        findings.append(_finding("age", CRITICAL, "latest backup %s is %.1f h old (limit %g h): backups have stopped"
                                 % (latest.basename, age, policy.max_age_hours)))
    for record in records[:METADATA_LOOKBACK]:
        if record.basename in metadata_errors:
            what = "latest backup's" if record is latest else "backup %s's" % record.basename
            findings.append(_finding("metadata", CRITICAL, "%s metadata is unreadable or refused: %s"
                                     % (what, metadata_errors[record.basename])))
    if not latest.has_object:
        findings.append(_finding("missing_object", CRITICAL, "latest backup %s has metadata but no object: it cannot be "
                                 "restored" % latest.basename))
    metadata = latest.metadata or {}
    size = metadata.get("size_bytes", latest.object_size)
    if latest.has_object and metadata and latest.object_size != metadata.get("size_bytes"):
        findings.append(_finding("size_mismatch", CRITICAL, "latest object is %d bytes, its metadata says %s: it was "
                                 "replaced or cut short" % (latest.object_size, metadata.get("size_bytes"))))
    if size is not None and size < policy.min_size_bytes:
        findings.append(_finding("min_size", WARNING, "latest backup is %s, under the %s minimum: is the database "
                                 "empty or the dump incomplete?" % (human_size(size), human_size(policy.min_size_bytes))))
    if metadata and metadata.get("encryption") not in KNOWN_ENCRYPTIONS:
        findings.append(_finding("encryption", CRITICAL, "latest backup is recorded with encryption %r, not one of %s"
                                 % (metadata.get("encryption"), ", ".join(KNOWN_ENCRYPTIONS))))
    if header_error:
        header_errors[latest.basename] = header_error
    findings.extend(_encryption(records, header_errors, keyring_ids, keyring_error))
    findings.extend(_signatures(records, signing_keys, signature_fix))
    findings.extend(_frequency(records, now, policy))
    findings.extend(_size_drop(records, policy))
    findings.extend(_orphan_findings(orphans, now, policy))
    return findings


def physical_only_findings(records, orphans, now, policy, label="BACKUP_KIND"):
    """The dump rules' place on a host whose schedule makes no dumps (BACKUP_KIND physical): no finding about their
    age, size or count - its base and wal rules judge it - but an info finding when dumps of an earlier kind are still
    in the bucket (prune keeps or deletes them by the retention rules), and the orphans rule as usual (an interrupted
    upload is one whatever made it). ``records`` newest first."""
    findings = []
    if records:
        findings.append(_finding("dumps", INFO, "%s is physical: this host's schedule makes no dumps, so the dump "
                                 "rules (age, size, frequency) do not apply; %d dump(s) of an earlier kind are still "
                                 "in the bucket, newest %s (%.1f h old), kept or deleted by prune's retention rules"
                                 % (label, len(records), records[0].basename, _hours(now - records[0].timestamp))))
    findings.extend(_orphan_findings(orphans, now, policy))
    return findings


def _orphan_findings(orphans, now, policy):
    """The orphans rule: data objects without metadata older than the policy's grace (an interrupted upload)."""
    grace = now - datetime.timedelta(hours=policy.orphan_grace_hours)
    stale = sorted((item for item in orphans if item["last_modified"] < grace), key=lambda item: item["last_modified"])
    if not stale:
        return []
    return [_finding("orphans", WARNING, "%d object(s) without metadata (uncommitted backups, %s), oldest %s (%.0f h): "
                     "run `quankey-backup prune`"
                     % (len(stale), human_size(sum(item["size"] for item in stale)), stale[0]["key"],
                        (now - stale[0]["last_modified"]).total_seconds() / 3600))]


def leftover_findings(found, policy):
    """The leftovers rule: staging databases, open uploads and expired restore logins older than an hour (warning)."""
    hours = policy.leftover_hours
    old = {"orphans": [], "uploads": [item for item in found["uploads"] if item["age_hours"] >= hours],
           "staging_databases": [item for item in found["staging_databases"] if item["age_hours"] >= hours],
           "restore_logins": [item for item in found["restore_logins"] if item["expired"]]}
    findings = [_finding("leftovers", WARNING, "%s: `quankey-backup prune` removes it once %d h old and unused"
                         % (line, leftovers.STALE_HOURS)) for line in leftovers.describe(old)]
    if found.get("postgres_error"):
        findings.append(_finding("leftovers", INFO, "staging databases not checked: %s" % found["postgres_error"]))
    return findings


def _encryption(records, header_errors, keyring_ids, keyring_error):
    """The encryption rule over the newest few backups: each object's header, and each data key's wrapping key id."""
    findings = []
    for record in records[:METADATA_LOOKBACK]:
        problem = header_errors.get(record.basename)
        if problem:
            what = "latest object" if record is records[0] else "backup %s" % record.basename
            findings.append(_finding("encryption", CRITICAL, "%s failed the encryption check: %s" % (what, problem)))
    if keyring_error:
        findings.append(_finding("encryption", WARNING, "the backups' key ids were not checked: %s" % keyring_error))
    if keyring_ids is None:
        return findings
    unknown = {}
    checked = 0
    for record in records[:METADATA_LOOKBACK]:
        ids = keys.wrapping_ids(record.metadata) if record.metadata else []
        if not ids:
            continue
        checked += 1
        if not any(kid in keyring_ids for kid in ids):
            unknown.setdefault(", ".join(ids), []).append(record.basename)
    for kid, names in sorted(unknown.items(), key=lambda item: -len(item[1])):
        more = " (and %d more of the newest %d)" % (len(names) - 1, checked) if len(names) > 1 else ""
        findings.append(_finding("encryption", WARNING, "backup %s%s is wrapped with key %s, which this host does "
                                 "not hold: it cannot be restored here (add that key to BACKUP_DECRYPTION_KEYS or the "
                                 "keyring file, or BACKUP_IDENTITY_FILE for hybrid-pq recipients, or rekey it where the "
                                 "key is held)" % (names[0], more, kid)))
    return findings


def _signatures(records, signing_keys, signature_fix):
    """The metadata signature rule over the newest few backups: trust.judge's verdict on each.

    A document that is not its backup's, or whose signature is invalid, is critical; unsigned or
    signed with a key not held here is a warning (none when that key is also missing for the data
    key: the encryption rule reports it). The seed's backups are counted only on request
    (:func:`check_health`) and have no signature to check.
    """
    findings = []
    for record in records[:METADATA_LOOKBACK]:
        if not record.metadata or record.seed:
            continue
        verdict = record.verdict or trust.judge(record, signing_keys, signature_fix)
        if verdict.outcome in (trust.VALID, trust.NOT_CHECKED):
            continue
        if verdict.outcome == trust.UNKNOWN_KEY and verdict.key_id in keys.wrapping_ids(record.metadata):
            continue  # a missing key that also wraps the data key is the encryption rule's finding
        findings.append(_finding("metadata_signature", CRITICAL if verdict.outcome == trust.INVALID else WARNING,
                                 verdict.problem))
    return findings


def _frequency(records, now, policy):
    window_start = max(now - datetime.timedelta(days=policy.window_days), records[-1].timestamp)
    span = _hours(now - window_start)
    expected = int(span // policy.interval_hours)
    taken = sum(1 for record in records if record.timestamp >= window_start)
    if expected >= 2 and taken < expected - 1:
        return [_finding("frequency", WARNING, "%d backups in the last %.0f h, the schedule implies %d (one every %g h): "
                         "runs are being missed" % (taken, span, expected, policy.interval_hours))]
    return []


def _size_drop(records, policy):
    sizes = [record.metadata["size_bytes"] for record in records[:METADATA_LOOKBACK] if record.metadata]
    if len(sizes) < 3:
        return []
    previous = sorted(sizes[1:])
    median = previous[len(previous) // 2]
    if median and sizes[0] < median * policy.size_drop_ratio:
        return [_finding("size_drop", WARNING, "latest backup is %s, %.0f%% smaller than the usual %s: did data go missing?"
                         % (human_size(sizes[0]), 100 - 100.0 * sizes[0] / median, human_size(median)))]
    return []


def lock_findings(locks, now, policy, label="BACKUP_OBJECT_LOCK_MODE"):
    """Findings of the object_lock rule (BACKUP_OBJECT_LOCK_MODE set): ``locks`` is ``[(basename, retain-until or
    None)]`` of the good backups among the newest, newest first. A warning when the newest is not locked, when no good
    backup is locked any more, or when only one still is and its lock ends within ``max(48 h, 2 intervals)``: after
    that, nothing stops whoever holds delete rights from erasing the last good backup."""
    if not locks:
        return []
    findings = []
    name, until = locks[0]
    if until is None:
        findings.append(_finding("object_lock", WARNING, "latest good backup %s is not locked, though %s asks for it: "
                                 "check that the bucket has Object Lock and what the backup logged" % (name, label)))
    held = [(name, until) for name, until in locks if until is not None and until > now]
    horizon = max(48.0, 2 * policy.interval_hours)
    if not held:
        findings.append(_finding("object_lock", WARNING, "no good backup is locked any more (of the newest %d): nothing "
                                 "stops their deletion" % len(locks)))
    elif len(held) == 1 and _hours(held[0][1] - now) <= horizon:
        findings.append(_finding("object_lock", WARNING, "the only locked good backup, %s, is locked until %s (%.0f h "
                                 "from now): after that nothing stops its deletion; new backups are not being locked or "
                                 "made" % (held[0][0], held[0][1].strftime("%Y-%m-%dT%H:%M:%SZ"),
                                           _hours(held[0][1] - now))))
    return findings


def replica_findings(newest_good, replica_records, policy, bucket):
    """Findings of the replica rule (S3_REPLICA_BUCKET set): a warning when the primary's newest good backup
    (``newest_good``, a record, or None when there is none) is not on the replica, or when the replica's newest backup
    (``replica_records``: its listing, newest first) is older than it by more than the schedule's interval."""
    if newest_good is None:
        return []
    held = [record for record in replica_records if record.has_object]
    problems = []
    if newest_good.basename not in set(record.basename for record in held):
        problems.append("the newest good backup %s is not on the replica s3://%s" % (newest_good.basename, bucket))
    if not held:
        problems.append("the replica holds no backup of this database")
    else:
        lag = _hours(newest_good.timestamp - held[0].timestamp)
        if lag > policy.interval_hours:
            problems.append("the replica's newest backup %s is %.1f h older than the primary's (more than the %g h between "
                            "backups)" % (held[0].basename, lag, policy.interval_hours))
    if not problems:
        return []
    return [_finding("replica", WARNING, "; ".join(problems) + ": the backup logs say why its copy failed; "
                     "`quankey-backup replicate` copies what the replica lacks")]


# pg_stat_archiver's row and the archiving settings, one line (psql -A, fields split by the unit separator); times as
# epoch seconds, so that no time zone or locale reads them.
ARCHIVER_SQL = ("SELECT current_setting('archive_mode'), current_setting('archive_command'), archived_count, "
                "coalesce(last_archived_wal, ''), coalesce(extract(epoch FROM last_archived_time)::text, ''), failed_count, "
                "coalesce(last_failed_wal, ''), coalesce(extract(epoch FROM last_failed_time)::text, '') "
                "FROM pg_stat_archiver")


def parse_archiver(row):
    """:data:`ARCHIVER_SQL`'s row as a dict (times as aware datetimes or None)."""
    def when(text):
        return datetime.datetime.fromtimestamp(float(text), datetime.timezone.utc) if text else None
    return {"archive_mode": row[0], "archive_command": row[1], "archived_count": int(row[2]),
            "last_archived_wal": row[3] or None, "last_archived_time": when(row[4]), "failed_count": int(row[5]),
            "last_failed_wal": row[6] or None, "last_failed_time": when(row[7])}


def _stamp(when):
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else "never"


def wal_findings(archiver, newest, now, max_lag_minutes, *, where="the bucket", archiver_error=None, listed=True):
    """The wal rule (WAL_ARCHIVING: this host archives its WAL with wal-push).

    ``archiver``: the server's pg_stat_archiver row and archiving settings (:func:`parse_archiver`), None when it was
    not read (``archiver_error`` says why: a warning). ``newest``: ``(name, last_modified)`` of the newest archived WAL
    segment in the bucket (``where``), None when there is none; ``listed`` false: the bucket could not be listed (the
    s3_access rule says so), only the server's side is judged.

    Critical: no segment archived at all; archive_mode off; PostgreSQL's last archiving attempt failed (its
    last_failed_time after its last_archived_time): WAL piles up in pg_wal and the RPO grows. Warning: the newest
    archived segment older than ``max_lag_minutes`` (the RPO achieved). Info: failures since the statistics' reset
    that a later success followed.
    """
    findings = []
    if archiver is None:
        findings.append(_finding("wal", WARNING, "pg_stat_archiver not read, so archiving failures are not checked: %s"
                                 % (archiver_error or "no PostgreSQL client here")))
    else:
        if archiver["archive_mode"] not in ("on", "always"):
            findings.append(_finding("wal", CRITICAL, "archive_mode is %s: the server archives no WAL (set with ALTER "
                                     "SYSTEM, it takes effect only after a restart of PostgreSQL)"
                                     % archiver["archive_mode"]))
        failed_at, archived_at = archiver["last_failed_time"], archiver["last_archived_time"]
        if archiver["failed_count"] and failed_at is not None and (archived_at is None or failed_at > archived_at):
            findings.append(_finding("wal", CRITICAL, "WAL archiving is failing: PostgreSQL's last attempt, %s at %s, "
                                     "failed (%d failure(s) since the statistics' reset; last success: %s at %s); the "
                                     "segments wait in pg_wal until a push succeeds, filling its disk: the server log "
                                     "has wal-push's ERROR lines"
                                     % (archiver["last_failed_wal"], _stamp(failed_at), archiver["failed_count"],
                                        archiver["last_archived_wal"] or "none", _stamp(archived_at))))
        elif archiver["failed_count"]:
            findings.append(_finding("wal", INFO, "%d WAL archiving failure(s) since the statistics' reset, the last (%s "
                                     "at %s) followed by a success (%s at %s)"
                                     % (archiver["failed_count"], archiver["last_failed_wal"], _stamp(failed_at),
                                        archiver["last_archived_wal"], _stamp(archived_at))))
    if not listed:
        return findings
    if newest is None:
        findings.append(_finding("wal", CRITICAL, "no WAL segment is archived in %s: archive_command does not run "
                                 "wal-push, or every push fails (the server log says why)" % where))
        return findings
    lag = (now - newest[1]).total_seconds() / 60.0
    if lag > max_lag_minutes:
        findings.append(_finding("wal", WARNING, "the newest archived WAL segment, %s, is %.0f min old (limit %d min): "
                                 "transactions since then are in no archive (the RPO achieved); on a quiet server set "
                                 "archive_timeout below the limit so that it still archives a segment"
                                 % (newest[0], lag, max_lag_minutes)))
    return findings


def newest_wal_segment(settings, store):
    """``(name, last_modified)`` of the newest WAL segment archived under this host's WAL prefix, or None."""
    newest = None
    for item in store.list_objects(layout.wal_prefix(settings.prefix, settings.host)):
        name = item["key"].rsplit("/", 1)[-1]
        try:
            if not walnames.parse(name).is_segment:
                continue
        except ConfigError:
            continue  # not an archived file's name: not the wal rule's business
        if newest is None or item["last_modified"] > newest[1]:
            newest = (name, item["last_modified"])
    return newest


def _wal(settings, store, pg, now, report):
    """The wal rule's findings, and ``report["wal"]``: the archiver's state and the newest archived segment."""
    archiver, error = None, None
    if pg is None:
        error = "no PostgreSQL client can be made here (DB_HOST, PG_BIN_DIR)"
    else:
        try:
            rows = pg.query(ARCHIVER_SQL, step="health")
            archiver = parse_archiver(rows[0])
        except BackupError as exc:
            error = str(exc)
        except (IndexError, ValueError) as exc:
            error = "pg_stat_archiver's answer was not understood (%s)" % exc
    newest, listed = None, store is not None
    if listed:
        try:
            newest = newest_wal_segment(settings, store)
        except StorageError as exc:
            return [_finding("s3_access", CRITICAL, str(exc))] + wal_findings(
                archiver, None, now, settings.wal_max_lag_minutes, archiver_error=error, listed=False)
    summary = dict((key, _stamp(value) if isinstance(value, datetime.datetime) else value)
                   for key, value in (archiver or {}).items() if key != "archive_command")
    summary.update(newest_segment=newest[0] if newest else None,
                   newest_age_seconds=round((now - newest[1]).total_seconds(), 1) if newest else None)
    report["wal"] = summary
    return wal_findings(archiver, newest, now, settings.wal_max_lag_minutes, archiver_error=error, listed=listed,
                        where="s3://%s/%s" % (settings.bucket, layout.wal_prefix(settings.prefix, settings.host)))


def base_findings(newest, now, max_age_days, *, where="the bucket", listed=0, problem=None):
    """The base rule (WAL_ARCHIVING: this host's point-in-time recovery starts from a base backup).

    ``newest``: the newest usable base backup (catalog/layout.py's BaseRecord: its data object there, its metadata
    readable and not refused), None when there is none; ``listed``: how many base backups ``where`` holds;
    ``problem``: why the newest one listed is not usable, when it is not. Critical: no usable base backup (nothing to
    recover from). Warning: the newest older than ``max_age_days`` (BASE_MAX_AGE_DAYS), or a newer one unusable."""
    findings = []
    if newest is None:
        findings.append(_finding("base", CRITICAL, "no %sbase backup of this host in %s%s: point-in-time recovery has "
                                 "nothing to start from, and prune deletes no WAL; take one with `quankey-backup "
                                 "basebackup` and schedule it at least every BASE_MAX_AGE_DAYS (%d) days"
                                 % ("usable " if listed else "", where,
                                    " (%d listed; the newest: %s)" % (listed, problem) if listed else "", max_age_days)))
        return findings
    if problem:
        findings.append(_finding("base", WARNING, "a base backup newer than %s is not usable: %s"
                                 % (newest.basename, problem)))
    age_days = (now - newest.timestamp).total_seconds() / 86400.0
    if age_days > max_age_days:
        findings.append(_finding("base", WARNING, "the newest base backup, %s, is %.1f days old (limit %d days, "
                                 "BASE_MAX_AGE_DAYS): a point-in-time recovery replays all WAL archived since it, and "
                                 "prune keeps all that WAL; take one with `quankey-backup basebackup`"
                                 % (newest.basename, age_days, max_age_days)))
    return findings


def _base_usable(store, record, signing_keys):
    """Why a base backup cannot be recovered from (a few words), or None: its data object there, of the size its
    metadata records, the metadata readable and not refused by its signature or place."""
    if not record.has_object:
        return "%s has no data object" % record.basename
    try:
        record.metadata = documents.decode_base_metadata(store.get_bytes(record.metadata_key), record.metadata_key)
    except IntegrityError as exc:
        return exc.message
    if record.metadata["size_bytes"] != record.object_size:
        return "%s: its data object is %d bytes, its metadata says %d" % (
            record.basename, record.object_size, record.metadata["size_bytes"])
    record.verdict = trust.judge_base(record, signing_keys)
    if record.verdict.outcome in (trust.INVALID, trust.UNSIGNED):
        return record.verdict.problem or "%s: metadata %s" % (record.basename, record.verdict.describe())
    return None


def _base(settings, store, signing_keys, now, report):
    """The base rule's findings, and ``report["base"]``: the newest usable base backup (name, time, age) and how many
    the bucket holds. Reads the metadata of the newest few (METADATA_LOOKBACK) only."""
    where = "s3://%s/%s" % (settings.bucket, layout.base_prefix(settings.prefix, settings.host))
    try:
        records, _orphans = layout.base_records_from_listing(settings.prefix, store.list_objects(
            layout.base_prefix(settings.prefix, settings.host)))
        newest, problem = None, None
        for record in records[:METADATA_LOOKBACK]:
            why = _base_usable(store, record, signing_keys)
            if why is None:
                newest = record
                break
            problem = problem or why
    except AccessDeniedError as exc:
        return [_finding("base", WARNING, "base backups not listed, so their age is not checked: %s" % exc)]
    except StorageError as exc:
        return [_finding("s3_access", CRITICAL, str(exc))]
    report["base"] = {"count": len(records), "newest": newest.basename if newest else None,
                      "timestamp": _stamp(newest.timestamp) if newest else None,
                      "age_days": round((now - newest.timestamp).total_seconds() / 86400.0, 2) if newest else None,
                      "start_wal_file": newest.metadata["start_wal_file"] if newest else None,
                      "signature": newest.verdict.describe() if newest else None}
    return base_findings(newest, now, settings.base_max_age_days, where=where, listed=len(records), problem=problem)


def overall_status(findings):
    """ok, warning or critical: the worst finding."""
    worst = max([_RANK[item["severity"]] for item in findings] or [0])
    return {0: OK, 1: WARNING, 2: CRITICAL}[worst]


def report_lines(report):
    """A report (:func:`check_health`'s) as the lines a person reads: the status of the host's database, its latest
    backup, then each finding with its severity and rule. ``quankey-backup health`` prints them, the backup_health
    module returns them (``report_lines``) and playbooks/health.yml prints every host's."""
    lines = ["%s: backups of %s on %s in s3://%s"
             % (report["status"].upper(), report["database"], report["host"], report["bucket"])]
    latest = report.get("latest")
    if latest:
        size = latest.get("size_bytes", latest.get("object_size"))
        lines.append("  latest: %s, %.1f h old, %s, %d backup(s) in all"
                     % (latest["name"], latest["age_hours"], human_size(size) if size is not None else "size unknown",
                        report.get("backups", 0)))
        kept = latest.get("globals")
        if kept:
            lines.append("  globals: %d role(s), %d membership(s), %d tablespace(s), passwords %s"
                         % (kept["roles"], kept["memberships"], kept["tablespaces"], kept["passwords"]))
    last_drill = report.get("drill")
    if last_drill:
        lines.append("  drill: %s %s, backup %s, RTO %s, RPO %.1f h" % (
            last_drill["result"], last_drill["timestamp"], last_drill["backup"],
            "%.1fs" % last_drill["rto_seconds"] if last_drill["rto_seconds"] is not None else "-",
            (last_drill["rpo_seconds"] or 0) / 3600.0))
    wal = report.get("wal")
    if wal:
        lines.append("  wal: newest archived %s, %s; %s archived, %s failed since the statistics' reset" % (
            wal["newest_segment"] or "none",
            "%.1f min old" % (wal["newest_age_seconds"] / 60.0) if wal["newest_age_seconds"] is not None else "-",
            wal.get("archived_count", "?"), wal.get("failed_count", "?")))
    base = report.get("base")
    if base:
        lines.append("  base: newest %s, %s; %d base backup(s)" % (
            base["newest"] or "none", "%.1f days old" % base["age_days"] if base["age_days"] is not None else "-",
            base["count"]))
    for finding in report["findings"]:
        lines.append("  %-8s %-18s %s" % (finding["severity"].upper(), finding["rule"], finding["message"]))
    return lines


def check_health(settings, policy=None, store=None, now=None, list_backups=None, load_metadata=None, *, pg=None):
    """Gather and assess; returns the report dict (status, exit_code, findings, latest, counts). Never raises BackupError.

    ``store`` and ``pg`` are the adapters (default: the settings', workflows/wiring.py: S3 retried at most
    HEALTH_RETRY_WINDOW seconds, and no PostgreSQL client when none can be made here).
    """
    policy = policy or HealthPolicy()
    now = now or layout.utcnow()
    list_backups = list_backups or _list_backups
    load_metadata = load_metadata or _load_metadata
    report = {"host": settings.host, "database": settings.db_name, "bucket": settings.bucket,
              "checked_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "latest": None, "backups": 0, "keyring_key_ids": [],
              "drill": None, "wal": None, "base": None}
    try:
        settings.require("db_name", "bucket")
        store = wiring.store_or_open(settings, store, HEALTH_RETRY_WINDOW)
        records, orphans = list_backups(settings, store)
        seed_records = [record for record in records if record.seed]
        if not settings.allow_seed:
            records = [record for record in records if not record.seed]
    except BackupError as exc:
        rule = "s3_access" if isinstance(exc, StorageError) else "config"
        findings = [_finding(rule, CRITICAL, str(exc))]
        if rule == "s3_access" and settings.archives_wal:  # the server still says whether its archiving fails
            findings.extend(_wal(settings, None, wiring.postgres_or_none(settings, pg), now, report))
        return _finish(report, findings)
    metadata_errors = {}
    header_errors = {}
    try:
        for record in records[:METADATA_LOOKBACK]:
            try:
                load_metadata(store, record)
            except IntegrityError as exc:
                metadata_errors[record.basename] = str(exc)
        heads = {}
        for record in records[:METADATA_LOOKBACK]:
            problem, heads[record.basename] = _header_problem(store, record) if record.has_object else (None, None)
            if problem:
                header_errors[record.basename] = problem
        if records and records[0].basename not in header_errors:
            problem = _data_key_problem(settings, records[0], heads.get(records[0].basename))
            if problem:
                header_errors[records[0].basename] = problem
    except StorageError as exc:
        return _finish(report, [_finding("s3_access", CRITICAL, str(exc))])
    keyring_ids, keyring_error, signing_keys = _held_keys(settings)
    fix = keys.KeyContext(settings).signature_fix()
    for record in records[:METADATA_LOOKBACK]:
        if record.metadata is not None:
            record.verdict = trust.judge(record, signing_keys, fix)
    if settings.makes_dumps:
        findings = assess(records, orphans, now, policy, metadata_errors=metadata_errors, header_errors=header_errors,
                          keyring_ids=keyring_ids, keyring_error=keyring_error, signing_keys=signing_keys,
                          signature_fix=fix)
    else:
        findings = physical_only_findings(records, orphans, now, policy, settings.label("backup_kind"))
    if settings.object_lock_mode:  # one HEAD per good backup of the newest few: how long each stays locked
        good = [record for record in records[:METADATA_LOOKBACK] if record.has_object and record.verdict is not None
                and record.verdict.trusted]
        try:
            locks = [(record.basename, (store.lock_of(record.object_key) or (None, None))[1]) for record in good]
        except StorageError as exc:
            findings.append(_finding("s3_access", CRITICAL, str(exc)))
        else:
            findings.extend(lock_findings(locks, now, policy, settings.label("object_lock_mode")))
    if settings.replica_bucket and settings.makes_dumps:  # the replica holds dumps only
        findings.extend(_replica(settings, records, metadata_errors, header_errors, policy, list_backups))
    try:
        report["leftovers"] = leftovers.find(settings, store, orphans, now, pg=wiring.postgres_or_none(settings, pg))
    except StorageError as exc:
        findings.append(_finding("s3_access", CRITICAL, str(exc)))
    else:
        findings.extend(leftover_findings(report["leftovers"], policy))
    findings.extend(_drills(settings, store, signing_keys, now, report))
    if settings.archives_wal:
        findings.extend(_wal(settings, store, wiring.postgres_or_none(settings, pg), now, report))
        findings.extend(_base(settings, store, signing_keys, now, report))
    if seed_records and not settings.allow_seed:
        findings.append(_finding("seed_backups", INFO, "%d backup(s) made by the seed's scripts (newest %s) are not counted: "
                                 "their metadata is unsigned; adopt them (quankey-backup adopt), or set %s to true to count them"
                                 % (len(seed_records), seed_records[0].basename, settings.label("allow_seed"))))
    if signing_keys is None and any(record.metadata and not record.seed for record in records[:METADATA_LOOKBACK]):
        findings.append(_finding("metadata_signature", INFO, "metadata signatures not checked: no signing key or master "
                                 "key is set here (BACKUP_SIGNING_KEY or BACKUP_ENCRYPTION_KEY)"))
    report["backups"] = len(records)
    report["keyring_key_ids"] = keyring_ids or []
    if records and settings.makes_dumps:  # a physical-only host's old dumps are no "latest backup" (the monitor's age)
        latest = records[0].summary()
        latest["age_hours"] = round(_hours(now - records[0].timestamp), 2)
        report["latest"] = latest
        if records[0].metadata and not records[0].seed and not latest.get("globals") and settings.globals:
            findings.append(_finding("globals", INFO, "latest backup %s has no globals (roles, memberships, settings): "
                                     "restored onto a new server, its roles must be made by hand; the next backup keeps "
                                     "them (%s)" % (records[0].basename, settings.label("globals"))))
    return _finish(report, findings)


def combine_drills(series):
    """Pure: one :func:`drill.latest_drills` answer from several (a host that archives its WAL: its database's dump
    drills, then its cluster's point-in-time drills, database ``@cluster``): the newest believed report of any, the
    newest believed passed one of any (either kind of drill counts), every untrusted one, and how many were listed."""
    def newest(reports):
        reports = [report for report in reports if report is not None]
        return max(reports, key=lambda report: layout.parse_time(report["started"])) if reports else None
    return {"last": newest([found["last"] for found in series]),
            "last_passed": newest([found["last_passed"] for found in series]),
            "untrusted": [item for found in series for item in found["untrusted"]],
            "reports": sum(found["reports"] for found in series)}


def drill_rule(series, now, max_age_days, explicit):
    """The drill rule (pure) over one or more series of drill reports (:func:`combine_drills`): ``(the newest believed
    report or None, [(severity, message)])``. A passed drill of any series is the drill the age is judged by (a point-
    in-time drill proves the cluster restores as a dump drill proves the database does); a series whose newest drill
    failed is critical even when another series passed since: what it restores is still not proven."""
    combined = combine_drills(series)
    findings = drill.drill_findings(combined, now, max_age_days, explicit)
    for found in series:
        last = found["last"]
        if last is not None and last is not combined["last"] and last["result"] == drill.FAILED:
            findings[0:0] = drill.drill_findings({"last": last, "last_passed": None, "untrusted": [], "reports": 0},
                                                 now, max_age_days, False)
    return combined["last"], findings


def _drills(settings, store, signing_keys, now, report):
    """The drill rule (workflows/drill.py): ``report["drill"]``, the newest believed drill report (or None), and the
    findings. A report is believed only when its signature verifies with a key held here (or no key is held here).
    A host that archives its WAL (WAL_ARCHIVING: pg_backup_kind physical or both) is also drilled point-in-time
    (``drill --pitr``, database ``@cluster``): those reports count too (:func:`drill_rule`)."""
    report["drill"] = None
    explicit = settings.drill_max_age_days is not None
    databases = (([settings.db_name] if settings.makes_dumps else [])
                 + ([drill.PITR_DATABASE] if settings.archives_wal else []))
    try:
        series = [drill.latest_drills(settings, store, settings.host, database, signing_keys) for database in databases]
    except AccessDeniedError as exc:  # a host whose IAM policy reaches only its own backups: drills not asked for here
        return [_finding("drill", WARNING, "restore drill reports not read: %s" % exc)] if explicit else []
    except StorageError as exc:
        return [_finding("drill", WARNING if explicit else INFO, "restore drill reports not read: %s" % exc)]
    last, findings = drill_rule(series, now, settings.drill_max_age_days or drill.DEFAULT_MAX_AGE_DAYS, explicit)
    report["drill"] = drill.summary(last)
    return [_finding("drill", severity, message) for severity, message in findings]


def _replica(settings, records, metadata_errors, header_errors, policy, list_backups):
    """The replica rule's findings: the replica listed (retried at most HEALTH_RETRY_WINDOW seconds) and compared with
    the primary's newest good backup (its object there, its metadata and header sound, its signature not refused)."""
    good = [record for record in records[:METADATA_LOOKBACK] if record.has_object and record.metadata is not None
            and record.basename not in metadata_errors and record.basename not in header_errors
            and (record.verdict is None or record.verdict.outcome != trust.INVALID)]
    try:
        replica = wiring.open_replica(settings, HEALTH_RETRY_WINDOW)
        replica_records = list_backups(settings, replica)[0]
    except BackupError as exc:
        return [_finding("replica", WARNING, "the replica s3://%s cannot be read: %s" % (settings.replica_bucket, exc))]
    return replica_findings(good[0] if good else None, replica_records, policy, settings.replica_bucket)


def _held_keys(settings):
    """``(key ids held, why they could not be read, signing keys)``; ids and signing keys are None when none is set."""
    if not keys.holds_any_key(settings):
        return None, None, None
    context = keys.KeyContext(settings)
    try:
        ids = context.known_ids()
    except ConfigError as exc:
        return None, str(exc), None
    try:
        by_id = context.signing_keys()[2]
    except ConfigError as exc:
        return ids, str(exc), None
    return ids, None, by_id or None


def _header_problem(store, record):
    """``(what is wrong with the first bytes of a backup's object for its recorded encryption, or None; those bytes)``."""
    if record.object_size == 0:  # a ranged GET of an empty object is an error, not an empty answer
        return "the object is empty", b""
    try:
        check = modes.of(record.metadata or {"encryption": modes.DEFAULT}, record.basename).check_header
    except IntegrityError:
        check = modes.get(modes.DEFAULT).check_header  # an unknown mode is the encryption rule's finding
    head = store.get_range(record.object_key, 0, min(crypto.HEADER_SIZE, record.object_size or crypto.HEADER_SIZE))
    try:
        check(head)
    except IntegrityError as exc:
        return exc.message, head
    return None, head


def _data_key_problem(settings, record, head):
    """Whether the newest backup's data key, opened with the keys held here, is the one of its object (None: fine).

    The key commitment in the object's header proves it (no download). A backup whose data key
    no key here opens is left to the key id rule; an envelope that does not open for this
    backup's place (copied from another backup) or whose key does not fit the object is the
    problem reported.
    """
    metadata = record.metadata or {}
    if head is None or metadata.get("encryption") not in modes.NAMES or not modes.of(metadata).has_data_key or not (
            keys.configured(settings) or settings.identity_file):
        return None
    try:
        data_key = keys.KeyContext(settings).open(record)
    except (WrongKeyError, ConfigError):
        return None  # no key here opens it: the key id rule says so
    except IntegrityError as exc:
        return "its data key does not open: %s" % exc.message
    try:
        crypto.check_key_commitment(head, data_key, record.basename)
    except IntegrityError as exc:
        return "its data key is not its object's: %s" % exc.message
    return None


def _finish(report, findings):
    status = overall_status(findings)
    report["status"] = status
    report["exit_code"] = EXIT_CODES[status]
    report["findings"] = findings
    return report
