// Command gorm shows GORM on top of hv: one *gorm.DB over a fleet of
// PostgreSQL servers, every query routed to its logical shard by the
// context given to WithContext.
//
//	HV_DSN='shards=1-9 host=127.0.0.1 user=postgres dbname=a; shards=9-17 host=127.0.0.1 port=5433 user=postgres dbname=b' go run .
//
// It creates each shard's schema when missing, migrates the users table on
// every shard, stores a few users on the shard their e-mail address hashes
// to, reads, updates and deletes them by key, and lists all users of the
// fleet with one fan-out query.
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
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// User is stored on one logical shard. Its ID is an hv.Key, which carries
// that shard: hv.WithKey(ctx, u.ID) routes every later statement about it.
type User struct {
	ID        hv.Key `gorm:"primaryKey;autoIncrement:false"`
	Email     string `gorm:"uniqueIndex;not null"`
	Name      string
	CreatedAt time.Time
	UpdatedAt time.Time
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

// openGORM opens GORM on an hv *sql.DB. GORM only needs the *sql.DB: the
// postgres dialector generates PostgreSQL SQL, and hv routes it.
//
// DriverName tells the dialector which driver hv uses underneath ("pgx" or
// "postgres"). It matters: for pgx (or when unset) GORM's migrator passes
// pgx.QueryExecModeSimpleProtocol as an extra first argument of one query,
// which hv hands through to pgx, but which lib/pq would count as a
// parameter ("got 2 parameters but the statement requires 1").
func openGORM(sqlDB *sql.DB, innerDriver string, cfg *gorm.Config) (*gorm.DB, error) {
	return gorm.Open(postgres.New(postgres.Config{Conn: sqlDB, DriverName: innerDriver}), cfg)
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

// migrate creates the schema of every shard if needed and migrates models
// on each. Each statement runs on the shard named by the context, so GORM's
// migrator sees only that shard's schema: it looks tables up with
// table_schema = CURRENT_SCHEMA(), which is the shard's schema.
func migrate(ctx context.Context, db *gorm.DB, connector *hv.Connector, shards []int, models ...any) error {
	for _, n := range shards {
		schema, _, err := connector.SchemaFor(n)
		if err != nil {
			return err
		}
		sctx := hv.WithShard(ctx, n)
		if err := db.WithContext(sctx).Exec(`CREATE SCHEMA IF NOT EXISTS "` + schema + `"`).Error; err != nil {
			return fmt.Errorf("shard %d: %w", n, err)
		}
		if err := db.WithContext(sctx).AutoMigrate(models...); err != nil {
			return fmt.Errorf("migrating shard %d: %w", n, err)
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
	sqlDB := sql.OpenDB(connector)
	defer sqlDB.Close()

	db, err := openGORM(sqlDB, cfg.Driver, &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return err
	}
	shards := fleetShards(cfg)
	if err := migrate(ctx, db, connector, shards, &User{}); err != nil {
		return err
	}

	emails := []string{"ada@example.com", "barbara@example.com", "donald@example.com"}
	// Fan-out exec: remove what an earlier run left, on every shard at once.
	// GORM wraps writes in a transaction, and a transaction lives on one
	// shard: fan-out writes need SkipDefaultTransaction.
	fan := db.Session(&gorm.Session{SkipDefaultTransaction: true})
	if err := fan.WithContext(hv.WithAllShards(ctx)).Where("email IN ?", emails).Delete(&User{}).Error; err != nil {
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
		// GORM wraps Create in a transaction: hv pins it to the shard.
		if err := db.WithContext(hv.WithKey(ctx, id)).Create(&u).Error; err != nil {
			return fmt.Errorf("creating %s: %w", email, err)
		}
		schema, host, _ := connector.SchemaFor(shard)
		fmt.Fprintf(out, "created %s on shard %d (%s on %s)\n", email, shard, schema, host)
		users = append(users, u)
	}

	// Read and update by key.
	var ada User
	if err := db.WithContext(hv.WithKey(ctx, users[0].ID)).Where("id = ?", users[0].ID).Take(&ada).Error; err != nil {
		return err
	}
	if err := db.WithContext(hv.WithKey(ctx, ada.ID)).Model(&ada).Update("name", "Ada Lovelace").Error; err != nil {
		return err
	}
	fmt.Fprintf(out, "renamed %s to %q\n", ada.Email, ada.Name)

	// Delete by key.
	if err := db.WithContext(hv.WithKey(ctx, users[2].ID)).Delete(&User{}, "id = ?", users[2].ID).Error; err != nil {
		return err
	}
	err = db.WithContext(hv.WithKey(ctx, users[2].ID)).Where("id = ?", users[2].ID).Take(&User{}).Error
	fmt.Fprintf(out, "deleted %s: %v\n", users[2].Email, errors.Is(err, gorm.ErrRecordNotFound))

	// Fan-out: one query over every shard, merged by key (creation order).
	all := hv.WithMergeOrder(hv.WithAllShards(ctx), hv.Asc("id"))
	var everyone []User
	if err := db.WithContext(all).Order("id").Find(&everyone).Error; err != nil {
		return err
	}
	for _, u := range everyone {
		fmt.Fprintf(out, "fleet: %s (%s) on shard %d\n", u.Email, u.Name, u.ID.ShardID())
	}
	return nil
}
