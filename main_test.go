package hv

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, setupExampleFleet) }

// setupExampleFleet builds the fleet the examples run against and puts its
// DSN in HV_DSN: shards 1-8 on one PostgreSQL server and 9-16 on another,
// each shard a schema holding a table notes(id int, body text).
func setupExampleFleet() (cleanup func(), err error) {
	servers, err := pgtest.Acquire(2)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var drops []func() error
	cleanup = func() {
		for _, drop := range drops {
			_ = drop()
		}
	}
	ranges := []ShardRange{{1, 9}, {9, 17}}
	var segs []string
	for i, s := range servers {
		kw, drop, err := s.NewDatabase(ctx)
		if err != nil {
			cleanup()
			return nil, err
		}
		drops = append(drops, drop)
		var ddl strings.Builder
		for sh := ranges[i].Start; sh < ranges[i].End; sh++ {
			fmt.Fprintf(&ddl, "CREATE SCHEMA shard%04[1]d; CREATE TABLE shard%04[1]d.notes (id int, body text);", sh)
		}
		if err := execOn(ctx, kw, ddl.String()); err != nil {
			cleanup()
			return nil, err
		}
		segs = append(segs, fmt.Sprintf("shards=%s %s", ranges[i], kw))
	}
	if err := os.Setenv("HV_DSN", strings.Join(segs, "; ")); err != nil {
		cleanup()
		return nil, err
	}
	return cleanup, nil
}

// execOn runs script on the database named by libpq keywords kw.
func execOn(ctx context.Context, kw, script string) error {
	db, err := sql.Open("pgx", kw)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, script); err != nil {
		return fmt.Errorf("%s: %w", kw, err)
	}
	return nil
}
