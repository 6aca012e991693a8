package hv

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
)

// lib/pq's COPY (tx.Prepare(pq.CopyIn(...))) works through hv with
// driver=postgres and lands on the transaction's shard; outside a
// transaction, and with driver=pgx, Prepare fails at once saying what to
// use.
func TestCopyInLibPQ(t *testing.T) {
	f := newTestFleet(t, fleetOptions{driver: "postgres"})
	db := f.open(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, shard := range []int{3, 11} {
		sctx := WithShard(ctx, shard)
		tx, err := db.BeginTx(sctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		stmt, err := tx.PrepareContext(sctx, pq.CopyIn("t", "id", "shard", "note"))
		if err != nil {
			t.Fatalf("shard %d: Prepare(CopyIn): %v", shard, err)
		}
		for i := 1; i <= 100; i++ {
			if _, err := stmt.ExecContext(sctx, i, shard, "copied"); err != nil {
				t.Fatalf("row %d: %v", i, err)
			}
		}
		if _, err := stmt.ExecContext(sctx); err != nil {
			t.Fatalf("ending the COPY: %v", err)
		}
		if err := stmt.Close(); err != nil {
			t.Fatal(err)
		}
		// The transaction goes on on the same connection after the COPY.
		var n int
		if err := tx.QueryRowContext(sctx, "SELECT count(*) FROM t WHERE note = 'copied' AND shard = $1", shard).Scan(&n); err != nil || n != 100 {
			t.Fatalf("shard %d: %d rows in the transaction, %v", shard, n, err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for i, shard := range map[int]int{0: 3, 1: 11} {
		var n int
		q := "SELECT count(*) FROM shard" + map[int]string{3: "0003", 11: "0011"}[shard] + ".t WHERE note = 'copied'"
		if err := directDB(t, f, i).QueryRow(q).Scan(&n); err != nil || n != 100 {
			t.Errorf("shard %d holds %d copied rows, %v", shard, n, err)
		}
	}
	var total int
	rows, err := db.QueryContext(WithAllShards(ctx), "SELECT count(*) FROM t WHERE note = 'copied'")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		total += n
	}
	rows.Close()
	if total != 200 {
		t.Errorf("%d copied rows in the fleet, want 200", total)
	}

	// A failed row fails the COPY with its shard and host.
	tx, err := db.BeginTx(WithShard(ctx, 4), nil)
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := tx.Prepare(pq.CopyIn("t", "id", "shard", "note"))
	if err != nil {
		t.Fatal(err)
	}
	_, err1 := stmt.Exec(0, 4, "duplicate of the seed row")
	_, err2 := stmt.Exec()
	if err := errors.Join(err1, err2); err == nil || !strings.Contains(err.Error(), "shard 4 on host") {
		t.Errorf("duplicate key through COPY: %v", err)
	}
	stmt.Close()
	tx.Rollback()

	// Outside a transaction: at once, saying what to use.
	if _, err := db.PrepareContext(WithShard(ctx, 3), pq.CopyIn("t", "id")); !errors.Is(err, errCopyNeedsTx) {
		t.Errorf("Prepare(CopyIn) outside a transaction: %v", err)
	}
}

func TestCopyInPgxRefused(t *testing.T) {
	f := newTestFleet(t, fleetOptions{})
	db := f.open(t)
	ctx := WithShard(context.Background(), 3)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	_, err = tx.PrepareContext(ctx, pq.CopyIn("t", "id"))
	if !errors.Is(err, errCopyPgx) || !strings.Contains(err.Error(), "hv.Raw") {
		t.Errorf("Prepare(CopyIn) with pgx: %v", err)
	}
	// The transaction is still usable.
	if _, err := tx.ExecContext(ctx, "SELECT 1"); err != nil {
		t.Error(err)
	}
}
