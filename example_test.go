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

// The examples run against the fleet in HV_DSN: shards 1-8 on one
// PostgreSQL server and 9-16 on another, each shard a schema holding a
// table notes(id int, body text). The test binary sets it up.

func Example() {
	// e.g. "shards=1-9 host=db1 user=app dbname=app; shards=9-17 host=db2 user=app dbname=app; pool_max=10"
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := hv.WithShard(context.Background(), 5)
	if _, err := db.ExecContext(ctx, "INSERT INTO notes VALUES ($1, $2)", 1, "hello from shard 5"); err != nil {
		log.Fatal(err)
	}
	var body, schema string
	err = db.QueryRowContext(ctx, "SELECT body, current_schema() FROM notes WHERE id = $1", 1).Scan(&body, &schema)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(body, "in", schema)
	// Output: hello from shard 5 in shard0005
}

func ExampleWithShard() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	var port1 int
	for _, shard := range []int{1, 8, 9, 16} {
		var schema string
		var port int
		ctx := hv.WithShard(context.Background(), shard)
		if err := db.QueryRowContext(ctx, "SELECT current_schema(), inet_server_port()").Scan(&schema, &port); err != nil {
			log.Fatal(err)
		}
		if shard == 1 {
			port1 = port
		}
		fmt.Printf("shard %2d: schema %s, same server as shard 1: %v\n", shard, schema, port == port1)
	}

	_, err = db.ExecContext(context.Background(), "SELECT 1")
	fmt.Println(errors.Is(err, hv.ErrNoShard))
	_, err = db.ExecContext(hv.WithShard(context.Background(), 99), "SELECT 1")
	fmt.Println(errors.Is(err, hv.ErrUnknownShard))
	// Output:
	// shard  1: schema shard0001, same server as shard 1: true
	// shard  8: schema shard0008, same server as shard 1: true
	// shard  9: schema shard0009, same server as shard 1: false
	// shard 16: schema shard0016, same server as shard 1: false
	// true
	// true
}

// A *sql.Conn taken with a shard on its context is the seed's
// get_connection: one physical connection on that shard until Close
// (put_connection). Its statements need no shard on their own contexts.
func ExampleWithShard_conn() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := context.Background()
	conn, err := db.Conn(hv.WithShard(ctx, 12))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	var schema string
	if err := conn.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		log.Fatal(err)
	}
	fmt.Println(schema)

	_, err = conn.ExecContext(hv.WithShard(ctx, 13), "SELECT 1")
	fmt.Println(errors.Is(err, hv.ErrShardMismatch))
	// Output:
	// shard0012
	// true
}

// A transaction runs on one physical connection of its shard's host.
func ExampleWithShard_transaction() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := hv.WithShard(context.Background(), 10)
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback() // a no-op after Commit

	if _, err := tx.ExecContext(ctx, "INSERT INTO notes VALUES (2, 'in a transaction')"); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	var body string
	if err := db.QueryRowContext(ctx, "SELECT body FROM notes WHERE id = 2 LIMIT 1").Scan(&body); err != nil {
		log.Fatal(err)
	}
	fmt.Println(body)
	// Output: in a transaction
}

func ExampleParseConfig() {
	cfg, err := hv.ParseConfig("shards=1-9 host=db1 user=app password=secret dbname=app; " +
		"shards=9-17 host=db2 user=app dbname=app; pool_max=20; pool_block_timeout=2")
	if err != nil {
		log.Fatal(err)
	}
	for _, h := range cfg.Hosts {
		fmt.Println(h.Name(), "owns shards", h.Shards.Start, "to", h.Shards.End-1)
	}
	fmt.Println(cfg.PoolMax, cfg.PoolBlockTimeout, cfg.SchemaName(12))

	_, err = hv.ParseConfig("shards=9-1 host=db1")
	fmt.Println(errors.Is(err, hv.ErrBadConfig))
	// Output:
	// db1/app owns shards 1 to 8
	// db2/app owns shards 9 to 16
	// 20 2s shard0012
	// true
}

// A fan-out runs one statement on many shards at once: ExecContext sums the
// rows affected, and QueryContext streams every shard's rows as one
// *sql.Rows, here merged into one sorted stream and cut after three rows.
func ExampleWithAllShards() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	all := hv.WithAllShards(context.Background())
	res, err := db.ExecContext(all, "INSERT INTO notes VALUES (100, 'note of ' || current_schema())")
	if err != nil {
		log.Fatal(err)
	}
	n, _ := res.RowsAffected()
	fmt.Println("inserted", n)

	// Each shard sorts its rows; hv merges them and stops after three.
	ctx := hv.WithLimit(hv.WithMergeOrder(all, hv.Desc("body")), 3)
	rows, err := db.QueryContext(ctx, `SELECT body FROM notes WHERE id = 100 ORDER BY body COLLATE "C" DESC LIMIT 3`)
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var body string
		if err := rows.Scan(&body); err != nil {
			log.Fatal(err)
		}
		fmt.Println(body)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}

	res, err = db.ExecContext(hv.WithShards(context.Background(), 1, 9), "DELETE FROM notes WHERE id = 100")
	if err != nil {
		log.Fatal(err)
	}
	n, _ = res.RowsAffected()
	fmt.Println("deleted", n, "on shards 1 and 9")
	// Output:
	// inserted 16
	// note of shard0016
	// note of shard0015
	// note of shard0014
	// deleted 2 on shards 1 and 9
}

// Applications that route by their own ids set num_shards and hand hv the
// id: integers go to id mod num_shards, strings to a stable hash.
func ExampleWithShardKey() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN")+"; num_shards=16")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	for _, key := range []any{21, "alice", "carol"} {
		var schema string
		ctx := hv.WithShardKey(context.Background(), key)
		if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%v -> %s\n", key, schema)
	}
	// "bob" hashes to shard 0, which no host of this fleet owns.
	_, err = db.ExecContext(hv.WithShardKey(context.Background(), "bob"), "SELECT 1")
	fmt.Println(errors.Is(err, hv.ErrUnknownShard))
	// Output:
	// 21 -> shard0005
	// alice -> shard0004
	// carol -> shard0014
	// true
}

// ShardForKey is the documented default mapping, for programs that need
// to compute it themselves.
func ExampleShardForKey() {
	for _, key := range []any{42, -1, "user:42"} {
		shard, err := hv.ShardForKey(key, 2000)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(key, "->", shard)
	}
	// Output:
	// 42 -> 42
	// -1 -> 1999
	// user:42 -> 1112
}

// Reconfigure moves shards between hosts without a restart; here the
// first host gives shard 8 to the second (whose database must then hold
// the schema: the example only shows the routing).
func ExampleConnector_Reconfigure() {
	cfg, err := hv.ParseConfig(os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := hv.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()

	cfg.Hosts[0].Shards = hv.ShardRange{Start: 1, End: 8}
	cfg.Hosts[1].Shards = hv.ShardRange{Start: 8, End: 17}
	if err := c.Reconfigure(cfg); err != nil {
		log.Fatal(err)
	}
	for _, h := range c.Stats() {
		fmt.Println("shards", h.Shards.Start, "to", h.Shards.End-1)
	}
	// Output:
	// shards 1 to 7
	// shards 8 to 16
}
