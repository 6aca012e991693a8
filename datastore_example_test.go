package hv_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/hypervault/hv"
)

// A Datastore keeps schemaless entities (hstore bodies) under keys that
// carry their shard: Get needs only the key.
func ExampleDatastore() {
	ds, err := hv.Open(os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer ds.Close()
	ctx := context.Background()

	// Idempotent: the hstore extension, each shard's key generator and
	// entities table.
	if err := ds.CreateShards(ctx); err != nil {
		log.Fatal(err)
	}
	if err := ds.CheckLayout(ctx); err != nil {
		log.Fatal(err)
	}

	key, err := ds.Put(ctx, 12, 1, map[string]string{"beep": "boop"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored on shard", key.ShardID())

	e, err := ds.Get(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("kind", e.Kind, "beep =", *e.Data["beep"])

	found, err := ds.Find(ctx, 12, 1, map[string]string{"beep": "boop"})
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range found {
		if f.Key == key {
			fmt.Println("found by beep=boop")
		}
	}

	if err := ds.Delete(ctx, key); err != nil {
		log.Fatal(err)
	}
	_, err = ds.Get(ctx, key)
	fmt.Println("after Delete:", errors.Is(err, sql.ErrNoRows))
	// Output:
	// stored on shard 12
	// kind 1 beep = boop
	// found by beep=boop
	// after Delete: true
}

// EachShard runs a migration on every shard, each in its own transaction:
// a shard that fails is rolled back and reported, the others commit.
func ExampleDatastore_EachShard() {
	ds, err := hv.Open(os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer ds.Close()

	res := ds.EachShard(context.Background(), func(ctx context.Context, tx *sql.Tx, shard int) error {
		_, err := tx.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS tags (note_id int, tag text)")
		return err
	}, &hv.EachShardOptions{})
	if err := res.Err(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d of %d shards migrated, %d failed\n", len(res.Committed), res.Total, len(res.Failed))
	// Output: 16 of 16 shards migrated, 0 failed
}
