-- Run on every shard (hv.WithAllShards): each shard's schema holds its own
-- authors table. The id is an hv.Key made by the application, so it names
-- the author's shard.
CREATE TABLE authors (
  id   bigint PRIMARY KEY,
  name text   NOT NULL,
  bio  text
);
