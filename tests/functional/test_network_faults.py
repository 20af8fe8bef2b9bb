"""The host command when S3 misbehaves: outages, throttling, cut and stalled transfers, lost answers, an object
replaced mid-download, a web server, a stalled endpoint.

A fault-injecting proxy (tests/faultproxy.py) sits between the installed ``quankey-backup``
command and moto_server; S3_ENDPOINT_URL points at it. What the store ends up holding is
checked on moto directly, around the proxy. Every run either succeeds with the source's data
(restored and compared) or fails with nothing visible, and a result counts its retries.
"""

import json
import re
import time

import pytest

from faultproxy import FaultProxy
from hostcommand import new_name, run_cli
from sampledb import table_digests

UPLOAD_PART = {"method": "PUT", "path": "partNumber="}
CREATE_UPLOAD = {"method": "POST", "path": "?uploads"}
COMPLETE_UPLOAD = {"method": "POST", "path": "uploadId="}
METADATA_PUT = {"method": "PUT", "path": "/metadata/"}
GLOBALS_PUT = {"method": "PUT", "path": ".globals"}
OBJECT_GET = {"method": "GET", "path": "/backups/postgresql/"}
STALL = 20  # seconds a stalled transfer sends nothing; the client's read timeout (SHORT_TIMEOUTS) is far shorter
SHORT_TIMEOUTS = '{"connect_timeout": 3, "read_timeout": 3}'


@pytest.fixture
def proxy(testbed):
    """The proxy in front of the test bed's S3 endpoint, passing everything through until told otherwise."""
    with FaultProxy(testbed.moto.endpoint_url) as running:
        yield running


@pytest.fixture
def env(testbed, source, proxy):  # pylint: disable=redefined-outer-name
    """The seed's variables for the source database, S3 through the proxy, each test under its own prefix."""
    values = testbed.backup_env(source)
    values.update(S3_ENDPOINT_URL=proxy.endpoint_url, S3_PREFIX=new_name("net"), BACKUP_HOST_ID="db1")
    return values


def _stored(s3, env):
    """Keys and open multipart uploads under the test's prefix, as moto holds them (not through the proxy)."""
    bucket, prefix = env["S3_BUCKET"], env["S3_PREFIX"] + "/"
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    uploads = [item["Key"] for item in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]
    return keys, uploads


def _one_backup(keys):
    """Whether ``keys`` are one committed backup's: its data object, its globals object and its metadata."""
    return sorted(key.rsplit(".", 1)[-1] for key in keys) == ["encrypted", "globals", "meta"]


def _retries(proc):
    return [line for line in proc.stderr.splitlines() if " WARNING " in line and "retrying in" in line]


def _databases_like(pg, pattern):
    return pg.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE '%s'"
                   % pattern).strip()


def _restores_the_source(testbed, source, env):
    """Restore the latest backup (straight to moto, no faults) and compare it with the source, table by table."""
    target = new_name("check")
    run_cli(dict(env, S3_ENDPOINT_URL=testbed.moto.endpoint_url), "restore", "--target-db", target, check=0)
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)


@pytest.mark.parametrize("seconds,trigger", [(5, UPLOAD_PART), (20, CREATE_UPLOAD)],
                         ids=["5s-at-upload-part", "20s-at-create-upload"])
def test_a_backup_rides_out_an_outage_that_starts_during_its_upload(env, proxy, seconds, trigger):
    outage = proxy.outage(seconds, **trigger)
    started = time.monotonic()
    result = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    assert outage.fired.is_set() and time.monotonic() - started >= seconds
    assert result["s3_retries"]["requests_retried"] >= 1 and result["s3_retries"]["retries"] >= 2
    verified = json.loads(run_cli(env, "verify", "--json", check=0).stdout)
    assert verified["checksum_ok"]
    assert verified["s3_retries"] == {"requests_retried": 0, "retries": 0, "download_resumes": 0}  # the store is back
    assert [item["name"] for item in json.loads(run_cli(env, "list", "--json", check=0).stdout)["backups"]] == \
        [result["name"]]


def test_an_outage_longer_than_the_window_fails_naming_cause_and_window_and_the_abort_waits_for_the_store(
        env, proxy, s3):
    proxy.outage(10, **UPLOAD_PART)
    proc = run_cli(dict(env, S3_RETRY_WINDOW_SECONDS="6"), "backup", check=5)
    error = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "cannot reach the S3 endpoint %s (UploadPart" % env["S3_ENDPOINT_URL"] in error[0]
    assert re.search(r"kept failing for \d+ s over \d+ attempts \(retry window: 6 s, S3_RETRY_WINDOW_SECONDS\)", error[0])
    assert "still open" not in error[0]  # the abort got through once the store was back
    assert any("AbortMultipartUpload" in line for line in _retries(proc))
    assert _stored(s3, env) == ([], [])


def test_a_store_down_past_the_abort_budget_leaves_the_upload_to_prune_and_says_so(env, proxy, s3):
    proxy.outage(60, **UPLOAD_PART)
    proc = run_cli(dict(env, S3_RETRY_WINDOW_SECONDS="3"), "backup", check=5)
    keys, uploads = _stored(s3, env)
    assert keys == [] and len(uploads) == 1
    assert "the multipart upload of s3://%s/%s is still open" % (env["S3_BUCKET"], uploads[0]) in proc.stderr
    assert "the next `quankey-backup prune` aborts it" in proc.stderr
    proxy.clear()  # the store is back: clean up as prune would, to leave the bucket as found
    for item in s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=env["S3_PREFIX"] + "/")["Uploads"]:
        s3.abort_multipart_upload(Bucket=env["S3_BUCKET"], Key=item["Key"], UploadId=item["UploadId"])


@pytest.mark.parametrize("status,code,count,target", [
    (503, "SlowDown", 3, UPLOAD_PART),
    (500, "InternalError", 2, COMPLETE_UPLOAD),
])
def test_throttling_and_server_errors_are_retried_until_the_backup_commits(env, proxy, s3, status, code, count, target):
    fault = proxy.fail(status, code, count=count, **target)
    proc = run_cli(env, "backup", "--json", check=0)
    assert fault.hits == count
    assert len([line for line in _retries(proc) if "HTTP %d %s" % (status, code) in line]) == count
    retried = json.loads(proc.stdout)["s3_retries"]
    assert retried["retries"] == count and 1 <= retried["requests_retried"] <= count
    assert retried["download_resumes"] == 0
    keys, uploads = _stored(s3, env)
    assert _one_backup(keys) and uploads == []
    run_cli(env, "verify", check=0)


def test_complete_multipart_upload_failing_once_still_commits_the_backup_exactly_once(testbed, source, env, proxy, s3):
    fault = proxy.fail(503, "SlowDown", count=1, **COMPLETE_UPLOAD)
    result = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    assert fault.hits == 1 and len(proxy.requests(**COMPLETE_UPLOAD)) == 2
    assert result["s3_retries"] == {"requests_retried": 1, "retries": 1, "download_resumes": 0}
    keys, uploads = _stored(s3, env)
    assert _one_backup(keys) and uploads == []
    assert [item["name"] for item in json.loads(run_cli(env, "list", "--json", check=0).stdout)["backups"]] == \
        [result["name"]]
    _restores_the_source(testbed, source, env)


def test_an_upload_part_stalled_mid_body_times_out_and_is_sent_again(testbed, source, env, proxy, s3):
    stall = proxy.stall_body(STALL, 64 * 1024, **UPLOAD_PART)
    started = time.monotonic()
    proc = run_cli(dict(env, S3_CLIENT_CONFIG=SHORT_TIMEOUTS), "backup", "--json", check=0)
    assert stall.hits == 1 and time.monotonic() - started < STALL  # the read timeout ended it, not the stall
    assert [item.action for item in proxy.requests(**UPLOAD_PART)][:2] == ["stall_body", "pass"]
    assert any("UploadPart" in line for line in _retries(proc))
    assert json.loads(proc.stdout)["s3_retries"]["retries"] >= 1
    keys, uploads = _stored(s3, env)
    assert _one_backup(keys) and uploads == []
    _restores_the_source(testbed, source, env)


def _cut_reset(proxy, at):
    return [proxy.reset_body(at, **OBJECT_GET)]


def _cut_then_slowdown(proxy, at):
    return [proxy.reset_body(at, **OBJECT_GET), proxy.fail(503, "SlowDown", count=2, **OBJECT_GET)]


def _stall(proxy, at):
    return [proxy.stall_body(STALL, at, **OBJECT_GET)]


@pytest.mark.parametrize("faults,actions,extra", [
    (_cut_reset, ["reset_body", "pass"], {}),
    (_cut_then_slowdown, ["reset_body", "fail", "fail", "pass"], {}),
    (_stall, ["stall_body", "pass"], {"S3_CLIENT_CONFIG": SHORT_TIMEOUTS}),
], ids=["reset-mid-body", "reset-then-503-slowdown", "20s-stall-mid-body"])
def test_a_download_cut_or_stalled_mid_body_resumes_where_it_stopped_and_restores_the_same_data(
        testbed, source, env, proxy, faults, actions, extra):
    result = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    assert result["size_bytes"] > 1024 * 1024, (  # more than a piece (storage.RESUME_PIECE) before the cut
        "precondition: the sample backup is %d bytes, not over 1 MiB: a cut at its middle would not come after a "
        "whole piece; tests/sampledb.py must hold more incompressible bytes" % result["size_bytes"])
    armed = faults(proxy, result["size_bytes"] // 2)
    target = new_name("resumed")
    started = time.monotonic()
    restored = json.loads(run_cli(dict(env, **extra), "restore", "--target-db", target, "--jobs", "1", "--json",
                                  check=0).stdout)
    assert time.monotonic() - started < STALL  # a stall is cut short by the read timeout, not waited out
    assert [fault.hits for fault in armed] == [1] + [2] * (len(armed) - 1)
    gets = proxy.requests(**OBJECT_GET)
    assert [item.action for item in gets] == actions
    assert "range" not in gets[0].headers and "if-match" not in gets[0].headers
    resumed_at = int(gets[-1].headers["range"].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= result["size_bytes"] // 2  # from the byte reached, not from the start
    assert all(item.headers["range"] == gets[-1].headers["range"] and item.headers["if-match"] for item in gets[1:])
    assert restored["s3_retries"] == {"requests_retried": 1, "retries": len(actions) - 1, "download_resumes": 1}
    assert restored["checksum_ok"] and restored["size_bytes"] == result["size_bytes"]
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)


def test_a_download_that_cannot_go_on_fails_naming_the_byte_it_reached_and_leaves_nothing(testbed, env, proxy):
    result = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    half = result["size_bytes"] // 2
    proxy.reset_body(half, then=lambda: proxy.outage(60, now=True), **OBJECT_GET)  # cut, and the store is gone
    target = new_name("stopped")
    proc = run_cli(dict(env, S3_RETRY_WINDOW_SECONDS="4"), "restore", "--target-db", target, "--jobs", "1", check=5)
    error = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "cannot reach the S3 endpoint %s (GetObject" % env["S3_ENDPOINT_URL"] in error[0]
    assert "kept failing for" in error[0] and "(retry window: 4 s, S3_RETRY_WINDOW_SECONDS)" in error[0]
    reached = re.search(r"; the download stopped at byte (\d+) of (\d+) \(\d+%\)", error[0])
    assert reached and 0 < int(reached.group(1)) <= half and int(reached.group(2)) == result["size_bytes"]
    assert "staging database was dropped" in error[0]
    assert _databases_like(testbed.pg, target + "%") == ""


@pytest.mark.parametrize("store_checks_if_match", [True, False], ids=["store-honours-if-match", "store-ignores-if-match"])
def test_an_object_replaced_between_the_cut_and_the_resume_fails_the_restore_cleanly(
        testbed, env, proxy, s3, store_checks_if_match):
    """An attacker with write access to the bucket swaps in another backup's object while a restore is resuming."""
    older = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    newer = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    bucket = env["S3_BUCKET"]
    swapped = s3.get_object(Bucket=bucket, Key=older["object_key"])["Body"].read()
    original_etag = s3.head_object(Bucket=bucket, Key=newer["object_key"])["ETag"]
    cut_at = min(len(swapped), newer["size_bytes"]) // 2
    proxy.reset_body(cut_at, then=lambda: s3.put_object(Bucket=bucket, Key=newer["object_key"], Body=swapped),
                     **OBJECT_GET)
    if not store_checks_if_match:
        proxy.strip_header("If-Match", **OBJECT_GET)
    target = new_name("spliced")
    proc = run_cli(env, "restore", "--target-db", target, "--jobs", "1", check=5 if store_checks_if_match else 6)
    assert s3.head_object(Bucket=bucket, Key=newer["object_key"])["ETag"] != original_etag  # the swap did happen
    error = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    gets = proxy.requests(**OBJECT_GET)
    assert gets[1].headers["if-match"] == original_etag  # the resumed read asks for the version it began with
    if store_checks_if_match:
        assert [item.action for item in gets] == ["reset_body", "pass"]
        assert "s3://%s/%s changed while it was being downloaded: at byte" % (bucket, newer["object_key"]) in error[0]
        assert "it no longer has the ETag %s" % original_etag in error[0]
    else:  # the store was not asked (the proxy took If-Match off): the segments' authentication refuses the splice
        assert [item.action for item in gets] == ["reset_body", "strip_header"]
        assert "decrypt failed" in error[0], error[0]
    assert "staging database was dropped" in error[0]
    assert _databases_like(testbed.pg, target + "%") == ""


@pytest.mark.parametrize("lost", [COMPLETE_UPLOAD, GLOBALS_PUT, METADATA_PUT],
                         ids=["complete-multipart-upload", "globals-put", "metadata-put"])
def test_a_lost_answer_to_a_conditional_write_is_not_a_conflict(env, proxy, s3, lost):
    drop = proxy.drop_answer(**lost)
    proc = run_cli(env, "backup", "--json", check=0)
    assert drop.hits == 1 and len(proxy.requests(**lost)) == 2  # the request got through, its answer did not
    assert "another writer" not in proc.stderr
    keys, uploads = _stored(s3, env)
    assert _one_backup(keys) and uploads == []
    run_cli(env, "verify", check=0)


@pytest.mark.parametrize("command", ["backup", "list"])
def test_an_endpoint_that_is_not_s3_is_named_as_the_problem_not_a_missing_backup(env, proxy, command):
    proxy.not_s3()
    proc = run_cli(env, command, check=5)
    assert "the S3 endpoint %s answered HTTP 404 without an S3 error" % env["S3_ENDPOINT_URL"] in proc.stderr
    assert "not an S3 endpoint?" in proc.stderr and "check S3_ENDPOINT_URL" in proc.stderr
    assert "no object at" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_stalled_endpoint_fails_within_the_window_with_the_timeout_as_cause(env, proxy):
    proxy.stall(120)
    window = 6
    started = time.monotonic()
    proc = run_cli(dict(env, S3_RETRY_WINDOW_SECONDS=str(window)), "backup", check=5)
    assert time.monotonic() - started < window + 8
    assert "timed out during ListObjectsV2" in proc.stderr and "kept failing for" in proc.stderr
