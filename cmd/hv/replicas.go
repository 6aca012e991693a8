package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/hypervault/hv"
)

// replicaPollWait bounds how long status waits for every replica's first
// poll: a replica that does not answer is down after one poll timeout.
const replicaPollWait = 3 * time.Second

// statusReplicas prints one line per streaming replica (up or down, lag,
// replayed WAL position, reads served, fallbacks to the primary) once every
// replica has been polled, and returns a problem per down replica.
func statusReplicas(ctx context.Context, w io.Writer, c *hv.Connector) []string {
	deadline := time.Now().Add(replicaPollWait)
	for !replicasPolled(c.Stats()) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	var problems []string
	for _, h := range c.Stats() {
		printReplicas(w, h)
		for _, r := range h.Replicas {
			if r.Down {
				problems = append(problems, fmt.Sprintf("replica %s of host %s is down", r.Host, h.Host))
			}
		}
	}
	return problems
}

// replicasPolled reports whether every replica has been polled once.
func replicasPolled(stats []hv.HostStats) bool {
	for _, h := range stats {
		for _, r := range h.Replicas {
			if r.Polls == 0 {
				return false
			}
		}
	}
	return true
}

// printReplicas prints host h's replicas, one line each.
func printReplicas(w io.Writer, h hv.HostStats) {
	for _, r := range h.Replicas {
		state := fmt.Sprintf("up, lag %v, replayed %s", r.Lag.Round(time.Millisecond), r.ReplayLSN)
		if r.Down {
			state = "DOWN"
		}
		fmt.Fprintf(w, "replica %s of %s (shards %s): %s; reads %d, fallbacks %d, open %d\n",
			r.Host, h.Host, shardSpan(h.Shards), state, r.Reads, r.Fallbacks, r.DB.OpenConnections)
	}
}
