package main

import (
	"strings"
	"testing"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
)

// hv init, rebalance -dry-run onto a new empty host, hv move of one shard,
// status showing where it lives, and -abort and -cleanup.
func TestMoveRebalanceCLI(t *testing.T) {
	servers := pgtest.LogicalServers(t, 2)
	a, b, c := servers[0].CreateDatabase(t), servers[1].CreateDatabase(t), servers[1].CreateDatabase(t)
	dsn := "shards=1-5 " + a + "; shards=5-9 " + b + "; shards='' " + c
	t.Setenv("HV_DSN", dsn)
	cfg, err := hv.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{cfg.Hosts[0].Name(), cfg.Hosts[1].Name(), cfg.Hosts[2].Name()}
	if code, _, errOut := runCLI(t, "init"); code != 0 {
		t.Fatalf("init: %s", errOut)
	}
	code, out, errOut := runCLI(t, "rebalance", "-dry-run")
	if code != 0 || !strings.Contains(out, "shard 4 from "+names[0]+" to "+names[2]) || !strings.Contains(out, "shard 8 from "+names[1]+" to "+names[2]) {
		t.Fatalf("rebalance -dry-run: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, "move", "-shard", "3"); code != 2 || !strings.Contains(errOut, "-to NAME") {
		t.Fatalf("move without -to: %d %s", code, errOut)
	}
	code, out, errOut = runCLI(t, "move", "-shard", "3", "-to", names[2], "-checksum")
	if code != 0 || !strings.Contains(out, "shard 3 moved from "+names[0]+" to "+names[2]) || !strings.Contains(errOut, "shard 3: cutover") {
		t.Fatalf("move: %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "status")
	if !strings.Contains(out, "shard 3 lives on "+names[2]+" (the DSN says "+names[0]+")") {
		t.Fatalf("status: %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := runCLI(t, "move", "-abort", "-shard", "3"); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("move -abort: %d %s %s", code, out, errOut)
	}
	if code, out, errOut := runCLI(t, "move", "-cleanup", "-older-than", "0s"); code != 0 || !strings.Contains(out, "shard0003_moved_") {
		t.Fatalf("move -cleanup: %d %s %s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "move", "-shard", "3", "-to", "elsewhere:1/x")
	if code != 1 || !strings.Contains(errOut, `target host "elsewhere:1/x" is not in the configuration`) {
		t.Fatalf("move to an unknown host: %d %s", code, errOut)
	}
}
