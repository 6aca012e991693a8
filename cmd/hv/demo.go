package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgcluster"
)

// demoCmd is the tour: a fleet (two throwaway servers, or the DSN's), its
// shards, an entity stored, read back, decoded, found and counted, and the
// pools' statistics. Throwaway servers are removed at the end, also when
// ctx is cancelled (SIGINT, SIGTERM).
func (c *cli) demoCmd(ctx context.Context, args []string) (err error) {
	if err := noArgs("demo", args); err != nil {
		return err
	}
	out := c.stdout
	step := 0
	say := func(format string, a ...any) {
		step++
		fmt.Fprintf(out, "%d. "+format+"\n", append([]any{step}, a...)...)
	}

	dsn := c.dsn
	throwaway := dsn == ""
	if throwaway {
		bin, err := pgcluster.BinDir()
		if err != nil {
			return err
		}
		say("Starting two throwaway PostgreSQL servers (binaries in %s)", bin)
		clusters, err := startClusters(ctx, 2)
		defer func() {
			var errs []error
			for _, cl := range clusters {
				errs = append(errs, cl.Destroy())
			}
			if derr := errors.Join(errs...); derr != nil {
				err = errors.Join(err, fmt.Errorf("removing the throwaway servers: %w", derr))
				return
			}
			if len(clusters) > 0 {
				fmt.Fprintf(out, "Removed the throwaway servers (%s).\n", clusterPorts(clusters))
			}
		}()
		if err != nil {
			return err
		}
		dsn = fmt.Sprintf("shards=1-9 %s dbname=postgres sslmode=disable; shards=9-17 %s dbname=postgres sslmode=disable",
			clusters[0].Keywords(), clusters[1].Keywords())
		fmt.Fprintf(out, "   DSN: %s\n", dsn)
	} else {
		say("Using the fleet of the DSN")
	}

	prev := c.dsn
	c.dsn = dsn
	ds, err := c.open()
	c.dsn = prev
	if err != nil {
		return err
	}
	defer ds.Close()
	stats := ds.Connector().Stats()
	total := 0
	for _, h := range stats {
		list := h.Shards.List()
		if len(list) == 0 {
			continue
		}
		first, last := list[0], list[len(list)-1]
		fmt.Fprintf(out, "   host %s owns shards %d-%d (schemas %s..%s)\n", h.Host, first, last,
			ds.Connector().Config().SchemaName(first), ds.Connector().Config().SchemaName(last))
		total += h.Shards.Len()
	}

	start := time.Now()
	if err := ds.CreateShards(ctx); err != nil {
		return err
	}
	if err := ds.CheckLayout(ctx); err != nil {
		return err
	}
	say("CreateShards: hstore in hv_ext, and on each of the %d shards its schema, next_id() and entities (GIN on body): %v",
		total, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(out, "   CheckLayout: every shard's key generator uses epoch %s\n", ds.Layout().Epoch().Format(time.RFC3339Nano))
	setUp := ds.Connector().Stats() // the tour's statements are counted from here

	// Shard 12 when the fleet has it, and one shard of another host.
	shard, _ := stats[0].Shards.First()
	hostOf := 0
	for i, h := range stats {
		if h.Shards.Contains(12) {
			shard, hostOf = 12, i
		}
	}
	other := -1
	for i, h := range stats {
		if i != hostOf {
			other = h.Shards.List()[h.Shards.Len()/2]
			break
		}
	}

	data := map[string]string{"beep": "boop"}
	key, err := ds.Put(ctx, shard, 1, data)
	if err != nil {
		return err
	}
	say("Put kind 1 {beep: boop} on shard %d -> key %s", shard, key)
	keys := []hv.Key{key}
	if other >= 0 {
		k2, err := ds.Put(ctx, other, 1, map[string]string{"beep": "boop", "note": "another host"})
		if err != nil {
			return err
		}
		keys = append(keys, k2)
		fmt.Fprintf(out, "   and {beep: boop, note: another host} on shard %d -> key %s\n", other, k2)
	}
	if !throwaway {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			for _, k := range keys {
				if derr := ds.Delete(dctx, k); derr != nil {
					err = errors.Join(err, derr)
				}
			}
			if err == nil {
				fmt.Fprintf(out, "Deleted the demo's %d entities from the fleet.\n", len(keys))
			}
		}()
	}

	e, err := ds.Get(ctx, key)
	if err != nil {
		return err
	}
	say("Get %s (routed by the key alone) -> kind %d, body %s, updated %s", key, e.Kind, hstoreText(e.Data), formatTime(e.Updated))

	schema, host, err := ds.Connector().SchemaFor(key.ShardID())
	if err != nil {
		return err
	}
	say("Key %s decoded: created %s, shard %d, added id %d -> schema %s on host %s",
		key, ds.Layout().Created(key).Format(time.RFC3339Nano), key.ShardID(), key.AddedID(), schema, host)

	found, err := ds.Find(ctx, shard, 1, data)
	if err != nil {
		return err
	}
	var fk []string
	for _, f := range found {
		fk = append(fk, f.Key.String())
	}
	say("Find kind 1 with body @> beep=>boop on shard %d (hstore containment, GIN-indexed) -> %s: %s", shard, plural(len(found), "entity", "entities"), strings.Join(fk, ", "))

	counts, err := countEntities(ctx, ds)
	if err != nil {
		return err
	}
	n := 0
	var where []string
	for _, s := range sortedShards(counts) {
		n += counts[s]
		where = append(where, fmt.Sprintf("shard %d: %d", s, counts[s]))
	}
	say("Fan-out over all %d shards, SELECT count(*) FROM entities -> %s (%s)", total, plural(n, "entity", "entities"), strings.Join(where, ", "))

	say("Where the statements of steps 3 to 7 went (Connector.Stats; each shard of a fan-out counts one):")
	printWhere(out, ds.Connector().Stats(), setUp, "   ")
	say("Pool statistics:")
	printStats(out, ds.Connector().Stats(), "   ")
	return nil
}

// printWhere prints, per host, the statements run since base (the Stats
// of the same Connector taken earlier) and the shards they ran on, busiest
// first.
func printWhere(w io.Writer, stats, base []hv.HostStats, indent string) {
	was := map[string]map[int]hv.ShardStats{}
	for _, h := range base {
		was[h.Host] = map[int]hv.ShardStats{}
		for _, s := range h.ShardStats {
			was[h.Host][s.Shard] = s
		}
	}
	for _, h := range stats {
		var n, failed int64
		var busy []hv.ShardStats
		for _, s := range h.ShardStats {
			b := was[h.Host][s.Shard]
			s.Statements -= b.Statements
			s.Errors -= b.Errors
			n += s.Statements
			failed += s.Errors
			if s.Statements > 0 {
				busy = append(busy, s)
			}
		}
		sort.SliceStable(busy, func(i, j int) bool { return busy[i].Statements > busy[j].Statements })
		var shards []string
		for _, s := range busy {
			shards = append(shards, fmt.Sprintf("%d: %d", s.Shard, s.Statements))
		}
		fmt.Fprintf(w, "%shost %s: %s (%d failed); by shard %s\n", indent, h.Host,
			plural(int(n), "statement", "statements"), failed, strings.Join(shards, ", "))
	}
}

// countEntities counts the entities of every shard with one fan-out query
// and returns the shards that have some.
func countEntities(ctx context.Context, ds *hv.Datastore) (map[int]int, error) {
	rows, err := ds.DB().QueryContext(hv.WithAllShards(ctx), "SELECT current_schema(), count(*) FROM entities")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	bySchema := map[string]int{}
	for rows.Next() {
		var schema string
		var n int
		if err := rows.Scan(&schema, &n); err != nil {
			return nil, err
		}
		bySchema[schema] = n
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := map[int]int{}
	cfg := ds.Connector().Config()
	for _, h := range cfg.Hosts {
		for s := range h.Shards.All() {
			if n := bySchema[cfg.SchemaName(s)]; n > 0 {
				out[s] = n
			}
		}
	}
	return out, nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// startClusters starts n throwaway clusters concurrently. It returns those
// that started, also on error, so that the caller destroys them.
func startClusters(ctx context.Context, n int) ([]*pgcluster.Cluster, error) {
	cs := make([]*pgcluster.Cluster, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { cs[i], errs[i] = pgcluster.Start(ctx, pgcluster.Options{}) })
	}
	wg.Wait()
	var started []*pgcluster.Cluster
	for _, c := range cs {
		if c != nil {
			started = append(started, c)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return started, fmt.Errorf("starting PostgreSQL: %w", err)
	}
	return started, nil
}

func clusterPorts(cs []*pgcluster.Cluster) string {
	var ps []string
	for _, c := range cs {
		ps = append(ps, fmt.Sprintf("127.0.0.1:%d", c.Port()))
	}
	return strings.Join(ps, ", ")
}
