#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_health
short_description: Check that the backups of a PostgreSQL database are recent, complete and readable
version_added: 0.1.0
description:
  - Applies the backup alert rules to one host's backups of one database and returns each problem as a
    finding with a severity, and the overall status V(ok), V(warning) or V(critical).
  - Critical when there are no backups, the latest is older than O(max_age_hours), the bucket cannot be
    read, the latest backup's metadata or object is missing or wrong, one of the newest backups' metadata is
    refused (a field the format does not define, or copied from another backup) or has an invalid signature, or
    the encryption header of one of the newest backups' objects is not a known format (or is a plaintext
    C(pg_dump) archive). A warning when
    the latest is smaller than O(min_size_bytes) or much smaller than the ones before it, when fewer
    backups were taken over O(window_days) than O(schedule) implies, when uncommitted objects linger, or
    when one of the newest backups is wrapped with a key the keyring given does not hold.
  - Reads the bucket only (a listing, a few metadata objects and the first bytes of their objects);
    never connects to PostgreSQL and never decrypts. The keys (O(encryption_key), O(decryption_keys),
    O(keyring_file)) are only used for their key ids; when none is given, key ids are not checked.
  - This is the same engine as the C(quankey-backup health) command.
options:
  max_age_hours:
    description:
      - The latest backup older than this many hours is critical.
    type: float
    default: 36
  min_size_bytes:
    description:
      - The latest backup smaller than this many bytes is a warning (an empty database or a cut dump).
    type: int
    default: 1048576
  schedule:
    description:
      - How often backups are meant to run, V(daily), V(12-hour), V(6-hour), or a number of hours between
        backups such as V(8). Fewer backups than this implies over O(window_days) is a warning.
      - Defaults to V(daily).
      - If not set, the environment variable E(BACKUP_SCHEDULE) is used.
    type: str
  window_days:
    description:
      - Days looked back by the frequency rule.
    type: float
    default: 7
  fail_on:
    description:
      - The status at which the task fails. V(critical) fails on a critical status only, V(warning) on a
        warning or worse, V(never) only reports.
      - The result (status, findings) is returned in either case.
    type: str
    choices: [critical, warning, never]
    default: critical
  allow_seed:
    description:
      - Count the backups the seed's scripts made (flat layout, C(metadata/<name>.meta)) with this database's, as
        restores with O(quankey.backup.s3_backup_restore#module:allow_seed=true) would use them. Their metadata is
        not signed.
      - Without it they are not counted (a host whose only backups are the seed's has none), and an V(info) finding
        V(seed_backups) says how many there are.
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
  - The series checked is O(host_id) (default this host's short name) and O(db). Of the PostgreSQL options
    only O(db) is used; the others are accepted so that C(module_defaults) for C(group/quankey.backup.all)
    can set them once for every module.
seealso:
  - module: quankey.backup.backup_info
  - module: quankey.backup.pg_encrypted_backup
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: Fail the play when the backups of quankey_prod on this host are critical
  quankey.backup.backup_health:
    db: quankey_prod
    bucket: quankey-backups-prod
    host_id: "{{ inventory_hostname_short }}"

- name: Report on backups taken every 6 hours, failing on warnings too
  quankey.backup.backup_health:
    db: quankey_prod
    bucket: quankey-backups-prod
    host_id: db1
    schedule: 6-hour
    max_age_hours: 8
    fail_on: warning
  register: health

- name: Only report, then list what was found
  quankey.backup.backup_health:
    db: quankey_prod
    bucket: quankey-backups-prod
    fail_on: never
  register: health

- name: Show the findings
  ansible.builtin.debug:
    msg: "{{ item.severity }} {{ item.rule }}: {{ item.message }}"
  loop: "{{ health.findings }}"
"""

RETURN = r"""
status:
  description: The worst severity found, V(ok), V(warning) or V(critical).
  returned: always
  type: str
  sample: critical
exit_code:
  description: The exit status the C(quankey-backup health) command gives, 0 ok, 1 warning, 2 critical.
  returned: always
  type: int
  sample: 2
findings:
  description: Each problem found, in the order the rules run; empty when all is well.
  returned: always
  type: list
  elements: dict
  contains:
    rule:
      description:
        - The rule, for example V(age), V(min_size), V(frequency), V(s3_access), V(no_backups), V(encryption),
          V(metadata) (a metadata object refused), V(metadata_signature), V(seed_backups), V(replica) (with
          C(S3_REPLICA_BUCKET) in the host's settings - the newest good backup missing on the replica, the replica
          behind by more than the schedule's interval, or unreadable), V(drill) (the last restore drill failed is
          critical; no passed drill within C(DRILL_MAX_AGE_DAYS), default 35 days, once the database has drill reports
          or that variable is set, is a warning; a drill report that is forged or unsigned is a warning or info, and
          not counted), V(wal) (with C(WAL_ARCHIVING=true) in the host's settings - PostgreSQL's last archiving attempt
          failed, C(archive_mode) off or no segment archived is critical; the newest archived segment older than
          C(WAL_MAX_LAG_MINUTES), default 60, or C(pg_stat_archiver) unreadable is a warning), V(base) (with
          C(WAL_ARCHIVING=true) - no usable base backup of the host is critical; the newest older than
          C(BASE_MAX_AGE_DAYS), default 8, a newer one unusable, or C(base/) not listable is a warning).
        - With C(BACKUP_KIND=physical) in the host's settings (the pg_backup role's C(pg_backup_kind) V(physical),
          no dumps) the dump rules (V(no_backups), V(age), V(min_size), V(frequency), ...) and V(replica) are not
          applied, V(wal) and V(base) are (as with C(WAL_ARCHIVING=true)), and dumps left from an earlier kind are an
          info finding V(dumps).
      returned: always
      type: str
      sample: age
    severity:
      description: V(info) (does not change the status), V(warning) or V(critical).
      returned: always
      type: str
      sample: critical
    message:
      description: What is wrong and what to do.
      returned: always
      type: str
      sample: "latest backup quankey_prod_backup_20250806_030000 is 72.0 h old (limit 36 h): backups have stopped"
latest:
  description:
    - The latest backup, or null when there is none, with the fields of RV(quankey.backup.backup_info#module:backups).
  returned: always
  type: dict
  contains:
    name:
      description: Name of the backup.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    timestamp:
      description: Time of the backup (UTC), ISO 8601.
      returned: always
      type: str
      sample: '2025-08-09T03:00:00Z'
    age_hours:
      description: Hours since the backup was taken.
      returned: always
      type: float
      sample: 7.25
    object_size:
      description: Size of the object in the listing, null when the object is missing.
      returned: always
      type: int
      sample: 294551233
    size_bytes:
      description: Size recorded in the metadata.
      returned: when the metadata was read
      type: int
      sample: 294551233
    signature:
      description: The outcome of the metadata signature check, as in RV(quankey.backup.backup_info#module:backups[].signature).
      returned: when the metadata was read
      type: str
      sample: valid (key qk1-3f2a9c0d1e4b5a69)
    trusted:
      description: Whether the metadata is signed with a key held here and names the backup stored where it was read.
      returned: when the metadata was read
      type: bool
      sample: true
drill:
  description:
    - The newest restore drill of this host's database (C(quankey-backup drill)) whose report verifies here (its
      signature, with the signing keys given; with none, not checked), or null. On a host that archives its WAL
      (C(WAL_ARCHIVING)), its point-in-time drills (C(drill --pitr), database V(@cluster)) count too -
      C(timestamp) (when it started),
      C(result) (V(passed) or V(failed)), C(backup), C(rto_seconds), C(rpo_seconds), C(report_key).
  returned: always
  type: dict
  sample: {"timestamp": "2025-08-10T04:00:00Z", "result": "passed", "backup": "quankey_prod_backup_20250809_030000",
           "rto_seconds": 184.2, "rpo_seconds": 90000.0, "report_key": "drills/db1/quankey_prod/20250810_040000.json"}
wal:
  description:
    - With C(WAL_ARCHIVING=true) in the host's settings, the server's archiving (C(pg_stat_archiver) and
      C(archive_mode)) and the newest WAL segment archived in the bucket (C(newest_segment), C(newest_age_seconds) - the
      RPO achieved); null otherwise. docs/CLI.md, "The wal rule of health".
  returned: always
  type: dict
  sample: {"archive_mode": "on", "archived_count": 412, "last_archived_wal": "00000001000000020000003A",
           "last_archived_time": "2025-08-10T04:00:00Z", "failed_count": 0, "last_failed_wal": null,
           "last_failed_time": null, "newest_segment": "00000001000000020000003A", "newest_age_seconds": 95.2}
base:
  description:
    - With C(WAL_ARCHIVING=true) in the host's settings, the host's base backups (C(quankey-backup basebackup)) -
      C(count) (how many the bucket holds), C(newest) (the newest usable one - its object there, its metadata neither
      forged nor unsigned), C(timestamp) (UTC), C(age_days), C(start_wal_file) and C(signature) (null fields when
      there is none); null otherwise. docs/CLI.md, "The base rule of health".
  returned: always
  type: dict
  sample: {"count": 3, "newest": "cluster_base_20250809_030000", "timestamp": "2025-08-09T03:00:00Z", "age_days": 1.04,
           "start_wal_file": "00000001000000020000002C", "signature": "valid (key qks-1a2b3c4d)"}
report_lines:
  description:
    - The report as the lines a person reads, the engine's (those C(quankey-backup health) prints) - the status with the
      host, database and bucket, the latest backup (name, age, size, how many), then each finding with its severity
      and rule. Also returned when O(fail_on) fails the task. C(playbooks/health.yml) prints every host's.
  returned: always
  type: list
  elements: str
  sample:
    - "WARNING: backups of quankey_prod on db1 in s3://quankey-backups-prod"
    - "  latest: quankey_prod_backup_20250809_030000, 7.2 h old, 512.0 KiB, 30 backup(s) in all"
    - "  WARNING  min_size           latest backup is 512.0 KiB, under the 1.0 MiB minimum: is the database empty or the dump incomplete?"
keyring_key_ids:
  description: Ids of the keys given, against which the newest backups' key ids were checked; empty when none.
  returned: always
  type: list
  elements: str
  sample: [qk1-3f2a9c0d1e4b5a69]
backups:
  description: Number of backups of this host and database.
  returned: always
  type: int
  sample: 14
host:
  description: The host id checked.
  returned: always
  type: str
  sample: db1
database:
  description: The database checked.
  returned: always
  type: str
  sample: quankey_prod
bucket:
  description: The bucket checked.
  returned: always
  type: str
  sample: quankey-backups-prod
checked_at:
  description: Time of the check (UTC), ISO 8601.
  returned: always
  type: str
  sample: '2025-08-09T10:15:00Z'
error:
  description: What kind of failure stopped the module, when it was not a health status.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class.
      returned: failure
      type: str
      sample: ConfigError
    step:
      description: The step that failed, when known.
      returned: failure
      type: str
      sample: null
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this failure.
      returned: failure
      type: int
      sample: 3
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.module_utils.workflows import health

DEFAULTS = ansible_common.HEALTH_DEFAULTS
# fail_on -> the statuses that fail the task
FAILING_STATUSES = {"critical": (health.CRITICAL,), "warning": (health.WARNING, health.CRITICAL), "never": ()}


def argument_spec():
    """The module's options: the shared groups plus the thresholds of the rules."""
    return ansible_common.common_argument_spec(
        ansible_common.setting_options("schedule", "allow_seed"),
        max_age_hours=dict(type="float", default=DEFAULTS["max_age_hours"]),
        min_size_bytes=dict(type="int", default=DEFAULTS["min_size_bytes"]),
        window_days=dict(type="float", default=DEFAULTS["window_days"]),
        fail_on=dict(type="str", choices=list(FAILING_STATUSES), default="critical"),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3")
    params = module.params

    with ansible_common.engine_errors(module, "health check"):
        settings = ansible_common.module_settings(module)
        interval = health.interval_for_schedule(settings.schedule, settings.label("schedule"))
        policy = health.HealthPolicy(max_age_hours=params["max_age_hours"], min_size_bytes=params["min_size_bytes"],
                                     interval_hours=interval, window_days=params["window_days"])
        report = health.check_health(settings, policy)
    report["report_lines"] = health.report_lines(report)
    if report["status"] in FAILING_STATUSES[params["fail_on"]]:
        problems = "; ".join(finding["message"] for finding in report["findings"] if finding["severity"] != health.INFO)
        summary = "backups of %s on %s are %s: %s" % (report["database"], report["host"], report["status"], problems)
        module.fail_json(msg=summary, changed=False, **report)
    module.exit_json(changed=False, **report)


if __name__ == "__main__":
    main()
