-- +goose Up
CREATE TABLE tags (item bigint NOT NULL REFERENCES items, tag text NOT NULL);

-- +goose Down
DROP TABLE tags;
