package hv

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"
)

// A *sql.DB of ForShard runs every statement on its shard, whatever the
// context, refuses statements naming another shard, and closing it leaves
// the Connector's pools open.
func TestForShard(t *testing.T) {
	for _, drv := range []string{"pgx", "postgres"} {
		t.Run(drv, func(t *testing.T) {
			f := newTestFleet(t, fleetOptions{driver: drv})
			_, c, db := f.connect(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for _, shard := range []int{5, 12} {
				sdb := sql.OpenDB(c.ForShard(shard))
				want := f.expect(t, shard)
				got, err := whereAmI(context.Background(), sdb)
				if err != nil || got != want {
					t.Fatalf("shard %d, context.Background(): %+v, %v; want %+v", shard, got, err, want)
				}
				if got, err := whereAmI(WithShard(ctx, shard), sdb); err != nil || got != want {
					t.Fatalf("shard %d named again: %+v, %v", shard, got, err)
				}
				if _, err := sdb.ExecContext(WithShard(ctx, shard+1), "SELECT 1"); !errors.Is(err, ErrShardMismatch) {
					t.Errorf("statement for another shard: %v", err)
				}
				if _, err := sdb.QueryContext(WithAllShards(ctx), "SELECT 1"); !errors.Is(err, ErrFanOutPinned) {
					t.Errorf("fan-out: %v", err)
				}
				// Transactions, pinned Conns and Ping stay on the shard.
				tx, err := sdb.BeginTx(context.Background(), nil)
				if err != nil {
					t.Fatal(err)
				}
				if got, err := whereAmI(context.Background(), tx); err != nil || got != want {
					t.Errorf("tx: %+v, %v", got, err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				cn, err := sdb.Conn(WithShard(ctx, shard))
				if err != nil {
					t.Fatal(err)
				}
				if got, err := whereAmI(context.Background(), cn); err != nil || got != want {
					t.Errorf("conn: %+v, %v", got, err)
				}
				cn.Close()
				if err := sdb.PingContext(context.Background()); err != nil {
					t.Errorf("ping: %v", err)
				}
				if err := sdb.Close(); err != nil {
					t.Fatal(err)
				}
			}
			// The Connector's pools are still open.
			if got, err := whereAmI(WithShard(ctx, 9), db); err != nil || got != f.expect(t, 9) {
				t.Fatalf("after closing the shard DBs: %+v, %v", got, err)
			}
			for _, bad := range []int{40, -1, MaxShard + 1} {
				sdb := sql.OpenDB(c.ForShard(bad))
				if _, err := sdb.ExecContext(context.Background(), "SELECT 1"); !errors.Is(err, ErrUnknownShard) {
					t.Errorf("ForShard(%d): %v", bad, err)
				}
				sdb.Close()
			}
			c.Close()
			sdb := sql.OpenDB(c.ForShard(5))
			if _, err := sdb.ExecContext(context.Background(), "SELECT 1"); !errors.Is(err, ErrClosed) {
				t.Errorf("after Close: %v", err)
			}
		})
	}
}
