package hv_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"

	"github.com/hypervault/hv"
)

// A count over a fan-out is one row per shard; WithAggregate merges the
// shards' rows into the one row a single server would return.
func ExampleWithAggregate() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := hv.WithAggregate(hv.WithAllShards(context.Background()), hv.Count("n"), hv.Sum("total"))
	var n, total int64
	err = db.QueryRowContext(ctx, "SELECT count(*) AS n, sum(x) AS total FROM generate_series(1, 10) x").Scan(&n, &total)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(n, total)
	// Output: 160 880
}

// WithKeys runs the statement once on each shard owning some of the keys,
// with $1 that shard's keys only.
func ExampleWithKeys() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN")+"; num_shards=16")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := hv.WithMergeOrder(hv.WithKeys(context.Background(), 21, 37, 5, 6, 21), hv.Asc("s"))
	rows, err := db.QueryContext(ctx, "SELECT current_schema() AS s, $1::bigint[] AS keys ORDER BY 1")
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var schema, keys string
		if err := rows.Scan(&schema, &keys); err != nil {
			log.Fatal(err)
		}
		fmt.Println(schema, keys)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// shard0005 {21,37,5}
	// shard0006 {6}
}
