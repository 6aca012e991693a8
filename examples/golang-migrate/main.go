// Command golang-migrate runs golang-migrate's migrations on every shard of
// an hv fleet, through a *sql.DB bound to each shard
// (hv.Connector.ForShard):
//
//	HV_DSN='shards=1-9 host=127.0.0.1 user=postgres dbname=a; shards=9-17 host=127.0.0.1 port=5433 user=postgres dbname=b' go run .
//
// golang-migrate's postgres.WithInstance runs statements with
// context.Background() (SELECT CURRENT_DATABASE(), CURRENT_SCHEMA()), which
// a plain hv *sql.DB refuses for naming no shard; on a ForShard *sql.DB
// they run on the shard. Its version table, schema_migrations, and its
// advisory lock (a hash of database and schema) are then per shard.
package main

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database/postgres"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/hypervault/hv"
)

//go:embed migrations/*.sql
var migrations embed.FS

func main() {
	if err := run(context.Background(), os.Getenv("HV_DSN"), os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run migrates every shard of the fleet in dsn to the latest version,
// creating each shard's schema and hstore in hv_ext (Datastore.CreateShards
// does both) first.
func run(ctx context.Context, dsn string, out io.Writer) error {
	ds, err := hv.Open(dsn)
	if err != nil {
		return err
	}
	defer ds.Close()
	if err := ds.CreateShards(ctx); err != nil {
		return err
	}
	c := ds.Connector()
	for _, h := range c.Stats() {
		for n := range h.Shards.All() {
			v, err := migrateShard(c, n)
			if err != nil {
				return &hv.ShardError{Shard: n, Host: h.Host, Err: err}
			}
			fmt.Fprintf(out, "shard %d: version %d\n", n, v)
		}
	}
	return nil
}

// migrateShard brings shard n up to the latest migration and returns its
// version.
func migrateShard(c *hv.Connector, n int) (uint, error) {
	db := sql.OpenDB(c.ForShard(n)) // closing it leaves the fleet's pools open
	defer db.Close()
	driver, err := postgres.WithInstance(db, &postgres.Config{})
	if err != nil {
		return 0, err
	}
	src, err := iofs.New(migrations, "migrations")
	if err != nil {
		return 0, err
	}
	m, err := migrate.NewWithInstance("iofs", src, "postgres", driver)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return 0, err
	}
	v, _, err := m.Version()
	return v, err
}
