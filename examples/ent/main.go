// Command ent runs ent's schema migration on every shard of an hv fleet,
// through a *sql.DB bound to each shard (hv.Connector.ForShard):
//
//	HV_DSN='shards=1-9 host=127.0.0.1 user=postgres dbname=a; shards=9-17 host=127.0.0.1 port=5433 user=postgres dbname=b' go run .
//
// ent's migration (what a generated client.Schema.Create runs:
// schema.NewMigrate(driver).Create(ctx, migrate.Tables...)) inspects the
// database with context.Background() ("scanning system variables"), which
// a plain hv *sql.DB refuses for naming no shard; on a ForShard *sql.DB it
// runs on the shard, and inspects and creates the shard's own tables.
//
// Tables below is what ent generates into ent/migrate/schema.go for this
// schema (kept by hand here, so that the example needs no code
// generation):
//
//	func (Doc) Fields() []ent.Field {
//		return []ent.Field{
//			field.String("title"),
//			field.Other("attrs", hv.Hstore{}).SchemaType(map[string]string{dialect.Postgres: "hstore"}),
//		}
//	}
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log"
	"os"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"entgo.io/ent/dialect/sql/schema"
	"entgo.io/ent/schema/field"
	"github.com/hypervault/hv"
)

var (
	// DocsColumns are the columns of the docs table; attrs is an hstore,
	// written unqualified as an ent SchemaType: hstore lives in hv_ext, on
	// every shard's search_path.
	DocsColumns = []*schema.Column{
		{Name: "id", Type: field.TypeInt, Increment: true},
		{Name: "title", Type: field.TypeString},
		{Name: "attrs", Type: field.TypeOther, SchemaType: map[string]string{dialect.Postgres: "hstore"}},
	}
	// DocsTable is the docs table.
	DocsTable = &schema.Table{
		Name:       "docs",
		Columns:    DocsColumns,
		PrimaryKey: []*schema.Column{DocsColumns[0]},
	}
	// Tables are the schema's tables, as ent/migrate.Tables.
	Tables = []*schema.Table{DocsTable}
)

func main() {
	if err := run(context.Background(), os.Getenv("HV_DSN"), os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run creates every shard's schema and hstore in hv_ext
// (Datastore.CreateShards), then runs ent's migration on every shard.
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
			if err := migrateShard(ctx, c, n); err != nil {
				return &hv.ShardError{Shard: n, Host: h.Host, Err: err}
			}
			fmt.Fprintf(out, "shard %d: migrated\n", n)
		}
	}
	return nil
}

// migrateShard runs ent's schema migration on shard n, as a generated
// client.Schema.Create(ctx) does.
func migrateShard(ctx context.Context, c *hv.Connector, n int) error {
	db := sql.OpenDB(c.ForShard(n)) // closing it leaves the fleet's pools open
	defer db.Close()
	drv := entsql.OpenDB(dialect.Postgres, db)
	m, err := schema.NewMigrate(drv)
	if err != nil {
		return err
	}
	return m.Create(ctx, Tables...)
}
