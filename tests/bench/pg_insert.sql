-- A plain durable one-row insert, the floor beside tests/bench/pg_claim.sql:
--   psql -c 'CREATE TABLE plain (h bytea PRIMARY KEY, expires bigint)' DBNAME
--   pgbench -n -c1 -T3 -M prepared -f tests/bench/pg_insert.sql DBNAME
\set r random(1, 1000000000000)
INSERT INTO plain VALUES (decode(md5(:r::text), 'hex'), 1);
