package pgcluster

import (
	"context"
	"testing"
	"time"
)

// TestStandby replicates a table to a standby, reads it there, refuses a
// write there, and promotes it.
func TestStandby(t *testing.T) {
	needBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startCluster(t, Options{})
	s, err := StartStandby(ctx, p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destroy() })
	pc, err := connect(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	if _, err := pc.Exec(ctx, "CREATE TABLE t(x int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	sc, err := connect(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close(ctx)
	for deadline := time.Now().Add(30 * time.Second); ; {
		var x int
		if err := sc.QueryRow(ctx, "SELECT x FROM t").Scan(&x); err == nil && x == 42 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the row never reached the standby")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := sc.Exec(ctx, "INSERT INTO t VALUES (1)"); err == nil {
		t.Fatal("a write on the standby succeeded")
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatalf("write after promote: %v", err)
	}
}
