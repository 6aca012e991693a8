-- +goose Up
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);

-- +goose Down
DROP TABLE items;
