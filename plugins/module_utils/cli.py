# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``quankey-backup``: the host command cron runs (backup, list, restore, verify, health, prune, rekey, keygen,
undelete...).

Settings come from the seed's variables in the environment and an env file
(``--env-file``, default /etc/quankey/backup.env when it exists); the
environment wins. Exit codes are documented in docs/CLI.md and errors.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback

from . import config
from . import keys
from .catalog import layout
from .errors import BackupError, ConfigError, EXIT_HEALTH_CRITICAL, EXIT_INTERNAL, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED
from .progress import Progress, stages_text
from .units import human_size
from .workflows import (adopt, backup, basebackup, drill, health, inventory, leftovers, pitr, prune, rekey, replica, restore,
                        runrecord, undelete, wal, wiring)

LOG = logging.getLogger("quankey_backup")
TRUE_WORDS = ("1", "true", "yes", "on")


def _parser():
    parser = argparse.ArgumentParser(
        prog="quankey-backup",
        description="Encrypted, verified PostgreSQL backups to S3. Settings: the seed's variables "
                    "(DB_HOST, DB_NAME, S3_BUCKET, BACKUP_ENCRYPTION_KEY, ...) from the environment or --env-file.")
    parser.add_argument("--env-file", help="read settings from this file (default %s when it exists)" % config.DEFAULT_ENV_FILE)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    backup_command = commands.add_parser("backup", help="take one backup now")
    backup_command.add_argument("--json", action="store_true", help="print the result as JSON")

    base_command = commands.add_parser("basebackup", help="take one physical base backup of the cluster now (pg_basebackup, "
                                       "tar, no WAL: wal-push archives it), streamed encrypted to the bucket and checked "
                                       "against its manifest")
    base_command.add_argument("--fast", action="store_true", help="ask for an immediate checkpoint (default: spread, "
                              "gentle on a busy server)")
    base_command.add_argument("--json", action="store_true", help="print the result as JSON")

    listing_command = commands.add_parser("list", help="list backups, newest first")
    _add_scope(listing_command)
    listing_command.add_argument("--all", action="store_true", help="every host and database in the bucket")
    listing_command.add_argument("--since", help="only backups taken at or after this time (ISO 8601 or 20250809_030000)")
    listing_command.add_argument("--limit", type=int, default=0, help="show at most this many (newest)")
    listing_command.add_argument("--details", action="store_true", help="read each shown backup's metadata too")
    listing_command.add_argument("--include-deleted", action="store_true",
                                 help="also the backups delete markers hide (a versioned bucket), marked DELETED with when "
                                 "(needs s3:ListBucketVersions)")
    listing_command.add_argument("--json", action="store_true", help="print JSON")

    restore_command = commands.add_parser("restore", help="restore a backup into a new database")
    _add_selection(restore_command)
    restore_command.add_argument("--target-db", help="database to create (default <db>_restored_<timestamp>)")
    restore_command.add_argument("--force", action="store_true", help="replace an existing target database (it is kept, renamed)")
    restore_command.add_argument("--no-owner", action="store_true", help="skip ownership and privileges (roles missing here)")
    restore_command.add_argument("--with-globals", action="store_true",
                                 help="first create the roles (with memberships, settings, passwords) the backup kept that "
                                 "this server lacks, then give the database its owner, ACL and settings: for a new server "
                                 "after a complete loss; existing roles change only with --force")
    restore_command.add_argument("--restore-role", help="the plain role the backup's SQL runs as (BACKUP_RESTORE_ROLE; created "
                                 "when missing)")
    restore_command.add_argument("--jobs", type=_jobs, metavar="N",
                                 help="pg_restore processes at once, each fed by its own ranged reads of the object (RESTORE_JOBS; "
                                 "default: the host's cores, at most 4; a backup without a range index restores with one)")
    restore_command.add_argument("--as-admin", action="store_true",
                                 help="run the backup's SQL as DB_USER even when its source is not trusted (another host's, the "
                                 "seed's, unsigned): only for a backup you trust as much as that login")
    pitr_options = restore_command.add_argument_group(
        "point-in-time recovery", "--pitr restores a physical base backup (basebackup) into --data-dir and replays the "
        "archived WAL (wal-push) up to the target, then promotes: docs/CLI.md, \"Point-in-time recovery\"")
    pitr_options.add_argument("--pitr", action="store_true", help="restore the cluster to a point in time (base backup and "
                              "WAL), not a database from a dump")
    pitr_options.add_argument("--data-dir", help="the new or empty directory the cluster is restored into")
    pitr_options.add_argument("--target-time", help="recover up to this time: ISO 8601, a time zone (naive is UTC), e.g. "
                              "2025-08-10T05:13:02Z; default: the end of the archive")
    pitr_options.add_argument("--target-lsn", help="recover up to this WAL location (e.g. 0/16B3748)")
    pitr_options.add_argument("--target-name", help="recover up to this restore point (pg_create_restore_point)")
    pitr_options.add_argument("--target-exclusive", action="store_true", help="stop just before the target, not just "
                              "after it")
    pitr_options.add_argument("--target-timeline", help="latest (default), current or a timeline number")
    pitr_options.add_argument("--target-action", choices=pitr.TARGET_ACTIONS, default="promote",
                              help="at the target: promote (default; the server is then stopped, to be started by its "
                              "service) or pause (it keeps running, paused, on a private socket, for you to look)")
    pitr_options.add_argument("--os-user", help="the OS user the server runs as and owns the data directory (default "
                              "postgres as root, else you)")
    pitr_options.add_argument("--config-file", help="the postgresql.conf to recover with when the data directory has none "
                              "of its own (default: the one cluster's in /etc/postgresql/<major>/, else PostgreSQL's defaults)")
    pitr_options.add_argument("--no-archive", action="store_true", help="the restored server archives no WAL (archive_mode "
                              "off while it recovers): for a scratch copy that must not write to the archive")
    pitr_options.add_argument("--timeout", type=int, default=pitr.DEFAULT_TIMEOUT, metavar="SECONDS",
                              help="give up when recovery takes longer (default %d)" % pitr.DEFAULT_TIMEOUT)
    _add_allow_unsigned(restore_command)
    restore_command.add_argument("--json", action="store_true", help="print the result as JSON")

    verify_command = commands.add_parser("verify", help="download, check and decrypt a backup without restoring it")
    _add_selection(verify_command)
    verify_command.add_argument("--base", action="store_true", help="verify a physical base backup (latest, or --backup "
                                "NAME; a base backup's name also selects this): every file against its manifest")
    _add_allow_unsigned(verify_command)
    verify_command.add_argument("--json", action="store_true", help="print the result as JSON")

    check_command = commands.add_parser("health", help="check the backups' health (exit 0 ok, 1 warning, 2 critical)")
    check_command.add_argument("--json", action="store_true", help="print JSON (also OUTPUT_JSON=true)")
    check_command.add_argument("--max-age-hours", type=float, help="latest older than this is critical (36)")
    check_command.add_argument("--min-size-bytes", type=int, help="latest smaller than this is a warning (1 MiB)")
    check_command.add_argument("--schedule", help="daily, 12-hour, 6-hour or hours between backups (BACKUP_SCHEDULE, daily)")
    check_command.add_argument("--window-days", type=float, help="window of the frequency rule (7)")
    check_command.add_argument("--leftover-hours", type=float, help="what interrupted runs left is a warning once this old (1)")

    prune_command = commands.add_parser("prune", help="delete the backups no retention rule keeps (BACKUP_RETENTION_DAYS, "
                                        "BACKUP_MIN_KEEP, BACKUP_KEEP_DAILY/_WEEKLY/_MONTHLY/_YEARLY)")
    prune_command.add_argument("--dry-run", action="store_true", help="say each backup's fate and the rules behind it, "
                               "delete nothing")
    prune_command.add_argument("--replica", action="store_true", help="prune only the replica (S3_REPLICA_BUCKET), by "
                               "the same rules on its own listing (S3_REPLICA_PRUNE=true prunes it after the primary)")
    prune_command.add_argument("--kind", choices=config.BACKUP_KINDS, default="both",
                               help="what to prune: logical (the database's dumps), physical (the host's base backups "
                               "and the archived WAL none of the kept ones needs; no DB_NAME needed) or both (default)")
    prune_command.add_argument("--json", action="store_true", help="print the result as JSON")

    replicate_command = commands.add_parser("replicate", help="copy to the replica (S3_REPLICA_BUCKET) each good backup of "
                                            "this host's database it lacks or holds wrong, checked; exit 0 when the "
                                            "replica holds them all")
    replicate_command.add_argument("--all-databases", action="store_true", help="every database of this host, not only "
                                   "DB_NAME")
    replicate_command.add_argument("--verify", action="store_true", help="also download each object the replica holds "
                                   "and check its SHA-256 against the signed metadata")
    replicate_command.add_argument("--dry-run", action="store_true", help="say what is missing or wrong there, copy "
                                   "nothing (exit 1 when a run would copy something)")
    replicate_command.add_argument("--json", action="store_true", help="print the result as JSON")

    rekey_command = commands.add_parser("rekey", help="re-wrap backups' data keys with BACKUP_ENCRYPTION_KEY, or seal them to "
                                        "BACKUP_RECIPIENTS with BACKUP_ENCRYPTION=hybrid-pq (rewrites metadata only)")
    _add_scope(rekey_command)
    rekey_command.add_argument("--all", action="store_true", help="every host and database in the bucket")
    rekey_command.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    rekey_command.add_argument("--json", action="store_true", help="print the result as JSON")

    adopting_command = commands.add_parser("adopt", help="verify each of the seed's backups of DB_NAME and copy it into this "
                                           "format under this host, signed, with its original name and time")
    adopting_command.add_argument("--dry-run", action="store_true", help="verify each one end to end, write nothing")
    adopting_command.add_argument("--delete-originals", action="store_true",
                                  help="delete each original once its copy verified (never before)")
    adopting_command.add_argument("--json", action="store_true", help="print the result as JSON")

    role_command = commands.add_parser("restore-role", help="create BACKUP_RESTORE_ROLE (a plain login role without a password) "
                                       "if missing, and check it may run restored SQL")
    role_command.add_argument("--check", action="store_true", help="only check: create nothing")
    role_command.add_argument("--json", action="store_true", help="print the result as JSON")

    drill_command = commands.add_parser("drill", help="restore drill: restore the newest backup into a scratch database, "
                                        "check it, drop it, store a signed report (exit 0 passed, 2 failed)")
    drill_command.add_argument("--host", help="drill this host's backups (default this host's)")
    drill_command.add_argument("--db", help="drill this database's backups (default DB_NAME)")
    drill_command.add_argument("--all-hosts", action="store_true", help="drill every host and database in the bucket")
    drill_command.add_argument("--assert", dest="assertions", action="append", default=[], metavar="SQL",
                               help="SQL returning one row whose first column is true (after DRILL_ASSERTIONS; repeat)")
    drill_command.add_argument("--pitr", action="store_true", help="a point-in-time drill of the host's cluster: its newest "
                               "base backup and the archived WAL restored into a scratch data directory (the cluster's size, "
                               "under --scratch-dir), promoted, proved and removed")
    drill_command.add_argument("--target-time", help="with --pitr: recover to this time (default: the end of the archive)")
    drill_command.add_argument("--scratch-dir", help="with --pitr: where the scratch data directory goes (default %s)"
                               % drill.PITR_SCRATCH_PARENT)
    drill_command.add_argument("--json", action="store_true", help="print the result as JSON")

    undelete_command = commands.add_parser("undelete", help="bring back a backup that delete markers hide (a versioned "
                                           "bucket), then check it as a restore would")
    undelete_command.add_argument("name", help="the backup's name, as `list --include-deleted` shows it")
    _add_scope(undelete_command)
    undelete_command.add_argument("--dry-run", action="store_true", help="say which delete markers would go, remove none")
    undelete_command.add_argument("--json", action="store_true", help="print the result as JSON")

    push_command = commands.add_parser("wal-push", help="archive one WAL file, for archive_command: "
                                       "`quankey-backup --env-file FILE wal-push %%p` (exit 0 only once it is stored)")
    push_command.add_argument("path", help="the WAL file (%%p): a segment, .partial, .backup or .history file")
    push_command.add_argument("--json", action="store_true", help="print the result as JSON")

    fetch_command = commands.add_parser("wal-fetch", help="restore one archived WAL file, for restore_command: "
                                        "`quankey-backup --env-file FILE wal-fetch %%f %%p` (exit 1: not in the archive)")
    fetch_command.add_argument("name", help="the archived file's name (%%f)")
    fetch_command.add_argument("target", help="where to write it (%%p)")
    fetch_command.add_argument("--host", help="the host whose archive to read (default this host, BACKUP_HOST_ID)")
    fetch_command.add_argument("--prefetch", type=_prefetch, metavar="N",
                               help="segments to fetch ahead at the same time (WAL_PREFETCH, default 4; 0: none)")
    fetch_command.add_argument("--json", action="store_true", help="print the result as JSON")

    keygen_command = commands.add_parser("keygen", help="make a hybrid-pq key pair: the private key file (0600) for the restore "
                                         "side, the public key for BACKUP_RECIPIENTS")
    keygen_command.add_argument("--output", required=True, help="the private key file to create (refused if it exists)")
    keygen_command.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _add_allow_unsigned(parser):
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="use a backup whose metadata is unsigned or signed with a key not held here (not an invalid "
                             "signature: that is always refused)")
    parser.add_argument("--allow-seed", action="store_true", default=None,
                        help="also use backups made by the seed's scripts (unsigned; also BACKUP_ALLOW_SEED=true)")


def _add_scope(parser):
    parser.add_argument("--host", help="the host whose backups to use (default this host, BACKUP_HOST_ID)")
    parser.add_argument("--db", help="the database whose backups to use (default DB_NAME)")


def _add_selection(parser):
    _add_scope(parser)
    parser.add_argument("--backup", help="latest (default), or a backup name such as quankey_backup_20250809_030000 "
                                         "(also BACKUP_FILE)")
    parser.add_argument("--before", help="the latest backup taken before this time (ISO 8601 or 20250809_030000)")


def env_file_path(env_file, environ):
    """The env file to read: --env-file, else $QUANKEY_ENV_FILE, else the default when it exists (or None)."""
    return config.env_file_path(env_file, environ)


def load_environment(env_file, environ):
    """The settings' variables: the env file (see :func:`env_file_path`), then the environment, which wins.

    The file's process variables (config.PROCESS_VARIABLES: proxies, CA bundle, AWS profile, ...) go into ``environ``
    where it does not set them, for boto3; a variable the engine does not use is a warning (config.use_env_file).
    """
    values = {}
    path = env_file_path(env_file, environ)
    if path:
        values, warnings = config.use_env_file(path, environ)
        for warning in warnings:
            LOG.warning(warning)
    for name in config.READ_VARIABLES:
        if environ.get(name):
            values[name] = environ[name]
            values.pop(_FROM_FILE + name, None)
        elif name in values:
            values[_FROM_FILE + name] = True
    return values


_FROM_FILE = "\x00from-file:"  # marks, in load_environment's result, the names the env file set (not a variable name)


def _settings(env, env_file, environ):
    """The Settings of ``env`` (load_environment's), with messages naming the env file only for what it set."""
    from_file = set(name[len(_FROM_FILE):] for name in env if name.startswith(_FROM_FILE))
    clean = dict((name, value) for name, value in env.items() if not name.startswith(_FROM_FILE))
    return config.settings_from_env(clean, origin=env_file_path(env_file, environ), from_origin=from_file), clean


def _emit(data, as_json, lines):
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))


def _cmd_backup(args, settings, env):
    progress = Progress("backup", sys.stderr)
    try:
        result = backup.run_backup(settings, progress=progress)
    finally:
        progress.close()
    args.outcome = result  # for the run's record (main)
    _emit(result, args.json, [
        "backup %s: %s stored at s3://%s/%s" % (result["name"], human_size(result["size_bytes"]), result["bucket"],
                                                result["object_key"]),
        "  dump %s, %d tables, %s + %s, key %s, sha256 %s, %.1fs" % (
            human_size(result["dump_bytes"]), result["table_count"], result["compression"], result["encryption"],
            result["key_id"], result["checksum_sha256"], result["duration_seconds"]),
        "  " + stages_line(result)] + _replica_lines(result.get("replica")))
    return EXIT_OK


def _replica_lines(replica):
    """What `backup` says of its copy to the replica (nothing without one). A failed copy is no failed backup (exit 0:
    the primary's copy is committed and restorable); the warning is logged, and health reports the replica behind."""
    if not replica:
        return []
    if replica["status"] == "ok":
        return ["  replica s3://%s: copied (%s) and verified in %.1fs" % (replica["bucket"], replica["method"],
                                                                          replica["seconds"])]
    return ["  WARNING replica s3://%s: the copy failed (%s); the backup is committed on the primary"
            % (replica["bucket"], replica["error"])]


def _cmd_list(args, settings, env):
    host = args.host or (None if args.all else settings.host)
    since = layout.parse_time(args.since, "--since") if args.since else None
    db = args.db or (None if args.all else settings.db_name)
    store = wiring.store_or_open(settings)  # one client (and one S3_VALIDATE_CERTS warning) for both listings
    data = inventory.find_backups(settings, host=host, db=db, since=since, limit=args.limit, details=args.details,
                                  with_leftovers=host == settings.host and db == settings.db_name,
                                  include_deleted=args.include_deleted, store=store)
    bases = basebackup.find_base_backups(settings, host=host, details=args.details, store=store)  # every database's
    data["base_backups"] = [item for item in bases if since is None or layout.parse_time(item["timestamp"]) >= since]
    if args.limit and args.limit > 0:
        data["base_backups"] = data["base_backups"][:args.limit]
    lines = ["%-50s %-20s %-10s %12s %-4s%s" % ("NAME", "TIME (UTC)", "HOST", "SIZE", "KIND",
                                                "  METADATA" if args.details else "")]
    shown = sorted(data["backups"] + data["base_backups"], key=lambda item: (item["timestamp"], item["name"]),
                   reverse=True)
    for item in shown:
        size = human_size(item["object_size"]) if item["object_size"] is not None else "MISSING"
        lines.append("%-50s %-20s %-10s %12s %-4s%s%s" % (item["name"], item["timestamp"].replace("T", " ").rstrip("Z"),
                                                          item["host"] or "(seed)", size, item.get("kind", "dump"),
                                                          "  " + item["signature"] if "signature" in item else "",
                                                          _globals_word(item) if args.details else "")
                     + _deleted_word(item))
    if not shown:
        lines.append("(no backups)")
    if args.details and host and db:  # the newest restore drill (a believed report) of this host's database
        data["drill"] = drill.last_drill(settings, host, db)
        lines.append("last restore drill: %s" % _drill_words(data["drill"]))
    if "leftovers" in data:
        lines += ["left behind: %s" % line for line in leftovers.describe(data["leftovers"])]
    elif data["orphans"]:
        lines.append("%d object(s) without metadata (uncommitted): run `quankey-backup prune`" % len(data["orphans"]))
    _emit(data, args.json, lines)
    return EXIT_OK


def _drill_words(last):
    """list --details: the newest believed restore drill of the database, in a few words."""
    if last is None:
        return "none (or none whose report verifies here)"
    return "%s %s, backup %s, RTO %s, RPO %.1f h" % (
        last["result"], last["timestamp"], last["backup"],
        "%.1fs" % last["rto_seconds"] if last["rto_seconds"] is not None else "-", (last["rpo_seconds"] or 0) / 3600.0)


def _deleted_word(item):
    """list --include-deleted: since when delete markers hide a backup, and which of its objects."""
    deleted = item.get("deleted")
    if not deleted:
        return ""
    return "  DELETED %s (%s: `quankey-backup undelete %s`)" % (
        deleted["at"].replace("T", " ").rstrip("Z"), ", ".join(key.rsplit("/", 1)[-1] for key in deleted["objects"]),
        item["name"])


def _cmd_undelete(args, settings, env):
    result = undelete.run_undelete(settings, args.name, host=args.host, db=args.db, dry_run=args.dry_run)
    if not result["objects_restored"]:
        head = "%s is not deleted: nothing to bring back" % result["name"]
    else:
        head = "%s %s: %d delete marker(s) %s on %s" % (
            "would undelete" if args.dry_run else "undeleted", result["name"], result["markers_removed"],
            "to remove" if args.dry_run else "removed", ", ".join(result["objects_restored"]))
    lines = [head]
    if result["signature"] is not None:
        lines.append("  checked: data object %s, metadata signature %s" % (human_size(result["size_bytes"]),
                                                                           result["signature"]))
    _emit(result, args.json, lines)
    return EXIT_OK


def _globals_word(item):
    """list --details: whether a backup kept its globals (roles for a restore onto a new server)."""
    kept = item.get("globals")
    if item.get("kind") == "base":
        return ""  # a base backup is the whole cluster's, roles included
    if not kept:
        return ", no globals" if "signature" in item else ""
    return ", globals: %d role(s)%s" % (kept["roles"], "" if kept["passwords"] == "included" else " without passwords")


def _selection(args, env):
    before = layout.parse_time(args.before, "--before") if args.before else None
    return {"backup": args.backup or env.get("BACKUP_FILE") or "latest", "before": before, "host": args.host, "db": args.db}


_PITR_ONLY = ("data_dir", "target_time", "target_lsn", "target_name", "target_exclusive", "target_timeline", "os_user",
              "no_archive", "config_file")
_DUMP_ONLY = ("target_db", "force", "no_owner", "with_globals", "restore_role", "jobs", "as_admin", "db", "before")


def _cmd_restore(args, settings, env):
    if args.pitr:
        return _cmd_restore_pitr(args, settings, env)
    given = ["--" + name.replace("_", "-") for name in _PITR_ONLY if getattr(args, name)]
    if given:
        raise ConfigError("%s belong to point-in-time recovery: add --pitr (and --data-dir)" % ", ".join(given))
    progress = Progress("restore", sys.stderr)
    try:
        result = restore.run_restore(settings, target_db=args.target_db, force=args.force, no_owner=args.no_owner,
                                     progress=progress, allow_unsigned=args.allow_unsigned, allow_seed=args.allow_seed,
                                     as_admin=args.as_admin, restore_role=args.restore_role,
                                     with_globals=args.with_globals, jobs=args.jobs, **_selection(args, env))
    finally:
        progress.close()
    lines = ["restored %s into database %s: %d tables (expected %s), %s, metadata signature %s, SQL ran as %s, "
             "%d pg_restore %s, %.1fs" % (
                 result["name"], result["target_db"], result["table_count"], result["expected_table_count"],
                 "checksum ok" if result["integrity"] == "sha256" else "every segment authenticated",
                 result["signature"], result["sql_ran_as"], result["jobs"],
                 "process" if result["jobs"] == 1 else "processes", result["duration_seconds"]),
             "  " + stages_line(result)]
    if result["owner"]:
        lines.append("objects are owned by %s" % result["owner"])
    lines += globals_lines(result.get("globals"))
    if result["replaced_db"]:
        lines.append("the previous %s is kept as %s: DROP DATABASE \"%s\" once you are sure"
                     % (result["target_db"], result["replaced_db"], result["replaced_db"]))
    _emit(result, args.json, lines + _fallback_lines(result.get("replica_fallback")))
    return EXIT_OK


def _cmd_restore_pitr(args, settings, env):
    given = ["--" + name.replace("_", "-") for name in _DUMP_ONLY if getattr(args, name, None)]
    if given:
        raise ConfigError("%s restore a database from a dump, not a cluster to a point in time: leave %s out of "
                          "restore --pitr" % (", ".join(given), "it" if len(given) == 1 else "them"))
    target = pitr.parse_target(args.target_time, args.target_lsn, args.target_name, not args.target_exclusive,
                               args.target_timeline)
    backup_name = args.backup or env.get("BACKUP_FILE")
    progress = Progress("restore", sys.stderr)
    try:
        result = pitr.run_restore_pitr(settings, args.data_dir, target=target,
                                       backup=None if backup_name in (None, "", "latest") else backup_name,
                                       host=args.host, action=args.target_action, os_user=args.os_user,
                                       archive=not args.no_archive, progress=progress,
                                       allow_unsigned=args.allow_unsigned, timeout=args.timeout,
                                       config_file=args.config_file)
    finally:
        progress.close()
    lines = ["restored base backup %s of host %s into %s (%d files, each checked against its manifest; metadata "
             "signature %s) and recovered to %s: %s at %s on timeline %s, %d WAL files, %.1fs" % (
                 result["base_backup"], result["host"], result["data_dir"], result["files"], result["signature"],
                 target.describe(),
                 result["reached"]["state"], result["replay_lsn"], result["timeline"], result["wal_files_restored"],
                 result["duration_seconds"]),
             "  " + stages_line(result),
             "  last replayed commit: %s; databases: %s" % (result["last_replayed_commit"] or "none",
                                                            ", ".join(result["databases"]))]
    if result["running"]:
        lines.append("the server is RUNNING, PAUSED at the target, on a private socket: %s. Look, then SELECT "
                     "pg_wal_replay_resume() to promote it, or pg_ctl stop -D %s; once it is stopped or promoted, delete %s and %s "
                     "(its restore_command and socket)" % (result["connect"], result["data_dir"], result["spool_dir"],
                                                           result["socket_dir"]))
    else:
        lines.append("the server is stopped: start it with its service (its configuration as the base backup had it; "
                     "the recovery's log: %s)" % result["log"])
    _emit(result, args.json, lines)
    return EXIT_OK


def _fallback_lines(fallback):
    """What restore and verify say when the backup came from the replica (the primary failed)."""
    if not fallback:
        return []
    return ["WARNING: read from the REPLICA s3://%s: the primary bucket failed (%s); the metadata's signature was "
            "checked as always" % (fallback["bucket"], fallback["reason"])]


def _jobs(text):
    """--jobs: a number of pg_restore processes (0: the default)."""
    value = int(text) if text.strip().isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError("%r is not a number of processes: give 1 or more (0: the host's cores, at most 4)"
                                         % text)
    return value


def stages_line(result):
    """How long each stage of a run took (its ``stage_seconds``), for people."""
    return "stages: " + stages_text(result["stage_seconds"])


def globals_lines(report):
    """A --with-globals restore's report, for people."""
    if not report:
        return []
    lines = ["roles created: %s" % (", ".join(report["created_roles"]) or "none"),
             "roles already here (%s): %s" % ("changed: --force" if report["altered_roles"] else "left as they were",
                                              ", ".join(report["existing_roles"]) or "none")]
    if report["memberships_granted"]:
        lines.append("memberships granted: %s" % ", ".join(report["memberships_granted"]))
    lines.append("database owner %s, %d setting(s) applied" % (report.get("database_owner"), report["settings_applied"]))
    lines += ["not restored: %s" % item for item in report["skipped"]]
    if report["missing_tablespaces"]:
        lines.append("tablespaces not on this server (data went to the default one): %s"
                     % ", ".join(report["missing_tablespaces"]))
    return lines


def _cmd_verify(args, settings, env):
    selection = _selection(args, env)
    if args.base or layout.is_base_basename(selection["backup"]):
        return _verify_base(args, settings, selection)
    progress = Progress("verify", sys.stderr)
    try:
        result = restore.run_verify(settings, progress=progress, allow_unsigned=args.allow_unsigned,
                                    allow_seed=args.allow_seed, **_selection(args, env))
    finally:
        progress.close()
    _emit(result, args.json, ["verified %s: %s, checksum ok, decrypts, archive parses, %d tables, metadata signature %s, "
                              "%.1fs" % (result["name"], human_size(result["size_bytes"]), result["table_count"],
                                         result["signature"], result["duration_seconds"]),
                              "  " + stages_line(result)] + _fallback_lines(result.get("replica_fallback")))
    return EXIT_OK


def _verify_base(args, settings, selection):
    if selection["before"] is not None or args.db or args.allow_seed:
        raise ConfigError("a base backup is the cluster's, chosen by name or latest: drop --before, --db and --allow-seed")
    progress = Progress("verify", sys.stderr)
    try:
        result = basebackup.run_verify_base(settings, selection["backup"], selection["host"], progress=progress,
                                            allow_unsigned=args.allow_unsigned)
    finally:
        progress.close()
    _emit(result, args.json, ["verified base backup %s: %s, checksum ok, decrypts, %d files match the manifest, WAL %s to "
                              "%s on timeline %d, metadata signature %s, %.1fs"
                              % (result["name"], human_size(result["size_bytes"]), result["files"], result["start_lsn"],
                                 result["stop_lsn"], result["timeline"], result["signature"],
                                 result["duration_seconds"]),
                              "  " + stages_line(result)])
    return EXIT_OK


def _cmd_basebackup(args, settings, env):
    progress = Progress("basebackup", sys.stderr)
    try:
        result = basebackup.run_basebackup(settings, progress=progress, fast_checkpoint=args.fast)
    finally:
        progress.close()
    args.outcome = result  # for the run's record (main)
    _emit(result, args.json, [
        "base backup %s: %s stored at s3://%s/%s" % (result["name"], human_size(result["size_bytes"]), result["bucket"],
                                                     result["object_key"]),
        "  tar %s, %d files checked against the manifest, WAL %s to %s on timeline %d (from %s), %s + %s, key %s, %.1fs"
        % (human_size(result["tar_bytes"]), result["files"], result["start_lsn"], result["stop_lsn"], result["timeline"],
           result["start_wal_file"], result["compression"], result["encryption"], result["key_id"],
           result["duration_seconds"]),
        "  " + stages_line(result)])
    return EXIT_OK


def _health_policy(args, settings):
    if args.schedule:
        interval = health.interval_for_schedule(args.schedule, "--schedule")
    else:
        interval = health.interval_for_schedule(settings.schedule, settings.label("schedule"))
    policy = health.HealthPolicy(interval_hours=interval)
    if args.max_age_hours is not None:
        policy.max_age_hours = args.max_age_hours
    if args.min_size_bytes is not None:
        policy.min_size_bytes = args.min_size_bytes
    if args.window_days is not None:
        policy.window_days = args.window_days
    if args.leftover_hours is not None:
        policy.leftover_hours = args.leftover_hours
    return policy


def _cmd_health(args, settings, env):
    report = health.check_health(settings, _health_policy(args, settings))
    as_json = args.json or str(env.get("OUTPUT_JSON", "")).lower() in TRUE_WORDS
    _emit(report, as_json, health.report_lines(report))
    return report["exit_code"]


def _cmd_prune(args, settings, env):
    result = prune.run_prune(settings, dry_run=args.dry_run, replica_only=args.replica, kind=args.kind)
    args.outcome = result  # for the run's record (main)
    lines = _prune_lines(args, settings, result)
    status = EXIT_OK
    other = result.get("replica")
    if other is not None:
        if "error" in other:
            lines.append("ERROR: the replica s3://%s was not pruned: %s" % (other["bucket"], other["error"]))
            status = other["exit_code"]
        else:
            lines += ["replica s3://%s:" % other["bucket"]] + ["  " + line for line in _prune_lines(args, settings, other)]
    _emit(result, args.json, lines)
    return status


def _prune_lines(args, settings, result):
    """What one bucket's prune did (or would do), for people."""
    if result.get("kind") == "physical":  # prune --kind physical: no dump was judged
        return _prune_physical_lines(args, result) or ["no base backup of this host (nothing pruned)"]
    verb = "would delete" if args.dry_run else "deleted"
    lines = ["%s %d backup(s), %s %d (kept by: %s)"
             % (verb, len(result["deleted"]), "would keep" if args.dry_run else "kept", len(result["kept"]),
                prune.policy_of(settings).words())]
    shown = result["backups"] if args.dry_run else [item for item in result["backups"] if item["fate"] == "delete"]
    width = max([len(item["name"]) for item in shown] or [0])
    lines += ["  %-6s  %-*s  %s" % (item["fate"], width, item["name"], item["reason"]) for item in shown]
    swept = [(result["orphans_deleted"], "orphan object"), (result["uploads_aborted"], "open upload"),
             (result["staging_databases_dropped"], "staging database"),
             (result["restore_logins_dropped"], "restore login")]
    for names, kind in swept:
        lines += ["  %s %s %s (older than %d h)" % ("would remove" if args.dry_run else "removed", kind, name,
                                                    leftovers.STALE_HOURS) for name in names]
    return lines + _prune_physical_lines(args, result)


def _prune_physical_lines(args, result):
    """The base backups and archived WAL part of a prune's lines (nothing when the host has neither)."""
    lines = []
    bases = result.get("base_backups") or []
    if bases:
        lines.append("%s %d base backup(s), %s %d" % (
            "would delete" if args.dry_run else "deleted", len(result["base_deleted"]),
            "would keep" if args.dry_run else "kept", len(result["base_kept"])))
        shown = bases if args.dry_run else [item for item in bases if item["fate"] == "delete"]
        width = max([len(item["name"]) for item in shown] or [0])
        lines += ["  %-6s  %-*s  %s" % (item["fate"], width, item["name"], item["reason"]) for item in shown]
    if result.get("wal_kept_from"):
        lines.append("%s %d archived WAL file(s) before %s (the oldest kept base backup's start), kept %d%s"
                     % ("would delete" if args.dry_run else "deleted", result["wal_deleted"], result["wal_kept_from"],
                        result["wal_kept"], " (%d still locked)" % result["wal_locked"] if result["wal_locked"] else ""))
    elif result.get("wal_note") and result.get("wal_kept"):
        lines.append("WARNING: " + result["wal_note"])
    return lines


def _cmd_replicate(args, settings, env):
    result = replica.run_replicate(settings, all_databases=args.all_databases, verify=args.verify,
                                   dry_run=args.dry_run)
    args.outcome = result
    lines = ["replica s3://%s of s3://%s (%s): %d backup(s) there%s, %d %s, %d failed, %d skipped (not good on the "
             "primary)" % (result["replica_bucket"], result["bucket"],
                           result["database"] or "every database of %s" % result["host"], result["present"],
                           " and verified" if args.verify else "",
                           result["would_copy"] if args.dry_run else result["copied"],
                           "to copy" if args.dry_run else "copied", result["failed"], result["skipped"])]
    for item in result["backups"]:
        if item["status"] == replica.PRESENT:
            continue
        what = "; ".join(["metadata %s" % item["metadata"]] * (item["metadata"] not in (None, replica.IDENTICAL))
                         + ["%s %s" % (problem["key"].rsplit("/", 1)[-1], problem["problem"])
                            for problem in item["problems"]])
        lines.append("  %-10s %s%s%s" % (item["status"], item["name"], " (%s)" % what if what else "",
                                         ": %s" % item["error"] if item["error"] else ""))
    if result["complete"]:
        lines.append("the replica holds every good backup%s" % (" (checked by SHA-256)" if args.verify else ""))
    else:
        lines.append("the replica is INCOMPLETE: %s" % ("run replicate without --dry-run to copy what it lacks"
                                                        if args.dry_run and not result["failed"] else
                                                        "see the failures above, fix them and run replicate again"))
        log = LOG.warning if args.dry_run and not result["failed"] else LOG.error
        log("replicate: the replica s3://%s does not hold every good backup (%d failed%s)", result["replica_bucket"],
            result["failed"], ", %d to copy" % result["would_copy"] if result["would_copy"] else "")
    _emit(result, args.json, lines)
    return result["exit_code"]


def _cmd_rekey(args, settings, env):
    host = args.host or (None if args.all else settings.host)
    result = rekey.run_rekey(settings, host=host, db=args.db or (None if args.all else settings.db_name),
                             everything=not host, dry_run=args.dry_run)
    changed = result["would_rekey"] if args.dry_run else result["rekeyed"]
    lines = ["%s %d backup(s) to %s key %s (keys held: %s); %d already on it, %d failed"
             % ("would rekey" if args.dry_run else "rekeyed", changed, result["encryption"], result["active_key_id"],
                ", ".join(result["keyring_key_ids"]), result["unchanged"], result["failed"])]
    for item in result["backups"]:
        if item["status"] == rekey.FAILED:
            lines.append("  FAILED      %s" % item["error"])
        elif item["status"] != rekey.UNCHANGED:
            lines.append("  %-11s %s: key %s -> %s" % (item["status"], item["name"], item["from_key_id"], item["to_key_id"]))
    if not result["backups"]:
        lines.append("(no backups)")
    _emit(result, args.json, lines)
    return result["exit_code"]


def _cmd_keygen(args, settings, env):
    result = keys.keygen(args.output)
    _emit(result, args.json, [
        "wrote the private key %s (mode 0600): keep it, and a copy offline, where restores run (BACKUP_IDENTITY_FILE)"
        % result["identity_file"],
        "recipient id: %s" % result["recipient_id"],
        "public key (BACKUP_RECIPIENTS on the database hosts, with BACKUP_ENCRYPTION=hybrid-pq):",
        result["public_key"]])
    return EXIT_OK


def _cmd_adopt(args, settings, env):
    progress = Progress("adopt", sys.stderr)
    try:
        result = adopt.run_adopt(settings, dry_run=args.dry_run, delete_originals=args.delete_originals,
                                 progress=progress)
    finally:
        progress.close()
    lines = ["%s: %d adopted, %d would be, %d already adopted, %d failed; %d original(s) deleted"
             % (result["database"], result["adopted"], result["would_adopt"], result["already_adopted"], result["failed"],
                result["originals_deleted"])]
    for item in result["backups"]:
        if item["status"] == adopt.FAILED:
            lines.append("  FAILED           %s" % item["error"])
        else:
            lines.append("  %-16s %s (%s)%s" % (item["status"], item["name"], item["timestamp"],
                                                ", %s tables, %s" % (item["table_count"], item.get("kdf") or "")
                                                if "table_count" in item else ""))
    if not result["backups"]:
        lines.append("(no seed backups of this database)")
    _emit(result, args.json, lines)
    return result["exit_code"]


def _cmd_drill(args, settings, env):
    if args.all_hosts and (args.host or args.db):
        raise ConfigError("--all-hosts drills every host and database in the bucket: drop --host/--db, or --all-hosts")
    if not args.pitr and (args.target_time or args.scratch_dir):
        raise ConfigError("--target-time and --scratch-dir belong to a point-in-time drill: add --pitr")
    if args.pitr and (args.all_hosts or args.db or args.assertions):
        raise ConfigError("drill --pitr drills one host's cluster: drop --all-hosts, --db and --assert")
    progress = Progress("drill", sys.stderr)
    try:
        if args.pitr:
            result = drill.run_pitr_drill(settings, host=args.host, target=pitr.parse_target(args.target_time),
                                          scratch_parent=args.scratch_dir, progress=progress)
        else:
            result = drill.run_drill(settings, host=args.host, db=args.db, all_hosts=args.all_hosts,
                                     assertions=args.assertions, progress=progress)
    finally:
        progress.close()
    args.outcome = result  # for the run's record (main)
    _emit(result, args.json, drill_lines(result))
    if result["status"] == drill.NONE:
        return EXIT_NOT_FOUND
    return EXIT_OK if result["status"] == drill.PASSED else EXIT_HEALTH_CRITICAL


def drill_lines(result):
    """One line per drill (and one per failed check of a failed one)."""
    if not result["drills"]:
        return ["(no backups to drill)"]
    lines = []
    for item in result["drills"]:
        rto = "%.1fs" % item["rto_seconds"] if item["rto_seconds"] is not None else "-"
        rows = ", %d rows checked" % item["rows_checked"] if item["rows_checked"] is not None else ""
        rpo = "%.1f h" % (item["rpo_seconds"] / 3600.0) if item["rpo_seconds"] is not None else "-"
        lines.append("%s %s/%s %s: RTO %s, RPO %s, %s tables%s, %d checks; report %s%s"
                     % (item["result"].upper(), item["host"], item["database"], item["backup"], rto,
                        rpo, item["tables"] if item["tables"] is not None else "-", rows,
                        len(item["checks"]), item["report_key"] or "not stored",
                        "" if item.get("signed", True) else " (unsigned)"))
        lines += ["  FAILED %s: %s" % (check["name"], check["detail"]) for check in item["checks"] if not check["ok"]]
    return lines


def _cmd_restore_role(args, settings, env):
    result = restore.prepare_restore_role(settings, check=args.check)
    state = "created" if result["created"] else ("missing" if not result["exists"] else "present")
    lines = ["restore role %s on %s: %s" % (result["role"], result["server"], state)]
    lines += ["  UNSAFE: %s" % risk for risk in result["risks"]]
    _emit(result, args.json, lines)
    return EXIT_OK if result["exists"] and not result["risks"] else EXIT_REFUSED


def _prefetch(text):
    """--prefetch: a number of segments, 0 to 64."""
    value = int(text) if text.strip().isdigit() else -1
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError("%r is not a number of segments to fetch ahead: give 0 to 64" % text)
    return value


def _cmd_wal_push(args, settings, env):
    result = wal.push(settings, args.path)
    if args.json:
        _emit(result, True, [])
    return EXIT_OK


def _cmd_wal_fetch(args, settings, env):
    """restore_command: 0 restored, 1 not in the archive (PostgreSQL's "not found"). Any other failure (a hole in the
    archive, an object that cannot be trusted, the store out of reach) exits EXIT_STOP_RECOVERY, above 125, so that
    PostgreSQL stops recovery instead of taking it for the archive's end and promoting early; on a standby
    (standby.signal) it exits with the error's own code, which PostgreSQL retries."""
    try:
        result = wal.fetch(settings, args.name, args.target, host=args.host, prefetch=args.prefetch)
    except wal.NotArchivedError as exc:
        LOG.info("wal-fetch: %s", exc)
        return EXIT_NOT_ARCHIVED
    except Exception as exc:  # pylint: disable=broad-except  # every failure must stop recovery, not end it
        if isinstance(exc, BackupError):
            LOG.error("wal-fetch %s: %s", args.name, exc)
            own = exc.exit_code
        else:
            LOG.error("wal-fetch %s failed unexpectedly:\n%s", args.name, traceback.format_exc())
            own = EXIT_INTERNAL
        if wal.is_standby(args.target):
            return own
        LOG.error("wal-fetch %s: exit %d stops PostgreSQL's recovery here, so that it does not end early and promote "
                  "without the rest of the WAL: fix the cause and start the server again", args.name,
                  EXIT_STOP_RECOVERY)
        return EXIT_STOP_RECOVERY
    if args.json:
        _emit(result, True, [])
    return EXIT_OK


EXIT_NOT_ARCHIVED = 1  # wal-fetch: the archive holds no such file (what restore_command answers at the archive's end)
EXIT_STOP_RECOVERY = 128  # wal-fetch: any other failure; above 125, which PostgreSQL takes as fatal to recovery


COMMANDS = {"backup": _cmd_backup, "basebackup": _cmd_basebackup, "list": _cmd_list, "restore": _cmd_restore, "verify": _cmd_verify,
            "health": _cmd_health, "prune": _cmd_prune, "rekey": _cmd_rekey, "keygen": _cmd_keygen,
            "restore-role": _cmd_restore_role, "adopt": _cmd_adopt, "undelete": _cmd_undelete, "replicate": _cmd_replicate,
            "drill": _cmd_drill, "wal-push": _cmd_wal_push, "wal-fetch": _cmd_wal_fetch}


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record, datefmt=None):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", self.converter(record.created))


def _setup_logging(quiet):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(message)s"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.WARNING if quiet else logging.INFO)
    LOG.propagate = False


# What an interrupted command leaves behind (each cleans up before this is said).
_INTERRUPTED = {
    "backup": "nothing was committed: the upload was aborted (or is swept by prune if the store was out of reach)",
    "basebackup": "nothing was committed: the upload was aborted (or is left without metadata, which no command reads)",
    "restore": "nothing was restored: the staging database was dropped and the target is as it was",
    "verify": "nothing was changed",
    "adopt": "the backup being copied was not committed (its upload was aborted); run adopt again to go on",
    "rekey": "each backup is either rekeyed or left as it was; run rekey again to finish",
    "prune": "what was already deleted is gone; run prune again to finish",
    "replicate": "each backup is on the replica with its metadata, or without it (no backup there); run replicate again",
    "undelete": "the delete markers already removed stay removed; run undelete again to finish",
    "drill": "the scratch database was dropped; the drill being run stored no report",
    "wal-push": "the WAL file was not archived (PostgreSQL tries again)",
}


def _start_record(args, env):
    """The run's record (workflows/runrecord.py), its start written, when BACKUP_METRICS_DIR is set and the command is
    one a schedule runs; from the variables, before the settings are checked, so a run they fail is recorded too.
    A command puts its result in ``args.outcome`` for the record's stages, bytes and counts; one over every database
    (``drill --all-hosts``, ``replicate --all-databases``), and ``basebackup`` and ``prune --kind physical`` (the whole
    cluster's), is recorded as database ``all``."""
    everything = (getattr(args, "all_hosts", False) or getattr(args, "all_databases", False)
                  or args.command == "basebackup" or getattr(args, "kind", None) == "physical")
    return runrecord.start(env.get("BACKUP_METRICS_DIR"), args.command,
                           env.get("BACKUP_HOST_ID") or config.default_host_id(),
                           None if everything else getattr(args, "db", None) or env.get("DB_NAME"))


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("terminated by signal %d" % signum)


def main(argv=None, environ=None):
    """Entry point; returns (and exits with) the process status."""
    args = _parser().parse_args(argv)
    _setup_logging(args.quiet)
    signal.signal(signal.SIGTERM, _on_sigterm)
    environ = os.environ if environ is None else environ
    record, status, error = None, EXIT_INTERNAL, None
    try:
        env = load_environment(args.env_file, environ)
        record = _start_record(args, env)
        settings, env = _settings(env, args.env_file, environ)
        status = COMMANDS[args.command](args, settings, env)
    except BackupError as exc:
        LOG.error("%s: %s", args.command, exc)
        status, error = exc.exit_code, str(exc)
    except KeyboardInterrupt as exc:  # a workflow that finished as it came says so in the exception's outcome
        LOG.error("%s interrupted: %s", args.command,
                  getattr(exc, "outcome", None) or _INTERRUPTED.get(args.command, "nothing was changed"))
        status, error = 130, "interrupted"
    except Exception as exc:  # unexpected: keep the full detail for the bug report
        LOG.error("%s failed unexpectedly:\n%s", args.command, traceback.format_exc())
        status, error = EXIT_INTERNAL, "unexpected %s (see the log)" % type(exc).__name__
    finally:
        if record is not None:  # the run's end, whatever happened (docs/MONITORING.md)
            record.ended(status, getattr(args, "outcome", None), error)
    if argv is None:
        raise SystemExit(status)
    return status


if __name__ == "__main__":
    main()
