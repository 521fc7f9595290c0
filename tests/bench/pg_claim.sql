-- One nonce claim as nonces_pg.c sends it (CLAIM_SQL, one row), for pgbench
-- on a server with coffer_nonces and coffer_nonce_window (a fleet's
-- database, or the tables made by hand):
--   pgbench -n -c1 -T3 -M prepared -f tests/bench/pg_claim.sql DBNAME
-- Compare: -f tests/bench/pg_insert.sql (a plain one-row insert), and
-- PGOPTIONS='-c synchronous_commit=off' (the claim without its WAL flush).
\set r random(1, 1000000000000)
INSERT INTO coffer_nonces AS t (h, expires) SELECT decode(u.h, 'hex'), u.e + greatest(0, w.seconds - u.w) FROM unnest(ARRAY[md5(:r::text)]::text[], ARRAY[2000000000]::int8[], ARRAY[300]::int8[]) AS u(h, e, w), coffer_nonce_window w ORDER BY u.h ON CONFLICT (h) DO UPDATE SET expires = EXCLUDED.expires WHERE t.expires <= 1 RETURNING encode(t.h, 'hex');
