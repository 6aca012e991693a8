package hv_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/hypervault/hv"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
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
		fmt.Println(h.Name(), "owns shards", h.Shards[0].Start, "to", h.Shards[0].End-1)
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

	cfg.Hosts[0].Shards = hv.ShardSet{{Start: 1, End: 8}}
	cfg.Hosts[1].Shards = hv.ShardSet{{Start: 8, End: 17}}
	if err := c.Reconfigure(cfg); err != nil {
		log.Fatal(err)
	}
	for _, h := range c.Stats() {
		fmt.Println("shards", h.Shards[0].Start, "to", h.Shards[0].End-1)
	}
	// Output:
	// shards 1 to 7
	// shards 8 to 16
}

// A Generator makes keys in the process from blocks it leases from the
// shard's sequence: no round trip per key, and never a key that next_id()
// or another Generator, here or elsewhere, also makes.
func ExampleNewGenerator() {
	ds, err := hv.Open(os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer ds.Close()
	ctx := context.Background()
	if err := ds.CreateShards(ctx); err != nil { // creates lease_ids() on every shard
		log.Fatal(err)
	}

	gen, err := hv.NewGenerator(hv.DBLeaser{DB: ds.DB()}, 9, nil)
	if err != nil {
		log.Fatal(err)
	}
	a, err := gen.Next(ctx)
	if err != nil {
		log.Fatal(err)
	}
	b, err := gen.Next(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(a.ShardID(), b.ShardID(), b > a)
	// Output: 9 9 true
}

// Raw hands the inner driver's own connection, already on the shard's
// schema, for what database/sql cannot express.
func ExampleRaw() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	err = hv.Raw(ctx, db, 3, func(driverConn any) error {
		conn := driverConn.(*stdlib.Conn).Conn() // *pgx.Conn
		n, err := conn.CopyFrom(ctx, pgx.Identifier{"notes"}, []string{"id", "body"},
			pgx.CopyFromRows([][]any{{300, "copied"}, {301, "copied"}}))
		fmt.Println("copied", n, "rows")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	var n int
	if err := db.QueryRowContext(hv.WithShard(ctx, 3), "SELECT count(*) FROM notes WHERE body = 'copied'").Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println(n, "rows on shard 3")
	// Output:
	// copied 2 rows
	// 2 rows on shard 3
}

// ParseHstore reads hstore text exactly as PostgreSQL does; a nil value is
// SQL NULL.
func ExampleParseHstore() {
	h, err := hv.ParseHstore(`a=>1, "b c"=>"x\"y", d=>NULL`)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(*h["a"], *h["b c"], h["d"] == nil)
	v, _ := h.Value()
	fmt.Println(v)

	_, err = hv.ParseHstore(`a=>b c`)
	fmt.Println(err)
	// Output:
	// 1 x"y true
	// "a"=>"1", "b c"=>"x\"y", "d"=>NULL
	// hv: hstore: syntax error at position 5: expected "," or end of input after a value
}

// With WithPartialResults a failing shard does not fail the fan-out: the
// other shards' rows come back and the report says what failed.
func ExampleWithPartialResults() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	var report hv.FanOutReport
	ctx := hv.WithPartialResults(hv.WithShards(context.Background(), 2, 99, 4), &report)
	rows, err := db.QueryContext(ctx, "SELECT current_schema()")
	if err != nil {
		log.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	rows.Close()
	fmt.Println(n, "rows")
	for shard, err := range report.Failed() {
		fmt.Println("shard", shard, "failed:", errors.Is(err, hv.ErrUnknownShard))
	}
	// Output:
	// 2 rows
	// shard 99 failed: true
}

// WithKey routes by the shard inside a Key; ShardFromContext reads the
// shard a context carries.
func ExampleWithKey() {
	key, err := hv.NewKey(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), 11, 7)
	if err != nil {
		log.Fatal(err)
	}
	ctx := hv.WithKey(context.Background(), key)
	shard, ok := hv.ShardFromContext(ctx)
	fmt.Println(shard, ok)
	_, ok = hv.ShardFromContext(context.Background())
	fmt.Println(ok)
	// Output:
	// 11 true
	// false
}

// shard_max keeps a hot shard from taking every connection of its host:
// here shard 1 may hold one of the host's two, so its second statement
// waits and times out while shard 2 is still served.
func ExampleConfig_shardMax() {
	cfg, err := hv.ParseConfig(os.Getenv("HV_DSN") + "; pool_max=2 shard_max=1 pool_block_timeout=100ms")
	if err != nil {
		log.Fatal(err)
	}
	c, err := hv.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	ctx := context.Background()

	held, err := db.Conn(hv.WithShard(ctx, 1)) // holds shard 1's one connection
	if err != nil {
		log.Fatal(err)
	}
	defer held.Close()
	if err := held.PingContext(ctx); err != nil {
		log.Fatal(err)
	}

	_, err = db.ExecContext(hv.WithShard(ctx, 1), "SELECT 1")
	fmt.Println("shard 1:", errors.Is(err, hv.ErrPoolTimeout))
	_, err = db.ExecContext(hv.WithShard(ctx, 2), "SELECT 1")
	fmt.Println("shard 2:", err)
	// Output:
	// shard 1: true
	// shard 2: <nil>
}
