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
  db:
    required: true
  name:
    description:
      - Stem of the backup's name, C(<name>_backup_<YYYYmmdd_HHMMSS>). Defaults to O(db).
      - Letters, digits, V(.), V(_) and V(-) only.
      - If not set, the environment variable E(BACKUP_NAME) is used.
    type: str
  compression:
    description:
      - How to compress the dump before encrypting it. V(zstd) (level 3, in one thread) is fast and small,
        V(gzip) is for compatibility (the seed's restore script and C(gunzip)).
      - If not set, the environment variable E(BACKUP_COMPRESSION) is used.
    type: str
    choices: [zstd, gzip, none]
    default: zstd
  storage_class:
    description:
      - S3 storage class of the backup object.
      - If not set, the environment variable E(S3_STORAGE_CLASS) is used.
    type: str
    choices: [STANDARD, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, REDUCED_REDUNDANCY, GLACIER, DEEP_ARCHIVE]
    default: STANDARD_IA
  retention_days:
    description:
      - Days the backup is meant to be kept, recorded in its metadata for pruning.
      - If not set, the environment variable E(BACKUP_RETENTION_DAYS) is used.
    type: int
    default: 30
extends_documentation_fragment:
  - quankey.backup.postgres
  - quankey.backup.s3
  - quankey.backup.encryption
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Checks the settings, the login to PostgreSQL, the C(pg_dump) version against the server's and
        access to the bucket, and returns the keys it would write. It writes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - zstandard >= 0.21 (when O(compression=zstd))
  - PostgreSQL client programs (C(pg_dump), C(pg_restore), C(psql)) at least as new as the server
notes:
  - The module runs on the host that can reach the database, usually the database host itself.
  - Options fall back to the environment variables the C(quankey-backup) command reads, so a task can
    rely on the environment set up for that command.
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

    - name: Take a gzip-compressed backup kept in the STANDARD storage class
      quankey.backup.pg_encrypted_backup:
        db: quankey_prod
        name: before-migration
        compression: gzip
        storage_class: STANDARD
        retention_days: 90
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
      description: How long the backup took.
      returned: when not in check mode
      type: float
      sample: 9.512
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

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common, config
from ansible_collections.quankey.backup.plugins.module_utils.formats import compression
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup

DEFAULTS = ansible_common.SETTINGS_DEFAULTS


def argument_spec():
    """The module's options: the shared groups plus what only a backup needs."""
    return ansible_common.common_argument_spec(
        db=dict(required=True),
        name=dict(type="str", fallback=(env_fallback, ["BACKUP_NAME"])),
        compression=dict(type="str", choices=list(compression.COMPRESSIONS), default=compression.DEFAULT_COMPRESSION,
                         fallback=(env_fallback, ["BACKUP_COMPRESSION"])),
        storage_class=dict(type="str", choices=list(config.STORAGE_CLASSES), default=config.DEFAULT_STORAGE_CLASS,
                           fallback=(env_fallback, ["S3_STORAGE_CLASS"])),
        retention_days=dict(type="int", default=DEFAULTS["retention_days"],
                            fallback=(env_fallback, ["BACKUP_RETENTION_DAYS"])),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3", "cryptography")
    if module.params["compression"] == "zstd":
        ansible_common.require_libraries(module, "zstandard")

    with ansible_common.engine_errors(module, "backup"):
        settings = ansible_common.settings_from_params(module.params)
        if module.check_mode:
            result = backup.plan_backup(settings).describe()
        else:
            result = backup.run_backup(settings)
    module.exit_json(changed=True, backup=result)


if __name__ == "__main__":
    main()
