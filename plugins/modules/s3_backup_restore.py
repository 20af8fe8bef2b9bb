#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: s3_backup_restore
short_description: Restore a PostgreSQL backup from S3 into a new database, verified
version_added: 0.1.0
description:
  - Selects a backup (the latest, one by name, or the latest before a time), downloads it, checks its
    SHA-256 against the metadata, decrypts, decompresses and restores it with C(pg_restore) into a staging
    database, checks the table count, and only then renames the staging database to O(target_db).
  - An existing database is never replaced unless O(force=true); the replaced database is then kept,
    renamed C(<target_db>__replaced_<time>), never dropped. On any failure the staging database is
    dropped and the target is left as it was.
  - Before anything is downloaded, the backup's metadata signature is checked (see O(signing_key)); an invalid
    signature ("metadata signature invalid") always fails the task, an unsigned one unless O(allow_unsigned=true).
  - Before anything is downloaded, the metadata must describe the backup stored where it was read (its host, database,
    name, object key and time); metadata copied from another backup, or with a field the format does not define, is
    refused as tampering whatever O(allow_unsigned) says.
  - Reads every format, whatever O(encryption) says - V(aes-256-gcm) (needs the master key that made the backup),
    V(hybrid-pq) (needs O(identity_file)), V(aes-256-cbc). The backups the seed's scripts made
    (C(backups/postgresql/<name>.encrypted) with C(metadata/<name>.meta)) are used only with O(allow_seed=true).
  - The archive's SQL runs as the plain role O(restore_role) (default V(quankey_restore), created on first use), through
    a temporary login role made for this restore, never as O(login_user) unless O(restore_as_admin=true). The restored
    objects then go to the archive's owner where that is safe (see RV(restore.owner)).
  - With O(pitr=true), point-in-time recovery instead - the whole cluster, not a database - as
    C(quankey-backup restore --pitr) does. The newest physical base backup (C(quankey-backup basebackup)) of
    O(source_host) that ended before the target (or O(backup)) is downloaded, its checksum, signature, decryption and
    every file against its manifest checked, into O(data_dir), which must be new or empty (anything else is refused
    before anything is read). Then PostgreSQL, run as O(os_user) on a private socket, replays the archived WAL
    (C(wal-push)) up to O(target_time), O(target_lsn) or O(target_name) (none - the end of the archive), promotes (or
    pauses, O(target_action=pause)) and is proved consistent (replay past the base backup's end, no commit after a
    target time, every database answering). Promoted, the server is stopped again for its own service to start.
    A failure before recovery removes what was written.
  - This is the same engine as the C(quankey-backup restore) command.
options:
  backup:
    description:
      - Which backup to restore, V(latest) or a backup name such as V(quankey_prod_backup_20250809_030000)
        (an object or metadata key works too).
    type: str
    default: latest
  before:
    description:
      - Restore the latest backup taken before this time, for example V(2025-08-09T03:00:00Z),
        V(2025-08-09) or V(20250809_030000). A time without a zone is UTC.
    type: str
  target_db:
    description:
      - Database to restore into. Defaults to C(<source_db>_restored_<YYYYmmdd_HHMMSS>) of the backup.
    type: str
  force:
    description:
      - Replace O(target_db) when it exists. The old database is kept, renamed, not dropped.
      - Refused while the old database has active connections.
    type: bool
    default: false
  source_host:
    description:
      - Host id whose backups to restore from. Defaults to O(host_id), that is this host's.
    type: str
  source_db:
    description:
      - Database whose backups to restore from. Defaults to O(db).
    type: str
  no_owner:
    description:
      - Skip restoring ownership and privileges (C(pg_restore --no-owner --no-privileges)), for a server that
        lacks the roles of the source.
    type: bool
    default: false
  with_globals:
    description:
      - For a new server after a complete loss. Before restoring, create the roles the backup kept (its globals -
        roles with their attributes, password hashes, memberships and settings) that this server lacks; afterwards
        give the restored database the source's owner, ACL (C(GRANT CONNECT ...)) and settings
        (C(ALTER DATABASE/ROLE ... SET)), so ownership and grants come back as they were.
      - An existing role is never changed unless O(force=true). Only a backup whose metadata signature verified here may
        create roles; one of another host gets no SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS and no membership in
        the predefined roles that reach the server's files or every table (the result's C(restore.globals.skipped) lists them).
      - A backup without globals (taken with O(quankey.backup.pg_encrypted_backup#module:globals=false) or by an older
        version) is restored as without this option, with a warning. Roles it created are dropped again when the
        restore fails.
    type: bool
    default: false
  allow_unsigned:
    description:
      - Restore a backup whose metadata is not signed, or is signed with a key not given here. Without signature
        checking, someone who can write to the bucket could have swapped the object and its checksum.
      - An invalid signature is refused even so, as is metadata copied from another backup. The seed's backups need
        O(allow_seed) instead.
    type: bool
    default: false
  allow_seed:
    description:
      - Also use the backups the seed's scripts made (flat layout, C(metadata/<name>.meta)). Their metadata is not
        signed, so neither its checksum nor the database it names can be trusted against someone who can write to
        the bucket. Without this option V(latest) and O(before) pass over them, and naming one fails.
      - Their SQL runs as O(restore_role) like any backup's, and what it creates is never handed to a privileged
        role.
      - Defaults to V(false).
      - If not set, the environment variable E(BACKUP_ALLOW_SEED) is used.
    type: bool
  jobs:
    description:
      - How many C(pg_restore) processes restore the backup at once, each fed by its own ranged reads of the object
        (table data split across them, then indexes and constraints with C(pg_restore --jobs)), like C(pg_restore -j)
        from a local file but straight from S3, with nothing on disk.
      - V(0) means the host's cores, at most 4. A backup without a range index (taken by an older version, with gzip
        compression or with aes-256-cbc) restores with one stream.
      - Defaults to V(0).
      - If not set, the environment variable E(RESTORE_JOBS) is used.
    type: int
  restore_as_admin:
    description:
      - Run the backup's SQL as O(login_user) instead of O(restore_role), for a backup that needs more than a plain
        role may do (for example an untrusted extension such as C(postgis)).
      - B(Risk:) the backup's SQL then runs with everything O(login_user) may do. For a superuser such as V(postgres)
        that includes running programs and reading or writing files on the database server (C(COPY ... TO PROGRAM))
        and changing any role or database, so whoever could write that backup into the bucket could take over the
        server.
        Use it only for a backup you trust as much as that login, such as this host's own backup whose signature
        verified, never for one whose source you doubt.
    type: bool
    default: false
  pitr:
    description:
      - Point-in-time recovery of the cluster into O(data_dir) (see above) instead of restoring a database from a dump.
      - O(backup) then names a base backup (default the newest that reaches the target) and O(source_host) the host
        whose cluster to recover. O(target_db), O(before), O(force), O(no_owner), O(with_globals),
        O(restore_as_admin) and O(jobs) belong to a dump's restore and are refused with it.
      - Runs as root (it hands the data directory to O(os_user)) or as O(os_user) itself.
    type: bool
    default: false
  data_dir:
    description:
      - With O(pitr=true), required - the new or empty directory the cluster is restored into; its parent must exist.
        A directory that holds anything is refused before anything is read.
    type: path
  target_time:
    description:
      - With O(pitr=true), recover up to this time (ISO 8601, for example V(2025-08-09T14:30:00Z); without a zone,
        UTC). The base backup is then the newest that ended before it.
      - Only one of O(target_time), O(target_lsn) and O(target_name); none recovers to the end of the archive.
    type: str
  target_lsn:
    description:
      - With O(pitr=true), recover up to this WAL location, as PostgreSQL prints one (for example V(0/16B3748)).
    type: str
  target_name:
    description:
      - With O(pitr=true), recover up to this restore point (made with C(pg_create_restore_point)).
    type: str
  target_exclusive:
    description:
      - With O(pitr=true), stop just before the target instead of just after it.
    type: bool
    default: false
  target_timeline:
    description:
      - With O(pitr=true), the timeline to follow - V(latest) (the default - the newest the archive holds),
        V(current) (the base backup's) or a timeline number.
    type: str
  target_action:
    description:
      - With O(pitr=true), what the server does at the target. V(promote) - it becomes a primary and is stopped cleanly
        for its own service to start. V(pause) - it stays running, paused, in recovery, on a private socket (RV(pitr.connect))
        to look at before you promote it (C(SELECT pg_wal_replay_resume())) or stop it.
    type: str
    choices: [promote, pause]
    default: promote
  os_user:
    description:
      - With O(pitr=true), the OS user the server runs as and that owns O(data_dir). Defaults to V(postgres) when the
        module runs as root, else the user it runs as.
    type: str
  config_file:
    description:
      - With O(pitr=true), the C(postgresql.conf) to recover with when the base backup's data directory has none (a
        Debian cluster keeps it in C(/etc/postgresql)). Default the one cluster's of that major version in
        C(/etc/postgresql/<major>/), else PostgreSQL's defaults.
    type: path
  archive:
    description:
      - With O(pitr=true), whether the restored server archives its WAL as its configuration says. V(false) turns
        C(archive_mode) off for the recovery (a copy that must not write into the archive).
    type: bool
    default: true
  timeout:
    description:
      - With O(pitr=true), seconds recovery may take before the module gives up (the server is then stopped and the
        data directory kept as it is).
    type: int
    default: 21600
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
      - Makes every check of a real run that writes nothing, and reports what would be restored where. It selects,
        downloads and fully verifies the backup (its metadata's trust, checksum, decryption with the keys given,
        decompression, archive table of contents) and checks the target's name. It reads the server as a real run
        does first (login, C(pg_restore) against the server's version, an existing O(target_db) without O(force=true)
        or with sessions, and O(restore_role) not being O(login_user) or a privileged role; a missing one would be
        created), and fails where the real run would. It creates and changes nothing.
      - With O(pitr=true), makes the checks a real run makes before it writes (O(data_dir) new or empty, O(os_user),
        the base backup chosen for the target, its metadata's trust and size, its data key opened with the keys given,
        the PostgreSQL server programs of its version) and reports them in RV(pitr) - the base backup, the target, the
        data directory's state - without downloading the base backup or writing anything.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - zstandard >= 0.21 (for backups compressed with zstd)
  - PostgreSQL client programs (C(pg_restore), C(psql)) at least as new as the server
notes:
  - One of O(db) and O(source_db) is required (O(db) may come from E(DB_NAME) or O(env_file)).
  - Every run restores, so the task always reports a change; run it again with the same O(target_db) and it
    is refused unless O(force=true).
seealso:
  - module: quankey.backup.pg_encrypted_backup
  - module: quankey.backup.backup_info
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: Restore the latest backup of quankey_prod into a new database
  quankey.backup.s3_backup_restore:
    db: quankey_prod
    target_db: quankey_prod_check
    login_password: "{{ vault_pg_password }}"
    bucket: quankey-backups-prod
    encryption_key: "{{ vault_backup_encryption_key }}"
  register: restored

- name: Prove last night's backup of db1 restores and the target may be made, without changing anything
  quankey.backup.s3_backup_restore:
    source_host: db1
    source_db: quankey_prod
    before: "2025-08-09T06:00:00Z"
    bucket: quankey-backups-prod
    encryption_key: "{{ vault_backup_encryption_key }}"
  check_mode: true
  register: verified

- name: After losing the server, restore onto a new one, with the roles, memberships and settings the backup kept
  quankey.backup.s3_backup_restore:
    source_host: db1
    source_db: quankey_prod
    target_db: quankey_prod
    with_globals: true
    env_file: /etc/quankey/backup.env
  register: restored

- name: Restore a backup taken before the last key rotation (the old key is still in the keyring)
  quankey.backup.s3_backup_restore:
    db: quankey_prod
    before: "2025-06-01"
    target_db: quankey_prod_may
    login_password: "{{ vault_pg_password }}"
    bucket: quankey-backups-prod
    encryption_key: "{{ vault_backup_encryption_key }}"
    decryption_keys:
      - "{{ vault_backup_encryption_key_2024 }}"

- name: Replacement machine - restore db1's backup here (its SQL runs as the plain role quankey_restore)
  quankey.backup.s3_backup_restore:
    source_host: db1
    db: quankey_prod
    target_db: quankey_prod
    login_password: "{{ vault_pg_password }}"
    bucket: quankey-backups-prod
    encryption_key: "{{ vault_backup_encryption_key }}"
  register: restored

- name: Point-in-time recovery - the cluster as it was just before a bad migration, into an empty directory
  quankey.backup.s3_backup_restore:
    pitr: true
    data_dir: /var/lib/postgresql/17/restored
    target_time: "2025-08-09T14:29:00Z"
    env_file: /etc/quankey/backup.env
  become: true
  register: recovered

- name: Which base backup would recover to a restore point, and is the directory usable (nothing written)
  quankey.backup.s3_backup_restore:
    pitr: true
    data_dir: /var/lib/postgresql/17/restored
    target_name: before-upgrade
    target_action: pause
    env_file: /etc/quankey/backup.env
  check_mode: true
  become: true
  register: pitr_plan

- name: Incident - replace the damaged database with a named backup (the old one is kept, renamed)
  quankey.backup.s3_backup_restore:
    db: quankey_prod
    backup: quankey_prod_backup_20250809_030000
    target_db: quankey_prod
    force: true
    login_password: "{{ vault_pg_password }}"
    bucket: quankey-backups-prod
    encryption_key: "{{ vault_backup_encryption_key }}"
"""

RETURN = r"""
restore:
  description:
    - The restore done, or in check mode the restore that would be done.
  returned: success, without O(pitr=true)
  type: dict
  contains:
    name:
      description: Name of the backup restored.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    object_key:
      description: Key of the backup object.
      returned: always
      type: str
      sample: backups/postgresql/db1/quankey_prod/quankey_prod_backup_20250809_030000.encrypted
    metadata_key:
      description: Key of the backup's metadata object.
      returned: in check mode
      type: str
      sample: metadata/db1/quankey_prod/quankey_prod_backup_20250809_030000.meta
    target_db:
      description: The database restored into.
      returned: always
      type: str
      sample: quankey_prod_restored_20250809_030000
    source_host:
      description: Host id of the backup.
      returned: always
      type: str
      sample: db1
    source_db:
      description: Database the backup was taken of.
      returned: always
      type: str
      sample: quankey_prod
    timestamp:
      description: Time of the backup (UTC), C(YYYYmmdd_HHMMSS).
      returned: always
      type: str
      sample: '20250809_030000'
    expected_table_count:
      description: Tables the backup's metadata records.
      returned: always
      type: int
      sample: 42
    replaced_db:
      description: New name of the database that O(force=true) replaced, or null.
      returned: when not in check mode
      type: str
      sample: quankey_prod__replaced_20250810_101500
    table_count:
      description: Tables in the restored database.
      returned: when not in check mode
      type: int
      sample: 42
    table_count_ok:
      description: Whether the table count matches the metadata (a mismatch fails the task).
      returned: when not in check mode
      type: bool
      sample: true
    checksum_ok:
      description:
        - Whether the object's bytes are the ones its metadata vouches for (a mismatch fails the task) - by the SHA-256
          of the whole download, or, for a parallel restore (RV(restore.integrity=segments)), by every AES-256-GCM
          segment authenticating at its own index, the object's last one as final.
      returned: when not in check mode
      type: bool
      sample: true
    decryption_ok:
      description: Whether every encrypted segment authenticated (a failure fails the task).
      returned: when not in check mode
      type: bool
      sample: true
    checksum_sha256:
      description: SHA-256 of the downloaded object; null for a parallel restore, which reads the object by ranges.
      returned: when not in check mode
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    integrity:
      description: How the object's bytes were proven, V(sha256) (one stream) or V(segments) (ranged reads).
      returned: when not in check mode
      type: str
      sample: segments
    jobs:
      description:
        - How many C(pg_restore) processes restored the backup at once. V(1) for a backup without a range index (taken
          by an older version, with gzip or with aes-256-cbc), which restores with one stream whatever O(jobs) says.
      returned: when not in check mode
      type: int
      sample: 2
    size_bytes:
      description: Bytes downloaded.
      returned: when not in check mode
      type: int
      sample: 294551233
    dump_bytes:
      description: Bytes of C(pg_dump) archive fed to C(pg_restore).
      returned: when not in check mode
      type: int
      sample: 690114560
    database_settings:
      description: V(exact) when the database was created with the source's encoding and locale, else V(server default).
      returned: when not in check mode
      type: str
      sample: exact
    duration_seconds:
      description: How long the restore took, from the backup's selection to the rename into place.
      returned: when not in check mode
      type: float
      sample: 12.25
    stage_seconds:
      description:
        - How long each stage of the restore took, in seconds - V(prepare) (selection, signature, keys, the target and
          restore role checks, the roles O(with_globals) creates, the staging database), V(download_restore) (download,
          checksum, decryption and C(pg_restore), until it exits), V(checks) (the table count, ownership, the
          database's owner and settings) and V(swap) (the renames). They add up to no more than
          RV(restore.duration_seconds).
        - A parallel restore adds V(schema) (the archive's table of contents and C(pg_restore --section=pre-data)) before
          V(download_restore) (then the table data only) and V(indexes) (C(pg_restore --section=post-data --jobs))
          after it.
        - While it runs, the engine logs its progress every 30 seconds (bytes of the object's size, rate and time
          left) with its other lines to the managed host's journal or syslog.
      returned: when not in check mode
      type: dict
      sample: {"prepare": 0.61, "download_restore": 10.93, "checks": 0.52, "swap": 0.08}
    s3_retries:
      description:
        - What S3 had to be asked again during the restore (each retry is also a warning in the log) -
          C(requests_retried), the requests that failed in a way that may pass (connection refused, reset or cut,
          a timeout, HTTP 5xx, throttling) and were sent again; C(retries), the extra attempts they took; and
          C(download_resumes), the downloads cut or stalled mid-body that went on with a ranged GET of the same
          object version from the byte reached. All 0 when nothing failed.
      returned: when not in check mode
      type: dict
      sample: {"requests_retried": 1, "retries": 2, "download_resumes": 1}
    bucket:
      description: The bucket the backup was read from - the primary's, or the replica's (see RV(restore.replica_fallback)).
      returned: when not in check mode
      type: str
      sample: quankey-backups-prod
    replica_fallback:
      description:
        - Null when the backup was read from the primary bucket. When the primary failed (out of reach once its retry
          window was spent, or the backup not found there) and a replica is set (C(S3_REPLICA_BUCKET) in the host's
          settings), the backup is read from the replica - C(bucket) and C(reason) (the primary's failure); a warning
          says so too. The metadata's signature is checked as always.
      returned: when not in check mode
      type: dict
      sample: {"bucket": "quankey-backups-replica", "reason": "HeadBucket of s3://quankey-backups-prod/ failed: ..."}
    encryption:
      description: How the backup was encrypted.
      returned: when not in check mode
      type: str
      sample: hybrid-pq
    signature:
      description:
        - The outcome of the metadata signature check, for example V(valid (key qk1-3f2a9c0d1e4b5a69)), V(unsigned),
          V(not verified (signed with key ..., not held here)) or V(unsigned (made by the seed's scripts)).
      returned: always
      type: str
      sample: valid (key qk1-3f2a9c0d1e4b5a69)
    trusted:
      description: Whether the metadata is signed with a key held here and names the backup stored where it was read.
      returned: always
      type: bool
      sample: true
    source_trusted:
      description:
        - Whether the backup is this host's own with verified metadata (another host's, the seed's or an unsigned one is
          not). Only then are restored objects handed to a superuser owner.
      returned: always
      type: bool
      sample: true
    sql_runs_as:
      description: The role the backup's SQL would run as (the restore role, or O(login_user) with O(restore_as_admin)).
      returned: in check mode
      type: str
      sample: quankey_restore
    target_exists:
      description: Whether O(target_db) exists (and would be replaced, O(force=true)).
      returned: in check mode
      type: bool
      sample: false
    restore_role_exists:
      description: Whether O(restore_role) exists (a real run creates it when not); null with O(restore_as_admin=true).
      returned: in check mode
      type: bool
      sample: true
    kdf:
      description: For an aes-256-cbc backup, the key derivation and the passphrase setting that opened it.
      returned: when not in check mode
      type: str
      sample: PBKDF2-HMAC-SHA256, 10000 iterations (openssl enc -pbkdf2), passphrase BACKUP_ENCRYPTION_KEY
    layout:
      description: V(host) for this collection's backups, V(seed) for those the seed's scripts made.
      returned: when not in check mode
      type: str
      sample: host
    sql_ran_as:
      description: The role the archive's SQL ran as, O(restore_role), or O(login_user) with O(restore_as_admin=true).
      returned: when not in check mode
      type: str
      sample: quankey_restore
    owner:
      description:
        - Who owns the restored objects. The archive's main owner when that role exists here and either the backup is
          this host's own with a verified signature or the owner is a plain role; otherwise O(restore_role) keeps them,
          so that a function of another host's, the seed's or an unsigned archive cannot run with a superuser's rights.
          With O(no_owner=true), O(login_user) for this host's own verified backup, else O(restore_role).
        - Null when the SQL ran as O(login_user) (O(restore_as_admin=true)) and the archive set the owners.
      returned: when not in check mode
      type: str
      sample: quankey
    archive_owners:
      description: The owners named in the archive's table of contents, with how many entries each owns.
      returned: when not in check mode
      type: dict
      sample: {"quankey": 57}
    globals:
      description:
        - With O(with_globals=true), what was done with the backup's globals (in check mode, what would be done);
          null without it or when the backup has none.
        - C(created_roles), C(existing_roles) (left as they were unless O(force=true)), C(altered_roles),
          C(memberships_granted), C(passwords_set), C(skipped) (what was not restored, and why),
          C(missing_tablespaces) (their data went to the default tablespace), C(settings_applied),
          C(database_owner), C(passwords) (V(included) or V(omitted) when the backup user could not read them).
      returned: always
      type: dict
      sample: {"created_roles": ["app", "app_owner"], "existing_roles": [], "altered_roles": [],
               "memberships_granted": ["app in app_owner"], "passwords_set": ["app"], "skipped": [],
               "missing_tablespaces": [], "settings_applied": 2, "database_owner": "app_owner", "passwords": "included"}
verification:
  description:
    - The full verification of the backup that check mode did instead of restoring.
  returned: in check mode, without O(pitr=true)
  type: dict
  contains:
    name:
      description: Name of the backup verified.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    checksum_ok:
      description: The SHA-256 of the object matched its metadata.
      returned: always
      type: bool
      sample: true
    decryption_ok:
      description: Every segment decrypted and authenticated with the given key.
      returned: always
      type: bool
      sample: true
    checksum_sha256:
      description: SHA-256 of the object.
      returned: always
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    table_count:
      description: Tables in the archive's table of contents (equal to the metadata's, else the task fails).
      returned: always
      type: int
      sample: 42
    key_id:
      description: Id of the master key that made the backup.
      returned: always
      type: str
      sample: qk1-3f2a9c0d1e4b5a69
    size_bytes:
      description: Bytes downloaded.
      returned: always
      type: int
      sample: 294551233
    dump_bytes:
      description: Bytes of the decrypted, decompressed archive.
      returned: always
      type: int
      sample: 690114560
    duration_seconds:
      description: How long the verification took.
      returned: always
      type: float
      sample: 7.5
    stage_seconds:
      description:
        - How long each stage of the verification took, in seconds - V(prepare) (selection, signature, keys, the
          globals object) and V(download_verify) (download, checksum, decryption and the archive's parse). They add up to
          no more than RV(verification.duration_seconds).
      returned: always
      type: dict
      sample: {"prepare": 0.35, "download_verify": 7.12}
    s3_retries:
      description:
        - What S3 had to be asked again during the verification (each retry is also a warning in the log) -
          C(requests_retried), the requests that failed in a way that may pass (connection refused, reset or cut,
          a timeout, HTTP 5xx, throttling) and were sent again; C(retries), the extra attempts they took; and
          C(download_resumes), the downloads cut or stalled mid-body that went on with a ranged GET of the same
          object version from the byte reached. All 0 when nothing failed.
      returned: always
      type: dict
      sample: {"requests_retried": 1, "retries": 2, "download_resumes": 1}
    bucket:
      description: The bucket the backup was read from - the primary's, or the replica's (see RV(verification.replica_fallback)).
      returned: always
      type: str
      sample: quankey-backups-prod
    replica_fallback:
      description:
        - Null when the backup was read from the primary bucket. When the primary failed (out of reach once its retry
          window was spent, or the backup not found there) and a replica is set (C(S3_REPLICA_BUCKET) in the host's
          settings), the backup is read from the replica - C(bucket) and C(reason) (the primary's failure); a warning
          says so too. The metadata's signature is checked as always.
      returned: always
      type: dict
      sample: {"bucket": "quankey-backups-replica", "reason": "HeadBucket of s3://quankey-backups-prod/ failed: ..."}
    encryption:
      description: How the backup was encrypted.
      returned: always
      type: str
      sample: aes-256-gcm
    signature:
      description: The outcome of the metadata signature check.
      returned: always
      type: str
      sample: valid (key qk1-3f2a9c0d1e4b5a69)
    trusted:
      description: Whether the metadata is signed with a key held here and names the backup stored where it was read.
      returned: always
      type: bool
      sample: true
    layout:
      description: V(host) for this collection's backups, V(seed) for those the seed's scripts made.
      returned: always
      type: str
      sample: seed
pitr:
  description:
    - With O(pitr=true), the point-in-time recovery done, or in check mode the one that would be done.
  returned: success, with O(pitr=true)
  type: dict
  contains:
    data_dir:
      description: The data directory restored into (absolute).
      returned: always
      type: str
      sample: /var/lib/postgresql/17/restored
    data_dir_state:
      description: V(missing) (it would be created) or V(empty), the only states a restore writes into.
      returned: in check mode
      type: str
      sample: empty
    host:
      description: Host id whose cluster was recovered.
      returned: always
      type: str
      sample: db1
    base_backup:
      description: The base backup restored (chosen as the newest that ended before the target, or O(backup)).
      returned: always
      type: str
      sample: quankey_base_20250809_020000
    base_timestamp:
      description: When the base backup was taken (UTC).
      returned: always
      type: str
      sample: '2025-08-09T02:00:00Z'
    base_start_lsn:
      description: Where the base backup's WAL begins.
      returned: always
      type: str
      sample: 0/2000028
    base_stop_lsn:
      description: Where the base backup ends; recovery must replay past it.
      returned: always
      type: str
      sample: 0/2000100
    base_timeline:
      description: The base backup's timeline.
      returned: always
      type: int
      sample: 1
    server_version:
      description: The PostgreSQL version of the base backup's cluster.
      returned: always
      type: str
      sample: '17.2'
    size_bytes:
      description: Bytes of the base backup's object that a real run downloads.
      returned: in check mode
      type: int
      sample: 4718592
    bin_dir:
      description: The PostgreSQL server programs a real run uses.
      returned: in check mode
      type: str
      sample: /usr/lib/postgresql/17/bin
    target:
      description: The recovery target - C(kind) (V(time), V(lsn), V(name) or V(latest)), C(value), C(inclusive), C(timeline).
      returned: always
      type: dict
      sample: {"kind": "time", "value": "2025-08-09T14:29:00.000000Z", "inclusive": true, "timeline": "latest"}
    target_description:
      description: The target in words.
      returned: in check mode
      type: str
      sample: time 2025-08-09T14:29:00.000000Z
    target_action:
      description: V(promote) or V(pause).
      returned: always
      type: str
      sample: promote
    os_user:
      description: The OS user the server runs as and that owns the data directory.
      returned: always
      type: str
      sample: postgres
    signature:
      description: The outcome of the base backup's metadata signature check.
      returned: always
      type: str
      sample: valid (key qk1-3f2a9c0d1e4b5a69)
    trusted:
      description: Whether the base backup's metadata is signed with a key held here and names its own place.
      returned: always
      type: bool
      sample: true
    reached:
      description: What recovery reached - C(state) (V(promoted) or V(paused)) and C(replay_lsn).
      returned: when not in check mode
      type: dict
      sample: {"state": "promoted", "replay_lsn": "0/3000060"}
    replay_lsn:
      description: The last WAL location replayed.
      returned: when not in check mode
      type: str
      sample: 0/3000060
    last_replayed_commit:
      description: When the last replayed transaction committed (UTC), or null; never after a target time.
      returned: when not in check mode
      type: str
      sample: '2025-08-09T14:28:57.125000Z'
    timeline:
      description: The restored cluster's timeline (a promotion starts a new one).
      returned: when not in check mode
      type: int
      sample: 2
    databases:
      description: The databases of the restored cluster, each of which answered a catalog query.
      returned: when not in check mode
      type: list
      elements: str
      sample: [postgres, quankey_prod]
    relations:
      description: Relations (C(pg_class) rows) in each database.
      returned: when not in check mode
      type: dict
      sample: {"postgres": 415, "quankey_prod": 480}
    files:
      description: Files restored, each checked against the base backup's manifest.
      returned: when not in check mode
      type: int
      sample: 1250
    manifest_ok:
      description: Whether every file matched the manifest (a mismatch fails the task).
      returned: when not in check mode
      type: bool
      sample: true
    wal_files_restored:
      description: WAL files (and timeline histories) the recovery read from the archive.
      returned: when not in check mode
      type: int
      sample: 12
    running:
      description: Whether the server was left running (O(target_action=pause)); promoted, it is stopped.
      returned: when not in check mode
      type: bool
      sample: false
    connect:
      description: With O(target_action=pause), how to reach the paused server (C(psql) on its private socket).
      returned: when O(target_action=pause)
      type: str
      sample: psql -h /tmp/quankey-pitr-sock-x1y2 -p 41234 -U postgres
    log:
      description: The server's log of the recovery, in the data directory.
      returned: when not in check mode
      type: str
      sample: /var/lib/postgresql/17/restored/log/quankey-restore-pitr.log
    duration_seconds:
      description: How long the restore and recovery took.
      returned: when not in check mode
      type: float
      sample: 48.3
    stage_seconds:
      description: How long each stage took - V(prepare), V(download_extract), V(recover), V(check).
      returned: when not in check mode
      type: dict
      sample: {"prepare": 0.4, "download_extract": 20.1, "recover": 27.2, "check": 0.6}
error:
  description: What kind of failure stopped the module, for playbooks that branch on it.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class, for example V(RefusedError) for an existing target or V(WrongKeyError).
      returned: failure
      type: str
      sample: WrongKeyError
    step:
      description: The step that failed, when known.
      returned: failure
      type: str
      sample: decrypt
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this failure.
      returned: failure
      type: int
      sample: 6
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import BackupError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import pitr, restore

PITR_ONLY = ("data_dir", "target_time", "target_lsn", "target_name", "target_timeline", "os_user", "config_file")
PITR_FLAGS = dict(("--" + name.replace("_", "-"), name) for name in PITR_ONLY + ("target_action",))


def argument_spec():
    """The module's options: the shared groups plus the backup selection and the target."""
    return ansible_common.common_argument_spec(
        ansible_common.setting_options("allow_seed", "jobs"),
        backup=dict(type="str", default="latest"),
        before=dict(type="str"),
        target_db=dict(type="str"),
        force=dict(type="bool", default=False),
        source_host=dict(type="str"),
        source_db=dict(type="str"),
        no_owner=dict(type="bool", default=False),
        with_globals=dict(type="bool", default=False),
        allow_unsigned=dict(type="bool", default=False),
        restore_as_admin=dict(type="bool", default=False),
        pitr=dict(type="bool", default=False),
        data_dir=dict(type="path"),
        target_time=dict(type="str"),
        target_lsn=dict(type="str"),
        target_name=dict(type="str"),
        target_exclusive=dict(type="bool", default=False),
        target_timeline=dict(type="str"),
        target_action=dict(type="str", choices=list(pitr.TARGET_ACTIONS), default="promote"),
        os_user=dict(type="str"),
        config_file=dict(type="path"),
        archive=dict(type="bool", default=True),
        timeout=dict(type="int", default=pitr.DEFAULT_TIMEOUT),
    )


def mode_conflicts(params):
    """The options given that belong to the other kind of restore (a dump's, or point-in-time recovery's)."""
    if params["pitr"]:
        return [name for name in ("target_db", "before", "source_db", "jobs") if params.get(name) not in (None, "")] + [
            name for name in ("force", "no_owner", "with_globals", "restore_as_admin") if params.get(name)]
    return [name for name in PITR_ONLY if params.get(name) not in (None, "")] + [
        name for name, default in (("target_exclusive", False), ("target_action", "promote"), ("archive", True),
                                   ("timeout", pitr.DEFAULT_TIMEOUT)) if params.get(name) != default]


def option_names(message):
    """The engine's message with the command's flags (--data-dir) named as this module's options (data_dir)."""
    for flag in sorted(PITR_FLAGS, key=len, reverse=True):
        message = message.replace(flag, PITR_FLAGS[flag])
    return message


def run_pitr(module, settings):
    """Point-in-time recovery (workflows/pitr.py), or in check mode its plan; the result's ``pitr``."""
    params = module.params
    try:
        target = pitr.parse_target(params["target_time"], params["target_lsn"], params["target_name"],
                                   not params["target_exclusive"], params["target_timeline"])
        backup = None if params["backup"] in (None, "", "latest") else params["backup"]
        selection = dict(target=target, backup=backup, host=params["source_host"], action=params["target_action"],
                         os_user=params["os_user"], allow_unsigned=params["allow_unsigned"])
        if module.check_mode:
            return pitr.plan_restore_pitr(settings, params["data_dir"], **selection)
        return pitr.run_restore_pitr(settings, params["data_dir"], archive=params["archive"], timeout=params["timeout"],
                                     config_file=params["config_file"], **selection)
    except BackupError as exc:
        exc.message = option_names(exc.message)
        exc.args = (exc.message,)
        raise


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("target_time", "target_lsn", "target_name")],
                           required_if=[("pitr", True, ("data_dir",))])
    ansible_common.require_libraries(module, "boto3", "cryptography")
    params = module.params
    conflicts = mode_conflicts(params)
    if conflicts:
        module.fail_json(msg="%s %s to %s: %s" % (
            ", ".join(conflicts), "belongs" if len(conflicts) == 1 else "belong",
            "a database's restore from a dump, not point-in-time recovery" if params["pitr"]
            else "point-in-time recovery", "leave it out with pitr=true" if params["pitr"]
            else "add pitr=true (and data_dir), or leave it out"))

    with ansible_common.engine_errors(module, "restore"):
        settings = ansible_common.module_settings(module)
        if params["pitr"]:
            result = dict(pitr=run_pitr(module, settings))
        else:
            result = restore_dump(module, settings)
        for part in result.values():
            fallback = part.get("replica_fallback") if isinstance(part, dict) else None
            if fallback:
                module.warn("the backup was read from the REPLICA s3://%s: the primary bucket failed (%s)"
                            % (fallback["bucket"], fallback["reason"]))
    module.exit_json(changed=True, **result)


def restore_dump(module, settings):
    """A database's restore from a dump (workflows/restore.py), or in check mode its full verification."""
    params = module.params
    before = layout.parse_time(params["before"], "before") if params["before"] else None
    selection = dict(backup=params["backup"], before=before, host=params["source_host"], db=params["source_db"],
                     allow_unsigned=params["allow_unsigned"], allow_seed=settings.allow_seed)
    if module.check_mode:
        plan, verification = restore.preview_restore(settings, target_db=params["target_db"], force=params["force"],
                                                     as_admin=params["restore_as_admin"],
                                                     with_globals=params["with_globals"], **selection)
        return dict(restore=plan, verification=verification)
    return dict(restore=restore.run_restore(settings, target_db=params["target_db"], force=params["force"],
                                            no_owner=params["no_owner"], as_admin=params["restore_as_admin"],
                                            with_globals=params["with_globals"], **selection))


if __name__ == "__main__":
    main()
