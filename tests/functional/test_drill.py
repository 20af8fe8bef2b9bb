# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 17: restore drills and BACKUP_COUNT_ROWS, end to end on the test bed (real PostgreSQL, moto S3).

Backups are taken with the installed `quankey-backup` command (row counts taken in the dump's snapshot), drilled with
`quankey-backup drill` into a scratch database as the restore role, and judged by `quankey-backup health`. Attacks
come from someone who can write to the bucket but holds no key: a row count changed in the metadata, forged and
copied drill reports.
"""

import base64
import datetime
import json
import signal
import subprocess
import threading
import time

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import signing
from hostcommand import CLI, new_name, run_cli
from sampledb import DATA_TABLES, TABLE_COUNT

RESTORE_ROLE = "quankey_restore"


def _json(proc):
    return json.loads(proc.stdout)


def _env(testbed, db, host, **extra):
    return dict(testbed.backup_env(db), BACKUP_HOST_ID=host, **extra)


def _scratch_databases(testbed):
    return testbed.pg.psql("SELECT datname FROM pg_database WHERE datname LIKE 'quankey\\_drill\\_%' "
                           "OR datname LIKE '%\\_\\_restoring\\_%'").split()


def _object(s3, testbed, key):
    return s3.get_object(Bucket=testbed.bucket, Key=key)["Body"].read()


def _put(s3, testbed, key, data):
    s3.put_object(Bucket=testbed.bucket, Key=key, Body=data)


def _verify(testbed, document):
    """The signature's outcome with the signing key the test bed's hosts sign with (derived from the master key)."""
    kid = signing.signature_key_id(document)
    derived = signing.derive_signing_key(base64.b64decode(testbed.encryption_key))
    return signing.verify_metadata(document, {kid: derived})[0] if kid else signing.UNSIGNED


def _drill_findings(report):
    return [item for item in report["findings"] if item["rule"] == "drill"]


@pytest.fixture(scope="module")
def counted(testbed, source):
    """A backup of the sample database taken with BACKUP_COUNT_ROWS on, by host ``drill-a``: (env, backup result)."""
    env = _env(testbed, source, "drill-a", BACKUP_COUNT_ROWS="true")
    return env, _json(run_cli(env, "backup", "--json", check=0))


def test_a_backup_with_count_rows_records_exact_counts_in_its_signed_metadata(testbed, s3, source, counted):
    _env_, result = counted
    assert result["row_counts"] == {"tables": len(DATA_TABLES), "rows": sum(
        int(testbed.pg.psql("SELECT count(*) FROM %s" % table, db=source)) for table in DATA_TABLES)}
    assert "count_rows" in result["stage_seconds"]
    metadata = json.loads(_object(s3, testbed, result["metadata_key"]))
    assert metadata["metadata_version"] == 6 and _verify(testbed, metadata) == signing.VALID
    recorded = dict(("%s.%s" % (schema, table), rows) for schema, table, rows in metadata["row_counts"])
    assert sorted(recorded) == sorted(DATA_TABLES)
    for table in DATA_TABLES:
        assert recorded[table] == int(testbed.pg.psql("SELECT count(*) FROM %s" % table, db=source))


def test_a_backup_without_count_rows_stays_metadata_version_5(testbed, s3, source):
    env = _env(testbed, source, new_name("plain"))
    result = _json(run_cli(env, "backup", "--json", check=0))
    metadata = json.loads(_object(s3, testbed, result["metadata_key"]))
    assert result["row_counts"] is None and "row_counts" not in metadata and metadata["metadata_version"] == 5


def test_the_counts_are_those_of_the_dumped_snapshot_while_rows_keep_arriving(testbed, s3):
    """Rows inserted all through the backup: the counts still match the restored tables exactly (same snapshot)."""
    db = new_name("busy")
    testbed.pg.create_database(db)
    testbed.pg.psql("CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), pad text); "
                    "INSERT INTO ticks (pad) SELECT repeat('x', 200) FROM generate_series(1, 50000);", db=db)
    env = _env(testbed, db, new_name("busy"), BACKUP_COUNT_ROWS="true")
    stop = threading.Event()
    inserted = []

    def insert():
        while not stop.is_set():
            testbed.pg.psql("INSERT INTO ticks (pad) SELECT 'y' FROM generate_series(1, 100)", db=db)
            inserted.append(100)

    writer = threading.Thread(target=insert)
    writer.start()
    try:
        time.sleep(0.3)
        result = _json(run_cli(env, "backup", "--json", check=0))
    finally:
        stop.set()
        writer.join()
    assert len(inserted) >= 2  # rows did arrive while the backup ran
    drilled = _json(run_cli(env, "drill", "--json", check=0))
    checks = dict((item["name"], item) for item in drilled["drills"][0]["checks"])
    assert checks["row_counts"]["ok"], checks["row_counts"]
    assert drilled["drills"][0]["rows_checked"] == result["row_counts"]["rows"]
    assert int(testbed.pg.psql("SELECT count(*) FROM ticks", db=db)) > result["row_counts"]["rows"] >= 50000


def test_a_passed_drill_checks_counts_and_assertions_stores_a_signed_report_and_drops_its_scratch(
        testbed, s3, source, counted):
    env, backup = counted
    env = dict(env, DRILL_ASSERTIONS=json.dumps(["SELECT count(*) > 100 FROM customers"]))
    proc = run_cli(env, "drill", "--assert", "SELECT count(*) = 500 FROM audit.events", check=0)
    assert proc.stdout.startswith("PASSED drill-a/%s %s: RTO " % (source, backup["name"]))
    result = _json(run_cli(env, "drill", "--json", check=0))
    assert result["status"] == "passed" and len(result["drills"]) == 1
    report = result["drills"][0]
    assert (report["host"], report["database"], report["backup"], report["result"]) == (
        "drill-a", source, backup["name"], "passed")
    checks = dict((item["name"], item) for item in report["checks"])
    assert sorted(checks) == ["assertion 1", "checksum", "restore", "row_counts", "signature", "table_count"]
    assert all(item["ok"] for item in report["checks"])
    assert report["tables"] == TABLE_COUNT and report["rows_checked"] == backup["row_counts"]["rows"]
    assert 0 < report["rto_seconds"] < 120 and report["rpo_seconds"] >= 0 and report["error"] is None
    assert report["scratch_database"].startswith("quankey_drill_") and report["signed"] is True
    assert _scratch_databases(testbed) == []
    assert testbed.pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE '%s\\_%%'" % RESTORE_ROLE).strip() == "0"
    stored = json.loads(_object(s3, testbed, report["report_key"]))
    assert report["report_key"] == "drills/drill-a/%s/%s.json" % (source, report["started"].replace("-", "").replace(
        ":", "").replace("T", "_").rstrip("Z"))
    assert _verify(testbed, stored) == signing.VALID and stored["result"] == "passed"
    health = _json(run_cli(env, "health", "--json"))
    assert health["status"] == "ok", health["findings"]
    assert health["drill"] == {"timestamp": report["started"], "result": "passed", "backup": backup["name"],
                               "rto_seconds": report["rto_seconds"], "rpo_seconds": report["rpo_seconds"],
                               "report_key": report["report_key"]}
    listed = run_cli(env, "list", "--details", check=0)
    assert "last restore drill: passed %s, backup %s" % (report["started"], backup["name"]) in listed.stdout


def test_a_failing_assertion_fails_the_drill_makes_health_critical_and_still_drops_the_scratch(testbed, source):
    host = new_name("fail")
    env = _env(testbed, source, host)
    run_cli(env, "backup", check=0)
    proc = run_cli(env, "drill", "--assert", "SELECT count(*) = 0 FROM customers", "--assert", "SELECT 1/0 > 0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("FAILED %s/%s" % (host, source))
    assert "FAILED assertion 1: SELECT count(*) = 0 FROM customers: returned 'f', true expected" in proc.stdout
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("  FAILED assertion 2: SELECT 1/0 > 0: ")]
    assert line.endswith("division by zero")
    assert _scratch_databases(testbed) == []
    health = _json(run_cli(env, "health", "--json"))
    assert health["status"] == "critical" and health["exit_code"] == 2
    assert health["drill"]["result"] == "failed"
    critical, warning = sorted(_drill_findings(health), key=lambda item: item["severity"])
    assert critical["severity"] == "critical" and "assertion 1" in critical["message"]
    assert warning["severity"] == "warning" and "no passed restore drill" in warning["message"]


def test_a_row_count_changed_in_the_metadata_is_refused_by_its_signature(testbed, s3, source):
    host = new_name("tamper")
    env = _env(testbed, source, host, BACKUP_COUNT_ROWS="true")
    backup = _json(run_cli(env, "backup", "--json", check=0))
    metadata = json.loads(_object(s3, testbed, backup["metadata_key"]))
    metadata["row_counts"][0][2] += 1  # the attacker hides a lost row, or blames the backup for one
    _put(s3, testbed, backup["metadata_key"], json.dumps(metadata, indent=2, sort_keys=True).encode())
    proc = run_cli(env, "drill", "--json")
    assert proc.returncode == 2, proc.stderr
    [report] = _json(proc)["drills"]
    assert report["result"] == "failed" and report["rto_seconds"] is None
    assert [(item["name"], item["ok"]) for item in report["checks"]] == [("signature", False)]
    assert "metadata signature invalid" in report["error"]
    assert _scratch_databases(testbed) == []


def test_forged_and_copied_drill_reports_do_not_silence_the_rule(testbed, s3, source):
    host = new_name("forge")
    env = _env(testbed, source, host)
    run_cli(env, "backup", check=0)
    failed = _json(run_cli(env, "drill", "--assert", "SELECT false", "--json"))["drills"][0]
    passed_elsewhere = _json(run_cli(_env(testbed, source, "drill-a"), "drill", "--json", check=0))["drills"][0]
    assert _json(run_cli(env, "health", "--json"))["status"] == "critical"
    # 1. an unsigned "passed" report, newer than the failed one
    forged = dict(failed, result="passed", error=None, started="2099-01-01T00:00:00Z",
                  report_key="drills/%s/%s/20990101_000000.json" % (host, source),
                  checks=[{"name": "restore", "ok": True, "detail": "fine"}])
    forged.pop("signed")
    _put(s3, testbed, forged["report_key"], json.dumps(forged).encode())
    # 2. the same with a made-up signature
    bogus = dict(forged, started="2099-01-02T00:00:00Z", report_key="drills/%s/%s/20990102_000000.json" % (host, source),
                 signature={"algorithm": "hmac-sha256", "key_id": _stored_kid(s3, testbed, failed),
                            "value": base64.b64encode(b"\0" * 32).decode()})
    _put(s3, testbed, bogus["report_key"], json.dumps(bogus).encode())
    # 3. another host's genuine, signed "passed" report, copied to this place
    copied_key = "drills/%s/%s/20990103_000000.json" % (host, source)
    _put(s3, testbed, copied_key, _object(s3, testbed, passed_elsewhere["report_key"]))
    health = _json(run_cli(env, "health", "--json"))
    assert health["status"] == "critical"
    assert health["drill"]["result"] == "failed" and health["drill"]["report_key"] == failed["report_key"]
    findings = _drill_findings(health)
    by_severity = sorted((item["severity"], item["message"]) for item in findings)
    # the failed drill; the unsigned report (info); the bad signature and the copy (warnings); no passed drill believed
    assert [item[0] for item in by_severity] == ["critical", "info", "warning", "warning", "warning"], by_severity
    assert any("is unsigned" in message and forged["report_key"] in message for _sev, message in by_severity)
    assert any("invalid signature" in message and bogus["report_key"] in message for _sev, message in by_severity)
    assert any("not this place's" in message and copied_key in message for _sev, message in by_severity)
    assert any("no passed restore drill" in message for _sev, message in by_severity)


def _stored_kid(s3, testbed, report):
    return json.loads(_object(s3, testbed, report["report_key"]))["signature"]["key_id"]


def test_all_hosts_drills_the_newest_backup_of_every_host_and_database(testbed, s3, source):
    other_db = new_name("other")
    testbed.pg.create_database(other_db)
    testbed.pg.psql("CREATE TABLE things (id int); INSERT INTO things SELECT generate_series(1, 42);", db=other_db)
    prefix = new_name("fleet") + "/"
    first = _env(testbed, source, "fleet-1", S3_PREFIX=prefix, BACKUP_COUNT_ROWS="true")
    second = _env(testbed, other_db, "fleet-2", S3_PREFIX=prefix, BACKUP_COUNT_ROWS="true")
    run_cli(first, "backup", check=0)
    run_cli(first, "backup", check=0)
    newest = _json(run_cli(first, "backup", "--json", check=0))["name"]
    run_cli(second, "backup", check=0)
    drill_host = _env(testbed, "postgres", "drill-host", S3_PREFIX=prefix)
    result = _json(run_cli(drill_host, "drill", "--all-hosts", "--json", check=0))
    assert result["status"] == "passed"
    assert [(item["host"], item["database"]) for item in result["drills"]] == [
        ("fleet-1", source), ("fleet-2", other_db)]
    assert result["drills"][0]["backup"] == newest
    assert result["drills"][1]["rows_checked"] == 42
    for item in result["drills"]:
        assert item["report_key"].startswith("%sdrills/%s/%s/" % (prefix, item["host"], item["database"]))
        assert _verify(testbed, json.loads(_object(s3, testbed, item["report_key"]))) == signing.VALID
    assert _scratch_databases(testbed) == []
    # each host's health sees its own drill
    assert _json(run_cli(second, "health", "--json"))["drill"]["result"] == "passed"


def test_the_age_rule_warns_only_once_drills_are_in_use_or_asked_for(testbed, source):
    env = _env(testbed, source, new_name("nodrill"))
    run_cli(env, "backup", check=0)
    assert _drill_findings(_json(run_cli(env, "health", "--json"))) == []
    asked = _json(run_cli(dict(env, DRILL_MAX_AGE_DAYS="35"), "health", "--json"))
    [finding] = _drill_findings(asked)
    assert finding["severity"] == "warning" and "no passed restore drill" in finding["message"]
    assert asked["status"] == "warning"


def test_an_interrupted_drill_drops_its_scratch_database(testbed, source, counted):
    env, _backup = counted
    proc = subprocess.Popen([CLI, "drill"], env=dict(env, PATH="/usr/bin:/bin", LC_ALL="C.UTF-8"),  # pylint: disable=consider-using-with
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    seen = []
    while time.time() < deadline and not seen and proc.poll() is None:
        seen = [name for name in _scratch_databases(testbed) if name.startswith("quankey_drill_")]
        time.sleep(0.02)
    if not seen:
        proc.wait(timeout=60)
        pytest.skip("the drill ended before its scratch database was seen (too fast to interrupt here)")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "the scratch database was dropped" in err
    assert _scratch_databases(testbed) == []


def test_a_scratch_database_a_killed_drill_left_is_dropped_by_the_next_drill_once_a_day_old(testbed, source, counted):
    env, _backup = counted
    old = "quankey_drill__drill_%s_0a0b" % (datetime.datetime.now(datetime.timezone.utc)
                                            - datetime.timedelta(hours=30)).strftime("%y%m%d%H%M%S")
    recent = "quankey_drill__drill_%s_0c0d" % (datetime.datetime.now(datetime.timezone.utc)
                                               - datetime.timedelta(hours=2)).strftime("%y%m%d%H%M%S")
    other = "quankey_drill_kept_by_someone"  # not a name a drill makes: never touched
    for name in (old, recent, other):
        testbed.pg.psql('CREATE DATABASE "%s"' % name)
    try:
        proc = run_cli(env, "drill", check=0)
        assert "dropping %s, the scratch database of a drill that was killed" % old in proc.stderr
        left = _scratch_databases(testbed)
        assert old not in left and recent in left and other in left
    finally:
        for name in (old, recent, other):
            testbed.pg.psql('DROP DATABASE IF EXISTS "%s"' % name)
