package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hypervault/hv"
)

func TestStatusWatch(t *testing.T) {
	dsn := twoServerDSN(t)
	t.Setenv("HV_DSN", dsn)
	if code, out, errOut := runCLI(t, "init"); code != 0 {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	for range 3 {
		if code, _, errOut := runCLI(t, "put", "-shard", "12", "-kind", "1", "a=b"); code != 0 {
			t.Fatalf("put: exit %d: %s", code, errOut)
		}
	}
	// The servers publish a backend's table statistics when it is idle or
	// exits, soon but not at once: poll.
	hottest := "\n  shard 12  host "
	var out string
	deadline := time.Now().Add(time.Minute)
	for {
		var code int
		var errOut string
		code, out, errOut = runCLI(t, "status", "-watch", "-count", "1", "-top", "3")
		if code != 0 {
			t.Fatalf("status -watch: exit %d\n%s%s", code, out, errOut)
		}
		if i := strings.Index(out, "hottest shards"); i >= 0 && strings.HasPrefix(out[strings.Index(out[i:], "\n")+i:], hottest) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shard 12 never the hottest:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}

	code, out, errOut := runCLI(t, "status", "-watch", "-interval", "20ms", "-count", "2", "-top", "2")
	if code != 0 {
		t.Fatalf("status -watch: exit %d\n%s%s", code, out, errOut)
	}
	blocks := strings.Split(out, "\n\n")
	if len(blocks) != 2 || strings.Contains(out, "\x1b[") {
		t.Fatalf("want two plain blocks a blank line apart:\n%q", out)
	}
	for i, b := range blocks {
		if !strings.HasPrefix(b, "hv status -watch  ") || !strings.Contains(b, "every 20ms") ||
			strings.Count(b, "  up, ping ") != 2 || !strings.Contains(b, "shards 1-9  up") || !strings.Contains(b, "shards 9-17  up") {
			t.Errorf("block %d:\n%s", i+1, b)
		}
	}
	if !strings.Contains(blocks[0], "hottest shards (table scans + rows written since the servers' statistics were reset):"+hottest) ||
		strings.Count(blocks[0], "\n  shard ") != 2 || strings.Contains(blocks[0], "/s)") {
		t.Errorf("first block:\n%s", blocks[0])
	}
	// The second counts since the first: the watch's own queries only
	// read catalogs, so no shard is hot, and the commits come with rates.
	if !strings.Contains(blocks[1], "/s)") || !strings.Contains(blocks[1], "since the last refresh") {
		t.Errorf("second block:\n%s", blocks[1])
	}

	for _, bad := range [][]string{
		{"status", "-interval", "1s"},
		{"status", "-watch", "-interval", "0s"},
		{"status", "-watch", "-top", "-1"},
		{"status", "extra"},
	} {
		if code, _, errOut := runCLI(t, bad...); code != 2 || !strings.Contains(errOut, "usage:") {
			t.Errorf("%q: exit %d, %q", bad, code, errOut)
		}
	}
}

// TestPrintSample checks a refresh's figures from made-up samples: rates
// over the interval, the hottest shards in order, a host that is down.
func TestPrintSample(t *testing.T) {
	at := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	a := hv.HostStats{Host: "a:5432/db", Shards: hv.Shards(1, 3)}
	b := hv.HostStats{Host: "b:5432/db", Shards: hv.Shards(3, 5)}
	prev := sample{at: at, hosts: []hostSample{
		{host: a, commits: 100, shards: map[int]shardSample{1: {scans: 10, writes: 5}, 2: {scans: 1}}},
		{host: b, commits: 7, shards: map[int]shardSample{3: {scans: 3}}},
	}}
	cur := sample{at: at.Add(2 * time.Second), hosts: []hostSample{
		{host: a, ping: time.Millisecond, conns: 3, active: 1, commits: 120,
			shards: map[int]shardSample{1: {scans: 12, writes: 5, rows: 9}, 2: {scans: 31, writes: 10, rows: 4}}},
		{host: b, err: errors.New("hv: connection refused")},
	}}
	var out strings.Builder
	printSample(&out, cur, prev, watchOptions{interval: 2 * time.Second, top: 5})
	want := `hv status -watch  2026-12-02T01:00:02Z  every 2s
host a:5432/db  shards 1-3  up, ping 1ms  connections 3 (active 1, idle in transaction 0)  commits 120 (+10.0/s)  rollbacks 0 (+0.0/s)
host b:5432/db  shards 3-5  DOWN: connection refused
hottest shards (table scans + rows written since the last refresh):
  shard 2  host a:5432/db  scans 31 (+15.0/s)  rows written 10 (+5.0/s)  live rows 4
  shard 1  host a:5432/db  scans 12 (+1.0/s)  rows written 5 (+0.0/s)  live rows 9
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
