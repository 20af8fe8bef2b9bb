# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18 item 5, retention of the physical kind, on the real test bed: two real base backups of the test bed's
cluster (the older one taken as of ten days ago), WAL files pushed with wal-push's own function around their
starts, then `quankey-backup prune` with retention keeping one base backup: the older base backup goes, and exactly
the WAL files before the kept one's start (on its timeline) go with it; its own start, what follows, a later
timeline and the timeline history file stay. A dry run deletes nothing and says the same numbers. Health's base rule
(WAL_ARCHIVING) warns while the newest base backup is ten days old, is quiet once a fresh one is there, and is
critical without any."""

import datetime
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import walnames
from ansible_collections.quankey.backup.plugins.module_utils.workflows import basebackup, wal
from hostcommand import new_name, run_cli

UTC = datetime.timezone.utc


@pytest.fixture
def env(testbed):
    return dict(testbed.backup_env("postgres"), S3_PREFIX=new_name("walprune") + "/", BACKUP_HOST_ID="db1",
                BACKUP_COMPRESSION="zstd", BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="1")


def _keys(s3, env):
    listed = s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=env["S3_PREFIX"]).get("Contents", [])
    return sorted(item["Key"][len(env["S3_PREFIX"]):] for item in listed)


def _wal_key(name):
    return "wal/db1/%s/%s" % (name[:8], name)


def _wal_push(settings, path):
    """What `quankey-backup wal-push PATH` runs (cli._cmd_wal_push), in this process: a second of interpreter start and
    imports less per file. The command itself, as PostgreSQL's archive_command runs it, is test_wal_archiving.py's."""
    wal.push(settings, str(path))


def test_prune_keeps_the_newest_base_backup_and_exactly_the_wal_it_needs(env, testbed, s3, tmp_path):
    settings = config.settings_from_env(env)
    old = basebackup.run_basebackup(settings, now=datetime.datetime.now(UTC) - datetime.timedelta(days=10),
                                    fast_checkpoint=True)
    stale = json.loads(run_cli(dict(env, WAL_ARCHIVING="true"), "health", "--json").stdout)  # BASE_MAX_AGE_DAYS 8
    (finding,) = [item for item in stale["findings"] if item["rule"] == "base"]
    assert finding["severity"] == "warning" and "the newest base backup, %s, is 10.0 days old (limit 8 days" % (
        old["name"]) in finding["message"]
    testbed.pg.psql("CREATE TABLE IF NOT EXISTS walprune_probe (id int); INSERT INTO walprune_probe VALUES (1); "
                    "SELECT pg_switch_wal()")
    new = json.loads(run_cli(env, "basebackup", "--fast", "--json", check=0).stdout)
    timeline, old_start = walnames.segment_number(old["start_wal_file"])
    assert (new["timeline"], new["start_wal_file"] > old["start_wal_file"]) == (timeline, True)
    _tl, new_start = walnames.segment_number(new["start_wal_file"])

    def segment(number, on=timeline):
        return walnames.segment_name(on, number)

    gone = sorted({segment(old_start - 2), segment(old_start - 1), segment(old_start), segment(new_start - 1),
                   segment(old_start) + ".00000028.backup", segment(old_start - 1) + ".partial"})
    kept = sorted({segment(new_start), segment(new_start) + ".00000028.backup", segment(new_start + 1),
                   "%08X.history" % (timeline + 1), segment(old_start - 1, on=timeline + 1)})
    for name in gone + kept:  # synthetic contents: wal-push archives any file by its name
        path = tmp_path / name
        path.write_bytes(b"synthetic WAL " + name.encode() * 100)
        _wal_push(settings, path)
    bases = ["base/db1/%s.meta" % new["name"], "base/db1/%s.tar.enc" % new["name"]]
    everything = sorted(bases + ["base/db1/%s.meta" % old["name"], "base/db1/%s.tar.enc" % old["name"]]
                        + [_wal_key(name) for name in gone + kept])
    assert _keys(s3, env) == everything

    dry = json.loads(run_cli(env, "prune", "--dry-run", "--json", check=0).stdout)
    assert (dry["base_kept"], dry["base_deleted"]) == ([new["name"]], [old["name"]])
    assert (dry["wal_deleted"], dry["wal_kept"], dry["wal_kept_from"]) == (len(gone), len(kept), new["start_wal_file"])
    assert _keys(s3, env) == everything, "a dry run deletes nothing"

    said = run_cli(env, "prune", check=0).stdout
    assert "deleted 1 base backup(s), kept 1" in said
    assert ("deleted %d archived WAL file(s) before %s (the oldest kept base backup's start), kept %d"
            % (len(gone), new["start_wal_file"], len(kept))) in said
    assert _keys(s3, env) == sorted(bases + [_wal_key(name) for name in kept])
    again = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    assert (again["base_deleted"], again["wal_deleted"], again["wal_kept"]) == ([], 0, len(kept))
    assert json.loads(run_cli(env, "verify", "--base", "--json", check=0).stdout)["name"] == new["name"]

    # health's base rule (WAL_ARCHIVING): the kept base backup is the newest, fresh, so no base finding
    report = json.loads(run_cli(dict(env, WAL_ARCHIVING="true"), "health", "--json").stdout)
    assert [item for item in report["findings"] if item["rule"] == "base"] == []
    assert (report["base"]["newest"], report["base"]["count"]) == (new["name"], 1)
    assert report["base"]["start_wal_file"] == new["start_wal_file"] and report["base"]["age_days"] < 1


def test_without_a_base_backup_prune_keeps_every_wal_file_and_says_so(env, s3, tmp_path):
    names = ["000000010000000000000001", "000000010000000000000002"]
    settings = config.settings_from_env(env)
    for name in names:
        (tmp_path / name).write_bytes(b"synthetic WAL " + name.encode())
        _wal_push(settings, tmp_path / name)
    done = run_cli(env, "prune", check=0)
    assert "WARNING: no trusted base backup of host db1 is kept" in done.stdout
    assert "prune keeps all 2 archived WAL file(s)" in done.stdout
    assert _keys(s3, env) == [_wal_key(name) for name in names]
    report = json.loads(run_cli(dict(env, WAL_ARCHIVING="true"), "health", "--json").stdout)
    base = [item for item in report["findings"] if item["rule"] == "base"]
    assert [item["severity"] for item in base] == ["critical"] and report["status"] == "critical"
    assert "no base backup of this host in s3://%s/%sbase/db1/" % (env["S3_BUCKET"], env["S3_PREFIX"]) in base[0]["message"]
    assert report["base"] == {"count": 0, "newest": None, "timestamp": None, "age_days": None, "start_wal_file": None,
                              "signature": None}
