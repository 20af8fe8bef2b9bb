#!/usr/bin/env python
"""Build a realistic benchmark database of a chosen size on disk.

Not pgbench's rows (they compress ~1000:1 and flatter every compressor): four tables with
the mix a real application has, and indexes on them:

- ``accounts``: bigserial key, uuid (unique index), e-mail (unique index), names, timestamps,
  numeric balance, a nested jsonb profile;
- ``orders``: foreign key to accounts (index), timestamps (index), numeric totals, a jsonb
  array of line items, a free-text note in words;
- ``events``: an append-only log: timestamps, inet, a kind, a jsonb payload, a user agent;
  index on (account_id, at);
- ``attachments``: a bytea of 2-12 KiB of random (incompressible) bytes per row, its
  SHA-256 and a file name: about a quarter of the database, as uploaded files or encrypted
  blobs are in real ones.

The database grows in batches until ``pg_database_size`` reaches the target, so the same
call can also grow an existing bench database to a larger size (the memory-flatness runs).
Two sessions insert at once (one for the bytea table, one for the rest) to use both cores.

Command line (libpq environment: PGHOST, PGPORT, PGUSER, PGPASSWORD)::

    python bench/datagen.py --db benchdb --size 1G
"""

import argparse
import os
import re
import subprocess
import sys
import threading
import time

WORDS = (
    "account order invoice payment refund customer shipping address delivery package warehouse "
    "stock price discount coupon tax total subtotal currency euro dollar pound card bank transfer "
    "pending shipped delivered cancelled returned review rating comment support ticket request "
    "urgent please thanks hello regards team manager sales product item quantity color size small "
    "medium large blue red green black white wooden steel cotton leather glass paper plastic "
    "monday tuesday wednesday thursday friday saturday sunday morning evening night week month "
    "year today tomorrow yesterday soon late early quick slow new old good great bad broken "
    "missing wrong right left front back top bottom inside outside open closed ready waiting "
    "the a an and or but with without for from to of in on at by about after before during "
    "customer asked whether the delivery could arrive earlier than planned because of travel"
).split()

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS accounts (
    id bigserial PRIMARY KEY,
    uid uuid NOT NULL DEFAULT gen_random_uuid(),
    email text NOT NULL,
    full_name text NOT NULL,
    created timestamptz NOT NULL,
    last_login timestamptz,
    balance numeric(14, 2) NOT NULL,
    status smallint NOT NULL,
    profile jsonb NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS accounts_uid ON accounts (uid);
CREATE UNIQUE INDEX IF NOT EXISTS accounts_email ON accounts (email);
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL,
    placed_at timestamptz NOT NULL,
    total numeric(12, 2) NOT NULL,
    currency char(3) NOT NULL,
    items jsonb NOT NULL,
    note text);
CREATE INDEX IF NOT EXISTS orders_account ON orders (account_id);
CREATE INDEX IF NOT EXISTS orders_placed ON orders (placed_at);
CREATE TABLE IF NOT EXISTS events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    account_id bigint NOT NULL,
    kind text NOT NULL,
    ip inet,
    user_agent text,
    payload jsonb);
CREATE INDEX IF NOT EXISTS events_account_at ON events (account_id, at);
CREATE TABLE IF NOT EXISTS attachments (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL,
    name text NOT NULL,
    mime text NOT NULL,
    sha256 bytea NOT NULL,
    content bytea NOT NULL);
CREATE INDEX IF NOT EXISTS attachments_account ON attachments (account_id);
ALTER TABLE attachments ALTER COLUMN content SET STORAGE EXTERNAL;
CREATE OR REPLACE FUNCTION bench_words(n int) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT string_agg((ARRAY[{words}])[1 + floor(random() * {nwords})::int], ' ')
    FROM generate_series(1, n)
$$;
CREATE OR REPLACE FUNCTION bench_random_bytes(n int) RETURNS bytea LANGUAGE sql VOLATILE AS $$
    SELECT decode(string_agg(md5(random()::text || clock_timestamp()::text || i), ''), 'hex')
    FROM generate_series(1, (n + 15) / 16) i
$$;
""".format(words=", ".join("'%s'" % word for word in WORDS), nwords=len(WORDS))

# Rows of each table per "unit"; a batch inserts many units. About 1 KiB of rows+indexes per
# unit in the first three tables, ~0.2 KiB of incompressible bytea (2-12 KiB every 35 units).
MAIN_BATCH_SQL = """
INSERT INTO accounts (email, full_name, created, last_login, balance, status, profile)
SELECT 'user' || ({account_base} + g) || '.' || substr(md5(random()::text), 1, 6) || '@' || (ARRAY['example.com','mail.test','corp.example'])[1 + g % 3],
       initcap(bench_words(2)),
       timestamptz '2019-01-01' + random() * interval '2000 days',
       CASE WHEN random() < 0.8 THEN now() - random() * interval '90 days' END,
       round((random() * 20000 - 2000)::numeric, 2),
       (random() * 4)::int,
       jsonb_build_object('address', jsonb_build_object('street', initcap(bench_words(2)) || ' ' || (random() * 300)::int,
                                                       'city', (ARRAY['Berlin','Lyon','Porto','Leeds','Turin','Gdansk'])[1 + g % 6],
                                                       'zip', lpad(((random() * 99999)::int)::text, 5, '0')),
                          'prefs', jsonb_build_object('lang', (ARRAY['en','de','fr','pt'])[1 + g % 4], 'newsletter', random() < 0.3),
                          'tags', to_jsonb(string_to_array(bench_words(1 + (random() * 3)::int), ' ')))
FROM generate_series(1, {accounts}) g;
INSERT INTO orders (account_id, placed_at, total, currency, items, note)
SELECT 1 + (random() * {account_span})::bigint,
       timestamptz '2021-01-01' + random() * interval '1400 days',
       round((random() * 900 + 5)::numeric, 2),
       (ARRAY['EUR','USD','GBP'])[1 + (random() * 2)::int],
       (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || lpad(((random() * 99999)::int)::text, 5, '0'),
                                            'qty', 1 + (random() * 4)::int,
                                            'price', round((random() * 200)::numeric, 2)))
        FROM generate_series(1, 1 + (g % 4))),
       CASE WHEN random() < 0.6 THEN bench_words(4 + (random() * 20)::int) END
FROM generate_series(1, {orders}) g;
INSERT INTO events (at, account_id, kind, ip, user_agent, payload)
SELECT timestamptz '2024-01-01' + random() * interval '500 days',
       1 + (random() * {account_span})::bigint,
       (ARRAY['login','logout','view','search','add_to_cart','checkout','password_change','api_call'])[1 + (random() * 7)::int],
       ('10.' || (random() * 255)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int)::inet,
       (ARRAY['Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0', 'Mozilla/5.0 (Macintosh) Safari/605.1.15',
              'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0', 'okhttp/4.12.0', 'curl/8.5.0'])[1 + (random() * 4)::int],
       jsonb_build_object('session', gen_random_uuid(), 'ms', (random() * 900)::int, 'path',
                          '/' || replace(bench_words(2), ' ', '/'), 'ok', random() < 0.97)
FROM generate_series(1, {events}) g;
"""

BLOB_BATCH_SQL = """
INSERT INTO attachments (account_id, name, mime, sha256, content)
SELECT account_id, name, mime, sha256(content), content FROM (
    SELECT 1 + (random() * {account_span})::bigint AS account_id,
           replace(bench_words(2), ' ', '_') || (ARRAY['.pdf', '.png', '.jpg', '.zip'])[1 + g % 4] AS name,
           (ARRAY['application/pdf', 'image/png', 'image/jpeg', 'application/zip'])[1 + g % 4] AS mime,
           bench_random_bytes(2048 + (random() * 10240)::int) AS content
    FROM generate_series(1, {attachments}) g) rows;
"""

UNIT_BYTES = 800  # on-disk bytes per unit, roughly (measured on PostgreSQL 15); only sizes the batches
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?\s*$")


def parse_size(text):
    """Bytes from '1G', '500M', '750MB', '20000000'."""
    match = SIZE_RE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError("not a size: %r (say e.g. 1G, 500M)" % text)
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(float(match.group(1)) * factor)


class Psql:
    """Runs SQL with psql against one database (libpq environment given)."""

    def __init__(self, psql, env, db):
        self.psql = psql
        self.env = env
        self.db = db

    def __call__(self, sql):
        done = subprocess.run([self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.db, "-c", sql],
                              env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError("psql on %s failed: %s" % (self.db, done.stderr.strip()))
        return done.stdout.strip()


def database_size(run):
    return int(run("SELECT pg_database_size(current_database())"))


def grow(run, target_bytes, log=print, batches=16):
    """Add rows to the bench tables (creating them if needed) until the database is ``target_bytes`` on disk.

    ``run(sql) -> str`` executes SQL in the bench database and must be safe to call from two threads.
    Returns a dict describing the database.
    """
    started = time.time()
    run(SCHEMA_SQL)
    size = database_size(run)
    units = max(200, (target_bytes - size) // UNIT_BYTES // batches)
    while size < target_bytes:
        left_units = (target_bytes - size) // UNIT_BYTES
        step = int(max(200, min(units, left_units * 1.05)))
        base = int(run("SELECT coalesce(max(id), 0) FROM accounts") or 0)
        span = max(1, base + step // 10)
        main_sql = MAIN_BATCH_SQL.format(accounts=step // 10, orders=step // 2, events=step, account_span=span,
                                         account_base=base)
        blob_sql = BLOB_BATCH_SQL.format(attachments=max(1, step // 35), account_span=span)
        errors = []

        def insert(sql):
            try:
                run(sql)
            except Exception as error:  # pylint: disable=broad-exception-caught  # re-raised below
                errors.append(error)

        threads = [threading.Thread(target=insert, args=(sql,)) for sql in (main_sql, blob_sql)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        size = database_size(run)
        log("datagen: %6.0f MB of %.0f MB (%.0fs)" % (size / 1e6, target_bytes / 1e6, time.time() - started))
    run("VACUUM ANALYZE")
    return describe(run)


def describe(run):
    """Rows and sizes of the bench tables, and the database size."""
    tables = {}
    for table in ("accounts", "orders", "events", "attachments"):
        rows, total = run("SELECT count(*), pg_total_relation_size('%s') FROM %s" % (table, table)).split("|")
        tables[table] = {"rows": int(rows), "bytes": int(total)}
    return {"database_bytes": database_size(run), "tables": tables}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--db", required=True, help="database to fill (created when missing)")
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="size on disk to reach (default 1G)")
    parser.add_argument("--psql", default="psql", help="psql program (default: psql on PATH)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    admin = Psql(args.psql, env, "postgres")
    if admin("SELECT count(*) FROM pg_database WHERE datname = '%s'" % args.db.replace("'", "''")) == "0":
        admin('CREATE DATABASE "%s"' % args.db.replace('"', '""'))
    info = grow(Psql(args.psql, env, args.db), args.size)
    print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
