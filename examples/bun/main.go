// Command bun shows bun on top of hv: bun.NewDB wraps hv's *sql.DB, and
// every query is routed to its logical shard by the context passed to Exec,
// Scan or RunInTx.
//
//	HV_DSN='shards=1-9 host=127.0.0.1 user=postgres dbname=a; shards=9-17 host=127.0.0.1 port=5433 user=postgres dbname=b' go run .
//
// It creates each shard's schema and users table when missing, stores a few
// users on the shard their e-mail address hashes to, reads, updates and
// deletes them by key, and lists all users of the fleet with one fan-out
// query.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"os"
	"time"

	"github.com/hypervault/hv"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// User is stored on one logical shard. Its ID is an hv.Key, which carries
// that shard: hv.WithKey(ctx, u.ID) routes every later statement about it.
type User struct {
	bun.BaseModel `bun:"table:users"`

	ID        hv.Key    `bun:"id,pk"`
	Email     string    `bun:"email,notnull,unique"`
	Name      string    `bun:"name"`
	CreatedAt time.Time `bun:"created_at,notnull,default:current_timestamp"`
}

func main() {
	dsn := os.Getenv("HV_DSN")
	if dsn == "" {
		log.Fatal("set HV_DSN to an hv DSN, e.g. 'shards=1-9 host=db1 user=app dbname=app; shards=9-17 host=db2 user=app dbname=app'")
	}
	if err := run(context.Background(), dsn, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// shardFor picks the logical shard a new user lives on: a hash of the
// e-mail address over the shards the fleet owns.
func shardFor(shards []int, email string) int {
	h := fnv.New32a()
	h.Write([]byte(email))
	return shards[h.Sum32()%uint32(len(shards))]
}

// fleetShards lists the logical shards every host of cfg owns, in order.
func fleetShards(cfg *hv.Config) []int {
	var shards []int
	for _, h := range cfg.Hosts {
		for n := range h.Shards.All() {
			shards = append(shards, n)
		}
	}
	return shards
}

// createTables creates the schema and the users table of every shard when
// missing. The unqualified table name resolves in the shard's schema: hv
// sets search_path to it alone.
func createTables(ctx context.Context, db *bun.DB, connector *hv.Connector, shards []int) error {
	for _, n := range shards {
		schema, _, err := connector.SchemaFor(n)
		if err != nil {
			return err
		}
		sctx := hv.WithShard(ctx, n)
		if _, err := db.ExecContext(sctx, "CREATE SCHEMA IF NOT EXISTS ?", bun.Ident(schema)); err != nil {
			return fmt.Errorf("shard %d: %w", n, err)
		}
		if _, err := db.NewCreateTable().Model((*User)(nil)).IfNotExists().Exec(sctx); err != nil {
			return fmt.Errorf("shard %d: %w", n, err)
		}
	}
	return nil
}

// run is the whole example; main runs it with HV_DSN and standard output.
func run(ctx context.Context, dsn string, out io.Writer) error {
	cfg, err := hv.ParseConfig(dsn)
	if err != nil {
		return err
	}
	connector, err := hv.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := bun.NewDB(sql.OpenDB(connector), pgdialect.New())
	defer db.Close()

	shards := fleetShards(cfg)
	if err := createTables(ctx, db, connector, shards); err != nil {
		return err
	}

	emails := []string{"ada@example.com", "barbara@example.com", "donald@example.com"}
	// Fan-out exec: remove what an earlier run left, on every shard at once.
	if _, err := db.NewDelete().Model((*User)(nil)).Where("email IN (?)", bun.In(emails)).Exec(hv.WithAllShards(ctx)); err != nil {
		return err
	}

	// Create: the shard comes from the e-mail address, the key carries it.
	start := time.Now()
	var users []User
	for i, email := range emails {
		shard := shardFor(shards, email)
		// A real application makes keys with a sequence per shard (or the
		// shard's next_id() default); a counter is enough here.
		id, err := hv.NewKey(start, shard, i)
		if err != nil {
			return err
		}
		u := User{ID: id, Email: email, Name: "user " + email}
		if _, err := db.NewInsert().Model(&u).Exec(hv.WithKey(ctx, id)); err != nil {
			return fmt.Errorf("creating %s: %w", email, err)
		}
		schema, host, _ := connector.SchemaFor(shard)
		fmt.Fprintf(out, "created %s on shard %d (%s on %s)\n", email, shard, schema, host)
		users = append(users, u)
	}

	// Read and update by key, in a transaction pinned to the key's shard.
	kctx := hv.WithKey(ctx, users[0].ID)
	err = db.RunInTx(kctx, nil, func(ctx context.Context, tx bun.Tx) error {
		u := User{ID: users[0].ID}
		if err := tx.NewSelect().Model(&u).WherePK().For("UPDATE").Scan(ctx); err != nil {
			return err
		}
		u.Name = "Ada Lovelace"
		if _, err := tx.NewUpdate().Model(&u).Column("name").WherePK().Exec(ctx); err != nil {
			return err
		}
		fmt.Fprintf(out, "renamed %s to %q\n", u.Email, u.Name)
		return nil
	})
	if err != nil {
		return err
	}

	// Delete by key.
	gone := users[2]
	dctx := hv.WithKey(ctx, gone.ID)
	if _, err := db.NewDelete().Model(&gone).WherePK().Exec(dctx); err != nil {
		return err
	}
	err = db.NewSelect().Model(&User{ID: gone.ID}).WherePK().Scan(dctx)
	fmt.Fprintf(out, "deleted %s: %v\n", gone.Email, errors.Is(err, sql.ErrNoRows))

	// Fan-out: one query over every shard, merged by key (creation order).
	all := hv.WithMergeOrder(hv.WithAllShards(ctx), hv.Asc("id"))
	var everyone []User
	if err := db.NewSelect().Model(&everyone).Order("id").Scan(all); err != nil {
		return err
	}
	for _, u := range everyone {
		fmt.Fprintf(out, "fleet: %s (%s) on shard %d\n", u.Email, u.Name, u.ID.ShardID())
	}
	return nil
}
