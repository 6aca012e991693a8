-- hstore, unqualified: it lives in hv_ext, on every shard's search_path.
ALTER TABLE notes ADD COLUMN attrs hstore NOT NULL DEFAULT '';
