package pgcluster

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// StartStandby starts a streaming replica of primary in a fresh temporary
// directory: pg_basebackup -R (which writes standby.signal and
// primary_conninfo) over a physical replication slot of its own on the
// primary, so that the primary keeps the WAL the standby has yet to
// receive. The standby gets primary's settings and opts.Settings on top,
// and listens on opts.Port (0: a free one). It is a Cluster like any
// other: Stop, Start, Destroy; Promote turns it into a primary.
//
// Destroying the standby leaves its slot on the primary, which then keeps
// WAL for it: destroy the primary too (tests do both).
func StartStandby(ctx context.Context, primary *Cluster, opts Options) (*Cluster, error) {
	primary.mu.Lock()
	settings := make(map[string]string, len(primary.settings)+len(opts.Settings))
	for k, v := range primary.settings {
		settings[k] = v
	}
	port := primary.port
	primary.mu.Unlock()
	for k, v := range opts.Settings {
		settings[k] = v
	}
	opts.Settings = settings
	return start(ctx, opts, func(c *Cluster, ctx context.Context) error {
		slot := "hv_standby_" + strings.ReplaceAll(filepath.Base(c.dir), "-", "_")
		out, err := c.run(ctx, filepath.Join(c.binDir, "pg_basebackup"),
			"-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "postgres",
			"-D", c.dataDir, "-R", "-X", "stream", "-c", "fast",
			"-C", "-S", strings.ToLower(slot), "--no-sync")
		if err != nil {
			return fmt.Errorf("pgcluster: pg_basebackup from port %d: %v: %s", port, err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// Promote ends recovery on a standby (pg_ctl promote -w): it becomes a
// primary that accepts writes. It fails on a cluster that is not a standby
// or not running.
func (c *Cluster) Promote(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed || !c.running {
		return fmt.Errorf("pgcluster: promote: cluster not running")
	}
	if out, err := c.pgctl(ctx, "promote", "-D", c.dataDir, "-w", "-t", "60"); err != nil {
		return fmt.Errorf("pgcluster: pg_ctl promote: %v: %s%s", err, strings.TrimSpace(string(out)), c.logTail(0))
	}
	return nil
}
