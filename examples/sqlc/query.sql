-- name: CreateAuthor :one
INSERT INTO authors (id, name, bio) VALUES ($1, $2, $3) RETURNING *;

-- name: GetAuthor :one
SELECT * FROM authors WHERE id = $1;

-- CountAuthors is per shard in SQL: through hv, run it on a fan-out context
-- with hv.WithAggregate(…, hv.Count("count")) to get the fleet's count.
-- name: CountAuthors :one
SELECT count(*) FROM authors;

-- name: CountAuthorsByBio :many
SELECT bio, count(*) AS n FROM authors GROUP BY bio ORDER BY bio;
