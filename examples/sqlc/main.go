// Command sqlc shows sqlc's generated code (package authors, from
// query.sql and schema.sql by `sqlc generate`) on top of hv: the generated
// Queries take any *sql.DB, and the context given to each call routes it.
//
//	HV_DSN='shards=1-9 host=127.0.0.1 user=postgres dbname=a; shards=9-17 host=127.0.0.1 port=5433 user=postgres dbname=b' go run .
//
// It creates the authors table on every shard, stores authors on the
// shards their keys name, reads one back by key, and counts them over the
// whole fleet. A count is an aggregate: on a fan-out context alone sqlc's
// :one CountAuthors would read the first shard's row only, so it runs under
// hv.WithAggregate, which merges the shards' counts into the one row sqlc
// expects.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	_ "embed"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/examples/sqlc/authors"
)

//go:embed schema.sql
var schema string

func main() {
	dsn := os.Getenv("HV_DSN")
	if dsn == "" {
		log.Fatal("set HV_DSN to an hv DSN, e.g. 'shards=1-9 host=db1 user=app dbname=app; shards=9-17 host=db2 user=app dbname=app'")
	}
	if err := run(context.Background(), dsn, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// fleetCount counts the authors of every shard: one merged row.
func fleetCount(ctx context.Context, q *authors.Queries) (int64, error) {
	return q.CountAuthors(hv.WithAggregate(hv.WithAllShards(ctx), hv.Count("count")))
}

// byBio counts authors per bio over the fleet. The SQL orders by the group
// column and so does the merge, so the merge streams.
func byBio(ctx context.Context, q *authors.Queries) ([]authors.CountAuthorsByBioRow, error) {
	ctx = hv.WithAggregate(hv.WithAllShards(ctx), hv.GroupBy("bio"), hv.Count("n"))
	return q.CountAuthorsByBio(hv.WithMergeOrder(ctx, hv.Asc("bio")))
}

func run(ctx context.Context, dsn string, out io.Writer) error {
	db, err := sql.Open("hv", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(hv.WithAllShards(ctx), schema); err != nil {
		return fmt.Errorf("create authors on every shard: %w", err)
	}
	q := authors.New(db)
	now := time.Now()
	var first authors.Author
	for i, name := range []string{"Ursula", "Octavia", "Iain", "Ann"} {
		id, err := hv.NewKey(now, 1+i*5, i) // shards 1, 6, 11 and 16
		if err != nil {
			return err
		}
		bio := sql.NullString{String: []string{"novels", "stories"}[i%2], Valid: true}
		a, err := q.CreateAuthor(hv.WithKey(ctx, id), authors.CreateAuthorParams{ID: int64(id), Name: name, Bio: bio})
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		if i == 0 {
			first = a
		}
	}
	a, err := q.GetAuthor(hv.WithKey(ctx, hv.Key(first.ID)), first.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "author %s on shard %d\n", a.Name, hv.Key(a.ID).ShardID())
	n, err := fleetCount(ctx, q)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "authors in the fleet: %d\n", n)
	groups, err := byBio(ctx, q)
	if err != nil {
		return err
	}
	for _, g := range groups {
		fmt.Fprintf(out, "%s: %d\n", g.Bio.String, g.N)
	}
	return nil
}
