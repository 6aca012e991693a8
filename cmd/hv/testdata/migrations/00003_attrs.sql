-- +goose Up
-- An extension type, unqualified: hstore lives in hv_ext, on every shard's search_path.
ALTER TABLE items ADD COLUMN attrs hstore NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE items DROP COLUMN attrs;
