# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 16 item 1 on the real test bed: grandfather-father-son retention.

Real backups of the sample database are taken at made-up times (``run_backup(now=...)``, as the other prune tests
do) across a year's end and an ISO week 53/01 boundary, one of them with forged metadata. All of them are far older
than BACKUP_RETENTION_DAYS, so only min_keep and the calendar rules (which count back from the newest good backup,
not from today) keep any: the expected fates do not depend on the day the test runs. The installed command's
``prune --dry-run --json`` and ``--dry-run`` say each backup's fate and rules and delete nothing; ``prune`` deletes
exactly the others from the bucket; the pg_encrypted_backup module returns the same fates."""

import datetime
import json
import sys

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup
from hostcommand import new_name, run_cli, run_module
from testbed import write_env_file

UTC = datetime.timezone.utc

RULES = {"BACKUP_RETENTION_DAYS": "1", "BACKUP_MIN_KEEP": "1", "BACKUP_KEEP_DAILY": "2", "BACKUP_KEEP_WEEKLY": "2",
         "BACKUP_KEEP_MONTHLY": "2", "BACKUP_KEEP_YEARLY": "2"}

# time -> (fate, rules). 2024-12-30 (Monday) opens ISO week 2025-W01, which 2025-01-05 (Sunday) closes.
EXPECTED = {
    "2025-01-07 03:00": ("keep", ["min_keep 1 of 1", "daily 2025-01-07", "weekly 2025-W02", "monthly 2025-01",
                                  "yearly 2025"]),
    "2025-01-06 15:00": ("keep", ["daily 2025-01-06"]),
    "2025-01-06 03:00": ("delete", []),   # an older one of a day already kept
    "2025-01-05 03:00": ("keep", ["weekly 2025-W01"]),
    "2025-01-01 01:00": ("delete", []),   # its week, month and year already have a newer one
    "2024-12-31 23:00": ("delete", []),   # forged: it would have been December's and 2024's, it is no one's
    "2024-12-30 03:00": ("keep", ["monthly 2024-12", "yearly 2024"]),
    "2024-06-15 03:00": ("delete", []),
}
FORGED = "2024-12-31 23:00"


def _at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def _iso(text):
    return _at(text).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def bucket(testbed, source):
    """The backups of EXPECTED under their own prefix (taken once for this module), one forged: (env, names by time)."""
    env = dict(testbed.backup_env(source), S3_PREFIX=new_name("gfs"), BACKUP_HOST_ID="db1", BACKUP_GLOBALS="false")
    settings = config.settings_from_env(env)
    taken = dict((when, backup.run_backup(settings, now=_at(when))) for when in EXPECTED)
    s3 = testbed.moto.client()
    key = taken[FORGED]["metadata_key"]
    document = json.loads(s3.get_object(Bucket=env["S3_BUCKET"], Key=key)["Body"].read().decode())
    document["table_count"] += 1  # its signature no longer verifies
    s3.put_object(Bucket=env["S3_BUCKET"], Key=key, Body=documents.encode_metadata(document))
    return env, dict((when, item["name"]) for when, item in taken.items())


def _metadata_names(testbed, env):
    listing = testbed.moto.client().list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=env["S3_PREFIX"] + "/")
    return sorted(item["Key"].rsplit("/", 1)[-1].rsplit(".", 1)[0] for item in listing.get("Contents", [])
                  if item["Key"].endswith(".meta"))


def _check_fates(backups, names):
    assert [item["name"] for item in backups] == [names[when] for when in EXPECTED]  # newest first
    for when, (fate, rules) in EXPECTED.items():
        item = next(item for item in backups if item["name"] == names[when])
        assert (item["fate"], item["rules"], item["timestamp"]) == (fate, rules, _iso(when)), when
        if fate == "keep":
            assert item["good"] is True and item["reason"] == ", ".join(rules)
    forged = next(item for item in backups if item["name"] == names[FORGED])
    assert forged["good"] is False and forged["problem"].startswith("metadata signature: ")
    assert forged["reason"].startswith("older than 1 day and not good (metadata signature: ")


def test_a_dry_run_says_each_backups_fate_and_rules_and_prune_deletes_exactly_the_others(testbed, bucket):
    env, names = bucket
    env = dict(env, **RULES)
    everything = _metadata_names(testbed, env)
    assert everything == sorted(names.values())

    dry = json.loads(run_cli(env, "prune", "--dry-run", "--json", check=0).stdout)
    _check_fates(dry["backups"], names)
    assert (dry["retention_days"], dry["min_keep"], dry["keep_daily"], dry["keep_weekly"], dry["keep_monthly"],
            dry["keep_yearly"], dry["dry_run"]) == (1, 1, 2, 2, 2, 2, True)
    assert _metadata_names(testbed, env) == everything, "a dry run deletes nothing"

    human = run_cli(env, "prune", "--dry-run", check=0).stdout.splitlines()
    assert human[0] == ("would delete 4 backup(s), would keep 4 (kept by: age <= 1 day, min_keep 1, daily 2, weekly 2, "
                        "monthly 2, yearly 2)")
    assert [line.split()[:2] for line in human[1:]] == [[EXPECTED[when][0], names[when]] for when in EXPECTED]
    assert human[4].split(None, 2)[2] == "weekly 2025-W01"
    assert human[5].split(None, 2)[2] == "older than 1 day and kept by no other rule"

    done = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    kept = [names[when] for when, (fate, _rules) in EXPECTED.items() if fate == "keep"]
    deleted = [names[when] for when, (fate, _rules) in EXPECTED.items() if fate == "delete"]
    assert (done["kept"], done["deleted"]) == (kept, deleted)
    assert _metadata_names(testbed, env) == sorted(kept)
    listing = testbed.moto.client().list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=env["S3_PREFIX"] + "/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    assert len(keys) == 2 * len(kept) and not any(name in key for key in keys for name in deleted)  # data and metadata

    again = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    assert (again["kept"], again["deleted"]) == (kept, [])
    verified = json.loads(run_cli(env, "verify", "--backup", names["2024-12-30 03:00"], "--json", check=0).stdout)
    assert verified["checksum_ok"], "a backup kept by the monthly and yearly rules is whole"


def test_the_module_returns_the_same_fates_in_check_mode(testbed, source, tmp_path):
    env = dict(testbed.backup_env(source), S3_PREFIX=new_name("gfsmod"), BACKUP_HOST_ID="db1", BACKUP_GLOBALS="false",
               BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="1")
    settings = config.settings_from_env(env)
    names = dict((when, backup.run_backup(settings, now=_at(when))["name"])
                 for when in ("2024-12-30 03:00", "2025-01-05 03:00", "2025-01-06 03:00"))
    env_file = tmp_path / "backup.env"
    write_env_file(str(env_file), env)
    args = {"env_file": str(env_file), "prune": True, "keep_weekly": 2, "keep_yearly": 1}
    result = run_module(tmp_path, "ansible", "localhost", "-e", "ansible_python_interpreter=%s" % sys.executable,
                        "--check", "-m", "quankey.backup.pg_encrypted_backup", "-a", json.dumps(args))
    assert not result.get("failed"), result
    pruned = result["pruned"]
    assert [(item["name"], item["fate"], item["rules"]) for item in pruned["backups"]] == [
        (names["2025-01-06 03:00"], "keep", ["min_keep 1 of 1", "weekly 2025-W02", "yearly 2025"]),
        (names["2025-01-05 03:00"], "keep", ["weekly 2025-W01"]),
        (names["2024-12-30 03:00"], "delete", []),  # in week 2025-W01 too, older than the 5th
    ]
    assert (pruned["keep_weekly"], pruned["keep_yearly"], pruned["keep_daily"], pruned["dry_run"]) == (2, 1, 0, True)
    assert len(_metadata_names(testbed, env)) == 3, "check mode deletes nothing"


def test_a_wrong_calendar_rule_fails_naming_the_variable_and_the_fix(testbed, source):
    env = dict(testbed.backup_env(source), S3_PREFIX=new_name("gfsbad"), BACKUP_KEEP_MONTHLY="twelve")
    proc = run_cli(env, "prune", "--dry-run", check=3)
    assert "BACKUP_KEEP_MONTHLY must be a whole number, got 'twelve': give how many of the most recent months (UTC) " \
           "keep their newest good backup, a whole number from 0 (the rule off) to 100000" in proc.stderr
