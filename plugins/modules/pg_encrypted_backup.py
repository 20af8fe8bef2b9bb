#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_encrypted_backup
short_description: Take an encrypted, verified backup of a PostgreSQL database to S3
version_added: 0.1.0
description:
  - Dumps one database with C(pg_dump) in custom format, compresses the dump, encrypts it with AES-256-GCM
    under a fresh data key and streams it to S3 as a multipart upload, in constant memory. No plaintext
    touches the disk.
  - Every stage's exit status and byte count is checked. On any failure the upload is aborted and nothing
    is committed; the metadata object (checksum, size, wrapped data key, table count) is written last and
    is what makes a backup exist.
  - Objects are named C(<prefix>backups/postgresql/<host_id>/<db>/<name>_backup_<YYYYmmdd_HHMMSS>.encrypted)
    with metadata under C(<prefix>metadata/<host_id>/<db>/).
  - This is the same engine as the C(quankey-backup backup) command that cron runs on database hosts.
  - Every run takes a new backup, so the task always reports a change.
options:
  name:
    description:
      - Stem of the backup's name, C(<name>_backup_<YYYYmmdd_HHMMSS>). Defaults to O(db).
      - Letters, digits, V(.), V(_) and V(-) only.
      - If not set, the environment variable E(BACKUP_NAME) is used.
    type: str
  compression:
    description:
      - How to compress the dump before encrypting it. V(zstd) (level 2, in one thread) is fast and small,
        V(gzip) is for compatibility (the seed's restore script and C(gunzip)). Defaults to V(zstd).
      - If not set, the environment variable E(BACKUP_COMPRESSION) is used.
    type: str
    choices: [zstd, gzip, none]
  globals:
    description:
      - Also keep, in a second encrypted object beside the backup (C(<name>.globals)), the cluster-wide things its
        database needs that C(pg_dump) leaves out - the roles that own or are granted anything in it, their members
        and the roles they are members of, with attributes, password hashes (when O(login_user) may read them, as a
        superuser may; otherwise they are left out, with a warning), memberships and settings, the database's owner, ACL
        and settings, and its tablespaces. Its checksum is in the signed metadata.
        C(quankey.backup.s3_backup_restore) with C(with_globals=true) recreates them on a new server.
      - Defaults to V(true).
      - If not set, the environment variable E(BACKUP_GLOBALS) is used.
    type: bool
  count_rows:
    description:
      - Also record the exact row count of every table in the backup's signed metadata, counted in the snapshot
        C(pg_dump) dumps (a REPEATABLE READ transaction exports it and C(pg_dump --snapshot) takes it). Restore drills
        (C(quankey-backup drill)) check the restored tables against them.
      - This costs a full scan of every table before the dump starts, and the counting transaction holds its locks
        until the dump ends.
      - Defaults to V(false).
      - If not set, the environment variable E(BACKUP_COUNT_ROWS) is used.
    type: bool
  storage_class:
    description:
      - S3 storage class of the backup object. Defaults to V(STANDARD_IA).
      - If not set, the environment variable E(S3_STORAGE_CLASS) is used.
    type: str
    choices: [STANDARD, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, REDUCED_REDUNDANCY, GLACIER, DEEP_ARCHIVE]
  object_lock_mode:
    description:
      - Lock every object of the backup (data, globals, metadata) with S3 Object Lock in this mode, for
        O(object_lock_days) from its write - V(governance) (only an identity with C(s3:BypassGovernanceRetention) may
        delete a locked version early) or V(compliance) (no one may, not even the account's root, until the lock ends).
        Not set, the objects are not locked.
      - The bucket must have Object Lock enabled (a bucket created with it, versioned); a bucket without it fails the
        backup before anything is uploaded, naming this option. Check mode checks that too.
      - Prune (O(prune)) keeps a backup whose objects are still locked, whatever the rules say, and says until when.
      - If not set, the environment variable E(BACKUP_OBJECT_LOCK_MODE) is used.
    type: str
    choices: [governance, compliance]
  object_lock_days:
    description:
      - Days each object of the backup stays locked from its write (with O(object_lock_mode); required then), 1 to
        36500. As long as O(retention_days) is a good choice.
      - If not set, the environment variable E(BACKUP_OBJECT_LOCK_DAYS) is used.
    type: int
  retention_days:
    description:
      - Days the backup is meant to be kept, recorded in its metadata for pruning. Defaults to V(30).
      - If not set, the environment variable E(BACKUP_RETENTION_DAYS) is used.
    type: int
  keep_daily:
    description:
      - With O(prune=true), also keep the newest good backup of each of the N most recent days (UTC) that have a good
        backup, whatever its age (grandfather-father-son retention, as C(--keep-daily) of restic or borg). Days without
        a good backup are skipped, not counted, and the days are counted back from the newest good backup, not from
        now. Defaults to V(0), the rule off.
      - A backup is kept when any rule keeps it - its age (O(retention_days)), the newest good ones that are always
        kept, O(keep_daily), O(keep_weekly), O(keep_monthly) or O(keep_yearly) - and deleted otherwise. Only good
        backups (data object of the recorded size, metadata signature verifying here) count for these rules; the
        others are kept while young and deleted once older than O(retention_days).
      - If not set, the environment variable E(BACKUP_KEEP_DAILY) is used.
    type: int
  keep_weekly:
    description:
      - As O(keep_daily), for ISO weeks (Monday to Sunday, UTC; a week that spans a new year belongs to the year of its
        Thursday). Defaults to V(0), the rule off.
      - If not set, the environment variable E(BACKUP_KEEP_WEEKLY) is used.
    type: int
  keep_monthly:
    description:
      - As O(keep_daily), for calendar months (UTC). Defaults to V(0), the rule off.
      - If not set, the environment variable E(BACKUP_KEEP_MONTHLY) is used.
    type: int
  keep_yearly:
    description:
      - As O(keep_daily), for calendar years (UTC). Defaults to V(0), the rule off.
      - If not set, the environment variable E(BACKUP_KEEP_YEARLY) is used.
    type: int
  lock_file:
    description:
      - Take this run lock first, the file the scheduled runs lock (C(flock) on C(<home>/backup.lock) with the
        C(quankey.backup.pg_backup) role), so that this backup never overlaps a scheduled run on the host; a scheduled
        run that starts meanwhile finds the lock held and skips. The file is created (mode 0600) when missing.
      - Without it no lock is taken.
      - In check mode the lock is not taken; the file is only checked to be one this user can lock.
    type: path
  lock_wait:
    description:
      - Seconds to wait for a run holding O(lock_file) before failing (naming the file and the wait; nothing is done).
        V(0) tries once.
    type: float
    default: 600
  prune:
    description:
      - After the backup, apply retention as a scheduled run does (the engine of C(quankey-backup prune)) - a backup
        is deleted unless its age (O(retention_days)), the newest good ones always kept, or a calendar rule
        (O(keep_daily), O(keep_weekly), O(keep_monthly), O(keep_yearly)) keeps it, and what interrupted runs left
        behind is swept once stale - under the same lock. Returned as RV(pruned), with each backup's fate and the rules
        that decided it.
      - In check mode, says what would be deleted and deletes nothing.
    type: bool
    default: false
extends_documentation_fragment:
  - quankey.backup.postgres
  - quankey.backup.s3
  - quankey.backup.encryption
  - quankey.backup.env_file
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Checks the settings, the login to PostgreSQL, the C(pg_dump) version against the server's and
        access to the bucket, and returns the keys it would write. It writes nothing.
      - With O(lock_file), checks that the lock can be taken by this user, without taking it; with O(prune=true), says
        what retention would delete.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - zstandard >= 0.21 (when O(compression=zstd))
  - PostgreSQL client programs (C(pg_dump), C(pg_restore), C(psql)) at least as new as the server
notes:
  - The module runs on the host that can reach the database, usually the database host itself.
  - Options fall back to the environment variables the C(quankey-backup) command reads, then to the host's env file
    (O(env_file)), so a task can rely on the configuration set up for that command. O(db) must be set in one of
    these places.
seealso:
  - module: quankey.backup.s3_backup_restore
  - module: quankey.backup.backup_info
  - module: quankey.backup.backup_health
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: Back up the application database
  quankey.backup.pg_encrypted_backup:
    db: quankey_prod
    login_host: localhost
    login_password: "{{ vault_pg_password }}"
    bucket: quankey-backups-prod
    host_id: "{{ inventory_hostname_short }}"
    encryption_key: "{{ vault_backup_encryption_key }}"
  register: backup

- name: Show where it went
  ansible.builtin.debug:
    msg: "{{ backup.backup.name }}: {{ backup.backup.size_bytes }} bytes at s3://{{ backup.backup.bucket }}/{{ backup.backup.object_key }}"

- name: Set the connection options once for every module of the collection
  module_defaults:
    group/quankey.backup.all:
      login_password: "{{ vault_pg_password }}"
      bucket: quankey-backups-prod
      endpoint_url: https://s3.eu-central-1.amazonaws.com
      region: eu-central-1
      encryption_key: "{{ vault_backup_encryption_key }}"
  block:
    - name: Check that a backup would work (PostgreSQL login, pg_dump version, bucket) without taking one
      quankey.backup.pg_encrypted_backup:
        db: quankey_prod
      check_mode: true

    - name: Back up, then prune keeping every backup of the last 7 days, then 4 weeklies, 12 monthlies and 3 yearlies
      quankey.backup.pg_encrypted_backup:
        db: quankey_prod
        prune: true
        retention_days: 7
        keep_daily: 7
        keep_weekly: 4
        keep_monthly: 12
        keep_yearly: 3
      register: backup

    - name: Show what retention kept and why
      ansible.builtin.debug:
        msg: "{{ backup.pruned.backups | selectattr('fate', 'equalto', 'keep') | map(attribute='reason') | list }}"

    - name: Take a gzip-compressed backup kept in the STANDARD storage class
      quankey.backup.pg_encrypted_backup:
        db: quankey_prod
        name: before-migration
        compression: gzip
        storage_class: STANDARD
        retention_days: 90

- name: On a host the pg_backup role set up - as the scheduled run does, under its lock, then prune
  quankey.backup.pg_encrypted_backup:
    db: quankey_prod
    lock_file: /var/lib/quankey-backup/backup.lock
    lock_wait: 600
    prune: true
  become: true
  become_user: quankey-backup
  vars:
    ansible_python_interpreter: /opt/quankey-backup/venv/bin/python
  register: backup
"""

RETURN = r"""
backup:
  description:
    - The backup taken, or in check mode the backup that would be taken.
  returned: success
  type: dict
  contains:
    name:
      description: Name of the backup, C(<name>_backup_<YYYYmmdd_HHMMSS>).
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    bucket:
      description: The bucket.
      returned: always
      type: str
      sample: quankey-backups-prod
    object_key:
      description: Key of the encrypted backup object.
      returned: always
      type: str
      sample: backups/postgresql/db1/quankey_prod/quankey_prod_backup_20250809_030000.encrypted
    metadata_key:
      description: Key of the metadata object, written last.
      returned: always
      type: str
      sample: metadata/db1/quankey_prod/quankey_prod_backup_20250809_030000.meta
    database:
      description: The database backed up.
      returned: always
      type: str
      sample: quankey_prod
    host:
      description: The host id in the keys.
      returned: always
      type: str
      sample: db1
    compression:
      description: Compression of the dump.
      returned: always
      type: str
      sample: zstd
    encryption:
      description: How the backup is encrypted, O(encryption).
      returned: always
      type: str
      sample: aes-256-gcm
    key_id:
      description:
        - Non-secret id of the master key that wraps the backup's data key (of the first recipient with
          V(hybrid-pq); of the passphrase with V(aes-256-cbc)).
      returned: always
      type: str
      sample: qk1-3f2a9c0d1e4b5a69
    recipient_ids:
      description: Ids of the recipients the data key is sealed to (V(hybrid-pq) only, else null).
      returned: when not in check mode
      type: list
      elements: str
      sample: [qkr-5b1f0e6a7c2d9e84]
    globals:
      description:
        - The backup's globals object (O(globals)) - C(object_key), C(size_bytes), C(checksum_sha256), how many
          C(roles), C(memberships) and C(tablespaces) it holds, and C(passwords) (V(included) or V(omitted)); null
          without it. In check mode, whether one would be kept (a bool).
      returned: always
      type: raw
      sample: {"object_key": "backups/postgresql/db1/quankey_prod/quankey_prod_backup_20250809_030000.globals",
               "size_bytes": 812, "checksum_sha256": "9f2c0e8d5b7a6c4e3f1d2b0a9e8c7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d",
               "roles": 3, "memberships": 1, "tablespaces": 0, "passwords": "included"}
    row_counts:
      description:
        - With O(count_rows), how many C(tables) were counted and their C(rows) in all (the counts per table are in
          the metadata); null without it. In check mode, whether they would be counted (a bool).
      returned: always
      type: raw
      sample: {"tables": 12, "rows": 184467}
    signing_key_id:
      description: Id of the key that signs the backup's metadata (C(qks-...), or the master key's id).
      returned: always
      type: str
      sample: qk1-3f2a9c0d1e4b5a69
    storage_class:
      description: S3 storage class of the object.
      returned: always
      type: str
      sample: STANDARD_IA
    object_lock:
      description:
        - The Object Lock of the backup's objects (O(object_lock_mode), O(object_lock_days)) - C(mode) and C(days),
          and once made C(retain_until_at_least) (UTC; each object is locked from its own write, so the last ones a
          little longer); null when they are not locked.
      returned: always
      type: dict
      sample: {"mode": "governance", "days": 30, "retain_until_at_least": "2026-12-31T03:00:00Z"}
    size_bytes:
      description: Size of the stored (compressed, encrypted) object.
      returned: when not in check mode
      type: int
      sample: 294551233
    dump_bytes:
      description: Size of the uncompressed C(pg_dump) archive.
      returned: when not in check mode
      type: int
      sample: 690114560
    checksum_sha256:
      description: SHA-256 of the stored object, recorded in its metadata and checked by every restore.
      returned: when not in check mode
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    table_count:
      description: Tables in the archive, checked again after a restore.
      returned: when not in check mode
      type: int
      sample: 42
    timestamp:
      description: Time of the backup (UTC), C(YYYYmmdd_HHMMSS).
      returned: when not in check mode
      type: str
      sample: '20250809_030000'
    created_at:
      description: Time of the backup (UTC), ISO 8601.
      returned: when not in check mode
      type: str
      sample: '2025-08-09T03:00:00Z'
    duration_seconds:
      description: How long the backup took, from its first check to the metadata's commit (and its copy to the replica, with one).
      returned: when not in check mode
      type: float
      sample: 9.512
    stage_seconds:
      description:
        - How long each stage of the backup took, in seconds - V(prepare) (settings, keys, the login, the C(pg_dump)
          version, the bucket, the database's size, its globals), V(dump_upload) (C(pg_dump), compression, encryption
          and the upload, until it is complete), V(commit) (the globals object, then the signed metadata) and, with a
          replica (C(S3_REPLICA_BUCKET)), V(replica) (the copy to it and its check). They add
          up to no more than RV(backup.duration_seconds).
        - While it runs, the engine logs its progress every 30 seconds (bytes, of the database's size as an estimate,
          rate and time left) with its other lines to the managed host's journal or syslog.
      returned: when not in check mode
      type: dict
      sample: {"prepare": 0.412, "dump_upload": 8.903, "commit": 0.196}
    s3_retries:
      description:
        - What S3 had to be asked again during the backup (each retry is also a warning in the log) -
          C(requests_retried), the requests that failed in a way that may pass (connection refused, reset or cut,
          a timeout, HTTP 5xx, throttling) and were sent again (an upload part counts once, however often it was
          sent); C(retries), the extra attempts they took; and C(download_resumes), 0 here (it counts a restore's
          resumed downloads). All 0 when nothing failed.
      returned: when not in check mode
      type: dict
      sample: {"requests_retried": 1, "retries": 3, "download_resumes": 0}
    replica:
      description:
        - The copy of the backup to the replica bucket (C(S3_REPLICA_BUCKET) in the host's settings), null without one -
          C(status) (V(ok), or V(failed) - the backup is still committed and the task does not fail; a warning says
          why and C(backup_health) reports the replica behind), C(bucket), C(method) (V(server-side) or V(streamed)),
          C(error) and C(seconds).
      returned: when not in check mode
      type: dict
      sample: {"status": "ok", "bucket": "quankey-backups-replica", "method": "streamed", "error": null, "seconds": 4.2}
    database_size_bytes:
      description: Size of the database on disk.
      returned: in check mode
      type: int
      sample: 790626304
    server_version:
      description: PostgreSQL server version.
      returned: in check mode
      type: str
      sample: '15.8'
    pg_dump_version:
      description: Version of the C(pg_dump) that would run.
      returned: in check mode
      type: str
      sample: '15.8'
pruned:
  description:
    - What retention deleted after the backup (O(prune=true)), or in check mode would delete.
  returned: when O(prune=true)
  type: dict
  contains:
    deleted:
      description: Names of the backups deleted (would be deleted in check mode), those no retention rule keeps.
      returned: always
      type: list
      elements: str
      sample: [quankey_prod_backup_20250701_030000]
    kept:
      description: Names of the backups kept.
      returned: always
      type: list
      elements: str
      sample: [quankey_prod_backup_20250809_030000]
    backups:
      description:
        - Every backup of the host and database, newest first, with its fate - C(name), C(host), C(database),
          C(timestamp) (UTC), C(fate) (V(keep) or V(delete)), C(rules) (each rule that keeps it - V(age <= 30 days),
          V(min_keep 1 of 3), V(daily 2026-11-30), V(weekly 2026-W49), V(monthly 2026-11), V(yearly 2026); empty when
          deleted), C(reason) (the same in one line, with what is wrong with a kept backup that is not good, or why
          no rule keeps it), C(good) (true, false, or null when no rule needed to read its metadata), C(problem) (why
          it is not good) and C(locked_until) (UTC, when its objects' S3 Object Lock ends; read only for a backup no
          rule keeps, null otherwise) - a backup still locked is kept, its rule V(locked until 2026-12-31T03:00:00Z).
      returned: always
      type: list
      elements: dict
      sample: [{"name": "quankey_prod_backup_20261130_030000", "host": "db1", "database": "quankey_prod",
                "timestamp": "2026-11-30T03:00:00Z", "fate": "keep",
                "rules": ["age <= 30 days", "min_keep 1 of 3", "daily 2026-11-30", "monthly 2026-11"],
                "reason": "age <= 30 days, min_keep 1 of 3, daily 2026-11-30, monthly 2026-11", "good": true,
                "problem": null, "locked_until": null}]
    retention_days:
      description: The age under which every backup is kept (O(retention_days)).
      returned: always
      type: int
      sample: 30
    keep_daily:
      description: The days whose newest good backup is kept (O(keep_daily); V(0), off).
      returned: always
      type: int
      sample: 7
    keep_weekly:
      description: The ISO weeks whose newest good backup is kept (O(keep_weekly)).
      returned: always
      type: int
      sample: 4
    keep_monthly:
      description: The months whose newest good backup is kept (O(keep_monthly)).
      returned: always
      type: int
      sample: 12
    keep_yearly:
      description: The years whose newest good backup is kept (O(keep_yearly)).
      returned: always
      type: int
      sample: 0
    min_keep:
      description: The newest good backups always kept, whatever their age (E(BACKUP_MIN_KEEP)).
      returned: always
      type: int
      sample: 3
    dry_run:
      description: Whether nothing was deleted (check mode).
      returned: always
      type: bool
      sample: false
    bucket:
      description: The bucket pruned.
      returned: always
      type: str
      sample: quankey-backups-prod
    replica:
      description:
        - With E(S3_REPLICA_BUCKET) and E(S3_REPLICA_PRUNE=true) in the host's settings, the replica's prune, after the
          primary's, by the same rules on the replica's own listing - the same fields as this one - or C(bucket),
          C(error) and C(exit_code) when it failed (the primary's prune stands). Null otherwise. See docs/CLI.md,
          "Replica".
      returned: always
      type: dict
      sample: null
    tagged:
      description:
        - Backups whose data object was tagged C(quankey-keep=monthly) or C(yearly) (kept by a monthly or yearly rule)
          for the bucket's archive rules (playbooks/prepare_bucket.yml); in check mode, those that would be.
      returned: always
      type: list
      elements: str
      sample: [quankey_prod_backup_20261031_030000]
    orphans_deleted:
      description: Stale objects without metadata removed (left by interrupted backups, and base backups).
      returned: always
      type: list
      elements: str
      sample: []
    uploads_aborted:
      description: Stale open multipart uploads aborted (of backups, and of the host's base backups).
      returned: always
      type: list
      elements: str
      sample: []
    staging_databases_dropped:
      description: Stale staging databases of interrupted restores dropped.
      returned: always
      type: list
      elements: str
      sample: []
    restore_logins_dropped:
      description: Expired temporary restore logins dropped.
      returned: always
      type: list
      elements: str
      sample: []
    leftovers:
      description: What interrupted runs left behind, as found before the sweep.
      returned: always
      type: dict
      sample: {}
    base_backups:
      description:
        - The host's physical base backups (C(quankey-backup basebackup)), newest first, each with its fate under the
          same retention rules as the dumps - the fields of RV(pruned.backups), C(kind) V(base), C(database) null,
          C(start_wal_file) and C(timeline) (null when its metadata was not read). Empty when the host has none.
      returned: always
      type: list
      elements: dict
      sample: []
    base_kept:
      description: Names of the base backups kept.
      returned: always
      type: list
      elements: str
      sample: [cluster_base_20261129_030000]
    base_deleted:
      description: Names of the base backups deleted (would be deleted in check mode).
      returned: always
      type: list
      elements: str
      sample: [cluster_base_20261120_030000]
    wal_deleted:
      description:
        - How many archived WAL files of the host were deleted (would be in check mode) - those before the start of
          every kept base backup, on its timeline or an earlier one; never a timeline history file, and none when no
          trusted base backup is kept (see RV(pruned.wal_note)).
      returned: always
      type: int
      sample: 212
    wal_kept:
      description: How many archived WAL files of the host stay.
      returned: always
      type: int
      sample: 9
    wal_locked:
      description: Of the WAL files kept, how many only because their S3 Object Lock has not ended.
      returned: always
      type: int
      sample: 0
    wal_kept_from:
      description:
        - The earliest start WAL file of a kept base backup - no archived WAL file at or after it is deleted; null when
          no WAL is deleted because no trusted base backup is kept.
      returned: always
      type: str
      sample: "000000010000000000000020"
    wal_note:
      description:
        - Why no archived WAL was deleted (no trusted base backup kept, so all WAL is kept; or C(base/) and C(wal/) not
          listable with these credentials), or null.
      returned: always
      type: str
      sample: null
lock_waited_seconds:
  description: How long the backup waited for O(lock_file) (a scheduled run in progress).
  returned: when O(lock_file) is set and not in check mode
  type: float
  sample: 0.0
error:
  description: What kind of failure stopped the module, for playbooks that branch on it.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class.
      returned: failure
      type: str
      sample: PostgresError
    step:
      description: The step that failed, when known.
      returned: failure
      type: str
      sample: pg_dump
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this failure.
      returned: failure
      type: int
      sample: 4
"""

import contextlib

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.module_utils.adapters import hostlock
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, prune


def argument_spec():
    """The module's options: the shared groups plus what only a backup needs."""
    return ansible_common.common_argument_spec(
        ansible_common.setting_options("name", "compression", "storage_class", "object_lock_mode", "object_lock_days",
                                       "retention_days", "keep_daily",
                                       "keep_weekly", "keep_monthly", "keep_yearly", "globals", "count_rows"),
        lock_file=dict(type="path"),
        lock_wait=dict(type="float", default=600),
        prune=dict(type="bool", default=False),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3", "cryptography")
    params = module.params
    extra = {}
    with ansible_common.engine_errors(module, "backup"):
        settings = ansible_common.module_settings(module)
        if settings.compression == "zstd":
            ansible_common.require_libraries(module, "zstandard")
        lock = hostlock.RunLock(params["lock_file"], params["lock_wait"]) if params["lock_file"] else None
        if module.check_mode:
            if lock:
                lock.check()
            result = backup.plan_backup(settings).describe()
            if params["prune"]:
                extra["pruned"] = prune.run_prune(settings, dry_run=True)
        else:
            with lock if lock else contextlib.nullcontext():
                result = backup.run_backup(settings)
                if (result.get("replica") or {}).get("status") == "failed":
                    module.warn("backup %s is committed, but its copy to the replica s3://%s failed: %s"
                                % (result["name"], result["replica"]["bucket"], result["replica"]["error"]))
                if params["prune"]:
                    extra["pruned"] = prune.run_prune(settings)
                    if "error" in (extra["pruned"].get("replica") or {}):
                        module.warn("the replica s3://%s was not pruned (S3_REPLICA_PRUNE): %s"
                                    % (extra["pruned"]["replica"]["bucket"], extra["pruned"]["replica"]["error"]))
            if lock:
                extra["lock_waited_seconds"] = round(lock.waited, 3)
    module.exit_json(changed=True, backup=result, **extra)


if __name__ == "__main__":
    main()
