"""Parallel restore (``restore --jobs N``): several pg_restore processes, each fed by its own ranged reads of the
object, on the real test bed.

The database here has tables larger than a range (formats/pgarchive.RANGE_MIN archive bytes), so its backup has
several ranges; the restored database is compared with the source object by object (rows, large objects, sequences,
a materialized view, constraints, indexes). Damage, a cut connection and backups without an index are covered too.
"""

import json
import uuid

import pytest

from faultproxy import FaultProxy
from hostcommand import new_name, run_cli
from sampledb import table_digests

OBJECT_GET = {"method": "GET", "path": "/backups/postgresql/"}
TABLES = ["public.big_a", "public.big_b", "public.big_c", "public.empty_t", "public.wide", "audit.log_2024",
          "audit.log_2025"]
SCHEMA = """
CREATE SCHEMA audit;
CREATE TABLE big_a (id int PRIMARY KEY, payload text NOT NULL);
INSERT INTO big_a SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 100000) i;
CREATE TABLE big_b (id int PRIMARY KEY, a_id int NOT NULL REFERENCES big_a(id), note text);
INSERT INTO big_b SELECT i, 1 + i % 100000, repeat(md5((i * 7)::text), 3) FROM generate_series(1, 100000) i;
CREATE INDEX big_b_a_id ON big_b (a_id);
CREATE TABLE big_c (id bigserial PRIMARY KEY, doc jsonb NOT NULL, seen timestamptz);
INSERT INTO big_c (doc, seen) SELECT jsonb_build_object('n', i, 'h', md5(i::text), 'g', repeat(md5((i * 3)::text), 2)),
    '2024-01-01'::timestamptz + i * interval '1 minute' FROM generate_series(1, 80000) i;
CREATE TABLE empty_t (x int UNIQUE);
CREATE TABLE wide (x text);
INSERT INTO wide VALUES (repeat('w', 65535)), (repeat('v', 131071)), ('tail');
CREATE TABLE audit.log (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE audit.log_2024 PARTITION OF audit.log FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE audit.log_2025 PARTITION OF audit.log FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO audit.log SELECT '2024-01-01'::date + (i % 700), 'event ' || i FROM generate_series(1, 20000) i;
CREATE SEQUENCE counter START 1000;
SELECT setval('counter', 4242);
CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(length(payload)) AS bytes FROM big_a;
SELECT lo_from_bytea(0, decode(repeat('00ff0000', 150000), 'hex'));
SELECT lo_from_bytea(0, convert_to('a small large object', 'UTF8'));
"""


def _facts(pg, db):
    """What must come back besides the rows: large objects, sequence, view, constraints, indexes."""
    def one(sql):
        return pg.psql(sql, db=db).strip()
    return {
        "large_objects": one("SELECT string_agg(md5(lo_get(oid)), ',' ORDER BY md5(lo_get(oid))) "
                             "FROM pg_largeobject_metadata"),
        "sequence": one("SELECT last_value FROM counter"),
        "view": one("SELECT n || ':' || bytes FROM totals"),
        "constraints": one("SELECT string_agg(conname || ':' || contype::text, ',' ORDER BY conname) FROM pg_constraint "
                           "WHERE connamespace IN ('public'::regnamespace, 'audit'::regnamespace)"),
        "indexes": one("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
                       "WHERE schemaname IN ('public', 'audit')"),
    }


@pytest.fixture(scope="module")
def big(testbed):
    """A database of several tables larger than a range, with large objects, a sequence, a view and partitions."""
    name = "big_%s" % uuid.uuid4().hex[:8]
    testbed.pg.create_database(name)
    testbed.pg.psql(SCHEMA, db=name)
    return name


@pytest.fixture(scope="module")
def env(testbed, big):
    values = testbed.backup_env(big)
    values.update(S3_PREFIX=new_name("par"), BACKUP_HOST_ID="db1")
    return values


@pytest.fixture(scope="module")
def taken(env):
    return json.loads(run_cli(env, "backup", "--json", check=0).stdout)


def _metadata(s3, env, result):
    return json.loads(s3.get_object(Bucket=env["S3_BUCKET"], Key=result["metadata_key"])["Body"].read())


def test_a_backup_records_where_each_range_starts(env, s3, taken):
    metadata = _metadata(s3, env, taken)
    index = metadata["data_ranges"]
    assert metadata["metadata_version"] == 5
    assert index["archive_bytes"] == metadata["dump_bytes"]
    ranges = index["ranges"]
    assert len(ranges) >= 3, ranges  # big_a, big_b and big_c are each more than a range's worth
    starts = [item[0] for item in ranges] + [index["archive_bytes"]]
    assert all(later > earlier for earlier, later in zip(starts, starts[1:]))
    assert all(item[2] for item in ranges)  # every range holds at least one data block's id


@pytest.mark.parametrize("jobs", ["2", "3", "1"])
def test_a_parallel_restore_gives_back_the_same_database(testbed, big, env, taken, jobs):
    target = new_name("par_restored")
    restored = json.loads(run_cli(env, "restore", "--target-db", target, "--jobs", jobs, "--json", check=0).stdout)
    assert restored["jobs"] == int(jobs)
    if jobs == "1":
        assert restored["integrity"] == "sha256" and "schema" not in restored["stage_seconds"]
    else:
        assert restored["integrity"] == "segments" and restored["checksum_sha256"] is None
        assert {"schema", "download_restore", "indexes"} <= set(restored["stage_seconds"])
    assert restored["table_count"] == restored["expected_table_count"]
    assert table_digests(testbed.pg, target, TABLES) == table_digests(testbed.pg, big, TABLES)
    assert _facts(testbed.pg, target) == _facts(testbed.pg, big)


def test_a_range_changed_in_the_bucket_fails_the_restore_and_leaves_nothing(testbed, env, s3, taken):
    bucket = env["S3_BUCKET"]
    fresh = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    index = _metadata(s3, env, fresh)["data_ranges"]
    data = bytearray(s3.get_object(Bucket=bucket, Key=fresh["object_key"])["Body"].read())
    segment = 1024 * 1024
    third = index["ranges"][2][1]  # a byte inside the third range's stream, past its frame's start
    position = 56 + (third // segment) * (segment + 16) + third % segment + 100
    data[position] ^= 0x40
    s3.put_object(Bucket=bucket, Key=fresh["object_key"], Body=bytes(data))
    target = new_name("par_damaged")
    proc = run_cli(env, "restore", "--target-db", target, "--backup", fresh["name"], check=6)
    error = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "authentication failed at segment %d" % (third // segment) in error[0], error[0]
    assert "staging database was dropped" in error[0]
    assert testbed.pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target).strip() == "0"
    s3.delete_object(Bucket=bucket, Key=fresh["metadata_key"])  # later tests restore "latest"


def test_ranged_reads_cut_mid_body_resume_and_restore_the_same_data(testbed, big, env, taken):
    with FaultProxy(testbed.moto.endpoint_url) as proxy:
        cuts = proxy.reset_body(300 * 1024, count=5, **OBJECT_GET)
        target = new_name("par_resumed")
        restored = json.loads(run_cli(dict(env, S3_ENDPOINT_URL=proxy.endpoint_url), "restore", "--target-db", target,
                                      "--jobs", "2", "--json", check=0).stdout)
        gets = proxy.requests(**OBJECT_GET)
    assert cuts.hits == 5
    resets = [item for item in gets if item.action == "reset_body"]
    assert len(resets) >= 3, [item.action for item in gets]  # the header's read is too short to cut
    assert all("range" in item.headers for item in gets)  # every read of the object is ranged
    assert all(item.headers.get("if-match") for item in gets[1:])  # ... and of the version first seen
    # answers shorter than the cut (the header's 56 bytes, a short range) pass whole: at least two were cut and resumed
    assert 2 <= restored["s3_retries"]["download_resumes"] <= len(resets) - 1
    assert table_digests(testbed.pg, target, TABLES) == table_digests(testbed.pg, big, TABLES)
    assert _facts(testbed.pg, target) == _facts(testbed.pg, big)


def test_a_backup_without_a_range_index_restores_with_one_stream(testbed, big, env, s3):
    gzip_env = dict(env, BACKUP_COMPRESSION="gzip", S3_PREFIX=new_name("par_gzip"))
    result = json.loads(run_cli(gzip_env, "backup", "--json", check=0).stdout)
    assert "data_ranges" not in _metadata(s3, gzip_env, result)  # a gzip stream cannot be cut into frames
    target = new_name("par_gzip_restored")
    proc = run_cli(gzip_env, "restore", "--target-db", target, "--jobs", "2", "--json", check=0)
    restored = json.loads(proc.stdout)
    assert restored["jobs"] == 1 and restored["integrity"] == "sha256"
    assert "with one stream: the backup has no range index" in proc.stderr
    assert table_digests(testbed.pg, target, TABLES) == table_digests(testbed.pg, big, TABLES)


def test_jobs_below_one_are_refused(env):
    proc = run_cli(env, "restore", "--jobs", "-1", check=2)
    assert "--jobs" in proc.stderr
