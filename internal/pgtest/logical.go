package pgtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgcluster"
)

// LogicalSettings are the server settings logical replication needs, for
// clusters that sources and targets of shard moves run on.
var LogicalSettings = map[string]string{
	"wal_level":                         "logical",
	"max_replication_slots":             "20",
	"max_wal_senders":                   "20",
	"max_logical_replication_workers":   "8",
	"max_sync_workers_per_subscription": "2",
	// The launcher retries starting workers this often (default 5s).
	"wal_retrieve_retry_interval": "100ms",
}

var (
	logicalMu      sync.Mutex
	logical        []*Server
	logicalFailure error
)

// LogicalServers returns n distinct throwaway clusters started with
// wal_level=logical (LogicalSettings), shared by the tests of the process
// and destroyed by Main, skipping or failing tb when they cannot be had.
func LogicalServers(tb testing.TB, n int) []*Server {
	tb.Helper()
	logicalMu.Lock()
	defer logicalMu.Unlock()
	for len(logical) < n && logicalFailure == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		c, err := pgcluster.Start(ctx, pgcluster.Options{Settings: LogicalSettings})
		cancel()
		if err != nil {
			logicalFailure = err
			break
		}
		mu.Lock()
		owned = append(owned, c)
		mu.Unlock()
		logical = append(logical, &Server{keywords: c.Keywords(), cluster: c})
	}
	if logicalFailure != nil {
		unavailable(tb, logicalFailure)
	}
	return append([]*Server(nil), logical[:n]...)
}
