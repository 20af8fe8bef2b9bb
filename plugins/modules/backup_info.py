#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_info
short_description: List the PostgreSQL backups in an S3 bucket, newest first
version_added: 0.1.0
description:
  - Lists committed backups (those whose metadata object exists) with their keys, times and sizes, newest
    first, optionally with the details from each backup's metadata.
  - As C(quankey-backup list) does, it lists the backups of this host (O(host_id), by default the managed host's
    short host name) and database (O(db); when it is not set, every database of this host), with the seed's own
    backups of that database. O(host) lists another host's, O(all=true) the whole bucket.
  - S3 listings are paginated, so buckets with any number of objects work.
  - Also returns the keys of uncommitted objects (data without metadata, left by a failed backup).
  - This is the same engine as the C(quankey-backup list) command.
options:
  host:
    description:
      - Only backups of this host id. Defaults to O(host_id), this host's, unless O(all=true).
    type: str
  all:
    description:
      - List every host and database in the bucket, as C(quankey-backup list --all) does. O(host) still narrows it to
        one host, and O(db) to one database when it is given as an option (not when it comes from the environment or
        O(env_file)).
    type: bool
    default: false
    aliases: [all_hosts]
  since:
    description:
      - Only backups taken at or after this time, for example V(2025-08-01), V(2025-08-01T12:00:00Z) or
        V(20250801_120000). A time without a zone is UTC.
    type: str
  limit:
    description:
      - Return at most this many backups (the newest). V(0) returns all.
    type: int
    default: 0
  details:
    description:
      - Also read each returned backup's metadata (checksum, compression, key id, table count, versions) and judge
        it as a restore would (RV(backups[].signature), RV(backups[].trusted)), with the signing keys given
        (O(signing_key), and those derived from O(encryption_key), O(decryption_keys) and O(keyring_file)). One
        small read per backup.
    type: bool
    default: false
  include_deleted:
    description:
      - In a versioned bucket, also list the backups delete markers hide, as C(quankey-backup list --include-deleted)
        does, each with RV(backups[].deleted) saying when and which objects (C(quankey-backup undelete) brings one
        back). Reads the bucket's versions (C(s3:ListBucketVersions)).
    type: bool
    default: false
  backup:
    description:
      - Return only the backup a restore would select (the engine's selection, the one
        M(quankey.backup.s3_backup_restore) makes) - V(latest) or a backup name such as
        V(quankey_prod_backup_20250809_030000) (an object or metadata key works too) - of O(host) (default this host,
        O(host_id)) and O(db), with its metadata and the verdict a restore obeys (RV(backups[].signature)). The task
        fails when there is none, saying what was asked.
      - A playbook can show what a restore will take, then restore exactly that one by its name.
      - O(since), O(limit) and O(details) do not apply.
    type: str
  before:
    description:
      - Select the latest backup taken before this time (with O(backup) a name, that backup only if it is older),
        for example V(2025-08-09T03:00:00Z), V(2025-08-09) or V(20250809_030000). A time without a zone is UTC.
      - Implies O(backup=latest) when O(backup) is not set.
    type: str
  allow_seed:
    description:
      - With O(backup) or O(before), also select backups made by the seed's scripts (unsigned), as
        O(quankey.backup.s3_backup_restore#module:allow_seed=true) does; without it they are passed over.
      - Defaults to V(false).
      - If not set, the environment variable E(BACKUP_ALLOW_SEED) is used.
    type: bool
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
      - The module only reads; it does the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - O(host_id) and O(db) choose the backups listed by default. Of the encryption options only the signing keys
    (O(signing_key), O(encryption_key), O(decryption_keys), O(keyring_file)) are used, to check signatures with
    O(details=true). The other PostgreSQL options are not used; they are accepted so that C(module_defaults) for
    C(group/quankey.backup.all) can set them once for every module.
seealso:
  - module: quankey.backup.backup_health
  - module: quankey.backup.s3_backup_restore
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: List every backup in the bucket
  quankey.backup.backup_info:
    bucket: quankey-backups-prod
    all: true
  register: all_backups

- name: List this host's backups of its database, with the settings of the host's env file
  quankey.backup.backup_info:
    env_file: /etc/quankey/backup.env
  become: true
  register: mine

- name: The three newest backups of quankey_prod on db1, with their metadata
  quankey.backup.backup_info:
    bucket: quankey-backups-prod
    host: db1
    db: quankey_prod
    limit: 3
    details: true
  register: recent

- name: Show their names and checksums
  ansible.builtin.debug:
    msg: "{{ item.name }} {{ item.checksum_sha256 }}"
  loop: "{{ recent.backups }}"

- name: Backups taken since the start of the month
  quankey.backup.backup_info:
    bucket: quankey-backups-prod
    since: "2025-08-01"
  register: this_month

- name: The backup a restore of db1's quankey_prod as it was before 06:00 would take
  quankey.backup.backup_info:
    bucket: quankey-backups-prod
    host: db1
    db: quankey_prod
    before: "2025-08-09T06:00:00Z"
  register: chosen

- name: Restore exactly that one
  quankey.backup.s3_backup_restore:
    bucket: quankey-backups-prod
    backup: "{{ chosen.backups[0].name }}"
    source_host: db1
    source_db: quankey_prod
    target_db: quankey_prod_before_six
"""

RETURN = r"""
backups:
  description: The backups, newest first; with O(backup) or O(before), the one selected.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the backup.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    host:
      description: Host id the backup was taken on; null for the seed's backups (they have no host level).
      returned: always
      type: str
      sample: db1
    database:
      description: Database backed up.
      returned: always
      type: str
      sample: quankey_prod
    timestamp:
      description: Time of the backup (UTC), ISO 8601.
      returned: always
      type: str
      sample: '2025-08-09T03:00:00Z'
    object_key:
      description: Key of the backup object.
      returned: always
      type: str
      sample: backups/postgresql/db1/quankey_prod/quankey_prod_backup_20250809_030000.encrypted
    metadata_key:
      description: Key of the metadata object.
      returned: always
      type: str
      sample: metadata/db1/quankey_prod/quankey_prod_backup_20250809_030000.meta
    object_size:
      description: Size of the object in the listing; null when the object is missing (the backup cannot be restored).
      returned: always
      type: int
      sample: 294551233
    size_bytes:
      description: Size recorded in the metadata.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: int
      sample: 294551233
    checksum_sha256:
      description: SHA-256 of the object recorded in the metadata.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    compression:
      description: Compression of the dump.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: zstd
    encryption:
      description: How the backup is encrypted, V(aes-256-gcm), V(hybrid-pq) or V(aes-256-cbc).
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: aes-256-gcm
    key_id:
      description: Id of the master key that made the backup (the first recipient's with V(hybrid-pq); null for the seed's).
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: qk1-3f2a9c0d1e4b5a69
    recipient_ids:
      description: The recipients the data key is sealed to.
      returned: when O(details=true), or O(backup) or O(before) selects one, and the backup is V(hybrid-pq)
      type: list
      elements: str
      sample: [qkr-5b1f0e6a7c2d9e84]
    signature:
      description:
        - The verdict on the backup's metadata, the one a restore obeys. V(valid (key <id>)) when it is signed with a
          key given here and names the backup stored where it was read; V(invalid) (a bad signature, or metadata
          copied from another backup; the message says which) and a refused document are never restored;
          V(unsigned) and V(not verified (signed with key <id>, not held here)) only with
          O(quankey.backup.s3_backup_restore#module:allow_unsigned=true); V(unsigned (made by the seed's scripts)) only
          with O(quankey.backup.s3_backup_restore#module:allow_seed=true); V(not checked (no signing key here)) when
          no key is given.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: valid (key qk1-3f2a9c0d1e4b5a69)
    trusted:
      description: Whether that verdict is V(valid), that is the backup may be restored without any opt-in.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: bool
      sample: true
    layout:
      description: V(seed) for a backup the seed's scripts made (flat keys, no host); absent otherwise.
      returned: for the seed's backups
      type: str
      sample: seed
    table_count:
      description: Tables in the backup.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: int
      sample: 42
    dump_bytes:
      description: Size of the uncompressed C(pg_dump) archive.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: int
      sample: 690114560
    duration_seconds:
      description: How long the backup took.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: float
      sample: 9.512
    server_version:
      description: PostgreSQL server version at backup time.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: '15.8'
    pg_dump_version:
      description: Version of the C(pg_dump) that made the backup.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: '15.8'
    storage_class:
      description: S3 storage class requested for the object.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: str
      sample: STANDARD_IA
    globals:
      description:
        - The backup's globals object (roles, memberships, settings its database needs; see
          C(quankey.backup.s3_backup_restore) C(with_globals)) - C(object_key), C(size_bytes), C(checksum_sha256),
          counts of C(roles), C(memberships), C(tablespaces), and C(passwords) (V(included) or V(omitted)).
        - Null for a backup without one.
      returned: when O(details=true), or O(backup) or O(before) selects one
      type: dict
      sample: {"object_key": "backups/postgresql/db1/quankey_prod/quankey_prod_backup_20250809_030000.globals",
               "size_bytes": 812, "checksum_sha256": "9f2c0e8d5b7a6c4e3f1d2b0a9e8c7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d",
               "roles": 3, "memberships": 1, "tablespaces": 0, "passwords": "included"}
    deleted:
      description:
        - With O(include_deleted=true), null for a backup no delete marker hides, else C(at) (UTC, the newest
          marker's time) and C(objects) (the keys the markers hide).
      returned: when O(include_deleted=true)
      type: dict
      sample: {"at": "2026-12-01T10:00:00Z",
               "objects": ["metadata/db1/quankey_prod/quankey_prod_backup_20250809_030000.meta"]}
drill:
  description:
    - The newest restore drill of the host's database (C(quankey-backup drill)) whose report verifies here (its
      signature, with the signing keys held; with none held, not checked) - C(timestamp) (when it started),
      C(result) (V(passed) or V(failed)), C(backup), C(rto_seconds) (the restore's wall time), C(rpo_seconds) (the
      backup's age when the drill started) and C(report_key); null when there is none.
  returned: when O(details=true) for one host and database
  type: dict
  sample: {"timestamp": "2025-08-10T04:00:00Z", "result": "passed", "backup": "quankey_prod_backup_20250809_030000",
           "rto_seconds": 184.2, "rpo_seconds": 90000.0,
           "report_key": "drills/db1/quankey_prod/20250810_040000.json"}
orphans:
  description: Keys of objects without metadata (uncommitted backups, invisible to restore); empty with O(backup) or O(before).
  returned: always
  type: list
  elements: str
  sample: [backups/postgresql/db1/quankey_prod/quankey_prod_backup_20250808_030000.encrypted]
error:
  description: What kind of failure stopped the module, for playbooks that branch on it.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class.
      returned: failure
      type: str
      sample: StorageError
    step:
      description: The step that failed, when known.
      returned: failure
      type: str
      sample: null
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this failure.
      returned: failure
      type: int
      sample: 5
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.workflows import drill, inventory, wiring


def argument_spec():
    """The module's options: the shared groups plus the filters."""
    return ansible_common.common_argument_spec(
        ansible_common.setting_options("allow_seed"),
        host=dict(type="str"),
        all=dict(type="bool", default=False, aliases=["all_hosts"]),
        since=dict(type="str"),
        limit=dict(type="int", default=0),
        details=dict(type="bool", default=False),
        include_deleted=dict(type="bool", default=False),
        backup=dict(type="str"),
        before=dict(type="str"),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3")
    params = module.params

    with ansible_common.engine_errors(module, "listing"):
        settings = ansible_common.module_settings(module)
        if params["backup"] or params["before"]:
            before = layout.parse_time(params["before"], "before") if params["before"] else None
            record = inventory.select(settings, wiring.open_store(settings), backup=params["backup"] or "latest",
                                      before=before, host=params["host"], db=params["db"],
                                      allow_seed=settings.allow_seed)
            found = {"backups": [record.summary()], "orphans": []}
        else:
            since = layout.parse_time(params["since"], "since") if params["since"] else None
            # as `quankey-backup list`: this host and database unless all (then db only when given as an option)
            host = params["host"] or (None if params["all"] else settings.host)
            db = params["db"] if params["all"] else settings.db_name
            found = inventory.find_backups(settings, host=host, db=db, since=since,
                                           limit=params["limit"], details=params["details"],
                                           include_deleted=params["include_deleted"])
            if params["details"] and host and db:
                found["drill"] = drill.last_drill(settings, host, db)
    module.exit_json(changed=False, **found)


if __name__ == "__main__":
    main()
