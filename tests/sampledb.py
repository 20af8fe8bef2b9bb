# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small sample database with the shapes real ones have, and a way to compare two copies of it.

Used by the functional tests and `make demo`: mixed types (text, jsonb, uuid, timestamps,
numeric, incompressible bytea), a second schema, a partitioned table, an index and a view.

Its backup is over 2 MiB whatever the compression and its level: the ``blobs`` table alone holds
:func:`incompressible_bytes` of random bytes (2 MiB by default), which no compressor can shrink. Tests that
need a backup larger than some size (health's default ``min_size`` of 1 MiB, a cut after the first 1 MiB
segment) rely on that, not on how well the compressible tables happen to compress, and assert it.
"""

CANARY = "quankey-canary-row"

SAMPLE_SQL = """
CREATE TABLE customers (
    id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, profile jsonb, created timestamptz NOT NULL,
    balance numeric(12, 2), uid uuid NOT NULL DEFAULT gen_random_uuid());
INSERT INTO customers (email, profile, created, balance)
    SELECT '{canary}-' || g || '@example.com', jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 7)),
           timestamptz '2025-01-01' + g * interval '1 minute', g * 1.25
    FROM generate_series(1, {rows}) g;
CREATE TABLE blobs (id int PRIMARY KEY, payload bytea NOT NULL);
INSERT INTO blobs SELECT g, decode(string_agg(md5(random()::text || g || i), ''), 'hex')
    FROM generate_series(1, {blobs}) g, generate_series(1, {md5s_per_blob}) i GROUP BY g;
CREATE SCHEMA audit;
CREATE TABLE audit.events (id int GENERATED ALWAYS AS IDENTITY, what text, at timestamp DEFAULT '2025-02-03');
INSERT INTO audit.events (what) SELECT 'event ' || g FROM generate_series(1, 500) g;
CREATE TABLE measurements (id int, at date NOT NULL, v double precision) PARTITION BY RANGE (at);
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO measurements SELECT g, date '2024-06-01' + (g % 400), g / 3.0 FROM generate_series(1, 3000) g;
CREATE INDEX ON customers (created);
CREATE VIEW rich AS SELECT email FROM customers WHERE balance > 100;
"""

# Tables holding rows (the partitioned parent holds none of its own).
DATA_TABLES = ["public.customers", "public.blobs", "audit.events", "public.measurements_2024", "public.measurements_2025"]
TABLE_COUNT = len(DATA_TABLES) + 1


BLOB_BYTES = 8192  # random bytes in each row of blobs: 512 MD5 digests of random values, 16 bytes each
BLOBS = 256


def incompressible_bytes(blobs=BLOBS):
    """How many random (incompressible) bytes :func:`fill` puts in the blobs table: 2 MiB by default."""
    return blobs * BLOB_BYTES


def fill(pg, db, rows=20000, blobs=BLOBS):
    """Create the sample tables in database ``db`` of a testbed.PostgresCluster (``blobs`` rows of
    BLOB_BYTES random bytes each)."""
    pg.psql(SAMPLE_SQL.format(canary=CANARY, rows=rows, blobs=blobs, md5s_per_blob=BLOB_BYTES // 16), db=db)


def table_digests(pg, db, tables=None):
    """Row count and an ordered digest of every row, per table."""
    return {table: pg.psql("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
                           "FROM %s t" % table, db=db).strip() for table in (tables or DATA_TABLES)}
