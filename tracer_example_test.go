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

// printTracer prints each statement when it ends: where it ran and whether
// it failed.
type printTracer struct{}

func (printTracer) TraceStatementStart(ctx context.Context, _ hv.Statement) context.Context {
	return ctx
}

func (printTracer) TraceStatementEnd(_ context.Context, end hv.StatementEnd) {
	fmt.Printf("%s on shard %d (%s), failed: %v\n", end.Op, end.Shard, end.Schema, end.Err != nil)
}

func ExampleTracer() {
	cfg, err := hv.ParseConfig(os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	cfg.Tracer = printTracer{}
	c, err := hv.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()

	ctx := hv.WithShard(context.Background(), 12)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO notes VALUES (7, 'traced')"); err != nil {
		log.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		log.Fatal(err)
	}
	_, err = db.ExecContext(ctx, "SELECT * FROM no_such_table")
	var se *hv.ShardError
	fmt.Println("a *ShardError of shard 12:", errors.As(err, &se) && se.Shard == 12)
	// Output:
	// begin on shard 12 (shard0012), failed: false
	// exec on shard 12 (shard0012), failed: false
	// rollback on shard 12 (shard0012), failed: false
	// exec on shard 12 (shard0012), failed: true
	// a *ShardError of shard 12: true
}
