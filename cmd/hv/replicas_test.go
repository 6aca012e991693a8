package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/ci"
	"github.com/hypervault/hv/internal/pgcluster"
)

// TestStatusReplicas: status shows a host's replicas, one up (with its lag
// and replayed position) and one that nothing answers (down, and a
// problem: exit 1).
func TestStatusReplicas(t *testing.T) {
	if _, err := pgcluster.BinDir(); err != nil {
		if ci.Required() {
			t.Fatalf("PostgreSQL binaries needed (CI=true): %v", err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Destroy() })
	s, err := pgcluster.StartStandby(ctx, p, pgcluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destroy() })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().(*net.TCPAddr).Port
	l.Close()
	t.Setenv("HV_DSN", fmt.Sprintf("shards=1-9 host=127.0.0.1 port=%d user=postgres dbname=postgres replicas=127.0.0.1:%d,127.0.0.1:%d",
		p.Port(), s.Port(), dead))
	if code, out, errOut := runCLI(t, "init"); code != 0 {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := runCLI(t, "status")
	up := fmt.Sprintf("replica 127.0.0.1:%d/postgres of 127.0.0.1:%d/postgres (shards 1-9): up, lag ", s.Port(), p.Port())
	down := fmt.Sprintf("replica 127.0.0.1:%d/postgres of 127.0.0.1:%d/postgres (shards 1-9): DOWN", dead, p.Port())
	if code != 1 || !strings.Contains(out, up) || !strings.Contains(out, down) || !strings.Contains(errOut, "is down") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}
}
