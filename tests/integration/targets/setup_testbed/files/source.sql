-- The source database the integration targets back up and restore: a few related tables with
-- deterministic rows, enough data (~2 MiB stored) that the default health rules find it normal.
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    amount numeric(10, 2) NOT NULL,
    items jsonb NOT NULL
);
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    payload text NOT NULL
);
INSERT INTO customers (name, email, created_at)
    SELECT 'customer ' || g, 'c' || g || '@example.test', timestamptz '2025-01-01 00:00:00+00' + g * interval '1 hour'
    FROM generate_series(1, 500) AS g;
INSERT INTO orders (customer_id, amount, items)
    SELECT 1 + g % 500, 1 + (g % 1000) / 10.0, jsonb_build_object('sku', 'SKU-' || g, 'qty', 1 + g % 7)
    FROM generate_series(1, 5000) AS g;
INSERT INTO events (kind, payload)
    SELECT (ARRAY['login', 'logout', 'purchase'])[1 + g % 3], md5(g::text) || md5((g * 7)::text)
    FROM generate_series(1, 60000) AS g;
