package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/hypervault/hv"
)

// The figures of hv status -watch come from the servers' statistics views
// (pg_stat_activity, pg_stat_database, pg_stat_user_tables): what every
// client of the fleet did, not only this process, whose own Stats would
// count nothing but the watch's queries.

// watchOptions are hv status -watch's flags.
type watchOptions struct {
	interval time.Duration
	count    int // refreshes before returning; 0 until interrupted
	top      int // hottest shards shown
}

// hostSample is one host's figures at one refresh.
type hostSample struct {
	host      hv.HostStats
	ping      time.Duration
	err       error // the host did not answer
	idle      bool  // the host owns no shard: hv cannot reach it
	conns     int64 // the database's client connections
	active    int64
	idleInTx  int64
	commits   int64
	rollbacks int64
	shards    map[int]shardSample
}

// shardSample is one shard's table statistics, summed over its tables.
type shardSample struct {
	scans, writes, rows int64
}

// sample is one refresh.
type sample struct {
	at    time.Time
	hosts []hostSample
}

const hostSQL = `SELECT
	(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'),
	(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'),
	(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'),
	xact_commit, xact_rollback
FROM pg_stat_database WHERE datname = current_database()`

const shardsSQL = `SELECT schemaname,
	sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0))::bigint,
	sum(n_tup_ins + n_tup_upd + n_tup_del)::bigint,
	sum(n_live_tup)::bigint
FROM pg_stat_user_tables GROUP BY schemaname`

// takeSample reads every host's figures; a host that does not answer has
// err set.
func takeSample(ctx context.Context, ds *hv.Datastore) sample {
	s := sample{at: time.Now()}
	cfg := ds.Connector().Config()
	for _, h := range ds.Connector().Stats() {
		hs := hostSample{host: h, shards: map[int]shardSample{}}
		first, ok := h.Shards.First()
		if !ok {
			// hv reaches a host through one of its shards: a host that
			// owns none (a new one, or one drained) has no figures here.
			hs.idle = true
			s.hosts = append(s.hosts, hs)
			continue
		}
		hs.err = func() error {
			qctx, cancel := context.WithTimeout(hv.WithShard(ctx, first), 10*time.Second)
			defer cancel()
			start := time.Now()
			if err := ds.DB().PingContext(qctx); err != nil {
				return err
			}
			hs.ping = time.Since(start)
			if err := ds.DB().QueryRowContext(qctx, hostSQL).Scan(&hs.conns, &hs.active, &hs.idleInTx, &hs.commits, &hs.rollbacks); err != nil {
				return err
			}
			shardOf := map[string]int{}
			for n := range h.Shards.All() {
				shardOf[cfg.SchemaName(n)] = n
			}
			rows, err := ds.DB().QueryContext(qctx, shardsSQL)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var schema string
				var st shardSample
				if err := rows.Scan(&schema, &st.scans, &st.writes, &st.rows); err != nil {
					return err
				}
				if n, ok := shardOf[schema]; ok {
					hs.shards[n] = st
				}
			}
			return rows.Err()
		}()
		s.hosts = append(s.hosts, hs)
	}
	return s
}

// rate formats the growth of a counter from prev to cur over d: "+N/s",
// or "" for the first refresh.
func rate(cur, prev int64, d time.Duration, first bool) string {
	if first || d <= 0 {
		return ""
	}
	return fmt.Sprintf(" (+%.1f/s)", float64(cur-prev)/d.Seconds())
}

// printSample writes one refresh: per host its reachability, connections
// and transactions, then the hottest shards of the fleet, by scans and
// writes since the previous refresh (since the servers' statistics were
// reset, for the first).
func printSample(w io.Writer, cur, prev sample, o watchOptions) {
	first := prev.at.IsZero()
	d := cur.at.Sub(prev.at)
	fmt.Fprintf(w, "hv status -watch  %s  every %v\n", cur.at.UTC().Format(time.RFC3339), o.interval)
	prevHost := map[string]hostSample{}
	for _, h := range prev.hosts {
		prevHost[h.host.Host] = h
	}
	type hot struct {
		shard   int
		host    string
		heat    int64 // scans + writes in the interval
		st, was shardSample
		first   bool
	}
	var hots []hot
	for _, h := range cur.hosts {
		if h.idle {
			fmt.Fprintf(w, "host %s  shards ''  owns no shards\n", h.host.Host)
			continue
		}
		if h.err != nil {
			fmt.Fprintf(w, "host %s  shards %s  DOWN: %s\n", h.host.Host, shardSpan(h.host.Shards), errorText(context.Background(), h.err))
			continue
		}
		p, seen := prevHost[h.host.Host]
		seen = seen && p.err == nil
		fmt.Fprintf(w, "host %s  shards %s  up, ping %v  connections %d (active %d, idle in transaction %d)  commits %d%s  rollbacks %d%s\n",
			h.host.Host, shardSpan(h.host.Shards), h.ping.Round(10*time.Microsecond), h.conns, h.active, h.idleInTx,
			h.commits, rate(h.commits, p.commits, d, !seen), h.rollbacks, rate(h.rollbacks, p.rollbacks, d, !seen))
		for n, st := range h.shards {
			was, ok := p.shards[n]
			ok = ok && seen
			if !ok {
				was = shardSample{}
			}
			heat := st.scans - was.scans + st.writes - was.writes
			if heat > 0 {
				hots = append(hots, hot{shard: n, host: h.host.Host, heat: heat, st: st, was: was, first: !ok})
			}
		}
	}
	sort.Slice(hots, func(i, j int) bool {
		if hots[i].heat != hots[j].heat {
			return hots[i].heat > hots[j].heat
		}
		return hots[i].shard < hots[j].shard
	})
	since := "since the last refresh"
	if first {
		since = "since the servers' statistics were reset"
	}
	if len(hots) == 0 {
		fmt.Fprintf(w, "no shard scanned or written %s\n", since)
		return
	}
	fmt.Fprintf(w, "hottest shards (table scans + rows written %s):\n", since)
	for _, s := range hots[:min(o.top, len(hots))] {
		fmt.Fprintf(w, "  shard %d  host %s  scans %d%s  rows written %d%s  live rows %d\n", s.shard, s.host,
			s.st.scans, rate(s.st.scans, s.was.scans, d, first || s.first),
			s.st.writes, rate(s.st.writes, s.was.writes, d, first || s.first), s.st.rows)
	}
}

// clearScreen moves a terminal's cursor home and clears it.
const clearScreen = "\x1b[H\x1b[2J"

// watch prints a refresh every o.interval until ctx ends (or o.count
// refreshes): on a terminal each replaces the last, elsewhere they follow
// one another, a blank line apart.
func (c *cli) watch(ctx context.Context, ds *hv.Datastore, o watchOptions) error {
	tty := isTerminal(c.stdout)
	var prev sample
	for i := 0; o.count == 0 || i < o.count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil // interrupted: the watch is over
			case <-time.After(o.interval):
			}
		}
		cur := takeSample(ctx, ds)
		if ctx.Err() != nil {
			return nil
		}
		var b strings.Builder
		switch {
		case tty:
			b.WriteString(clearScreen)
		case i > 0:
			b.WriteString("\n")
		}
		printSample(&b, cur, prev, o)
		if _, err := io.WriteString(c.stdout, b.String()); err != nil {
			return err
		}
		prev = cur
	}
	return nil
}

// statusFlags parses hv status's flags: watch is set by -watch, o by the
// others.
func statusFlags(args []string) (o watchOptions, watch bool, err error) {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&watch, "watch", false, "refresh until interrupted")
	fs.DurationVar(&o.interval, "interval", 2*time.Second, "time between refreshes")
	fs.IntVar(&o.count, "count", 0, "refreshes (0: until interrupted)")
	fs.IntVar(&o.top, "top", 5, "hottest shards shown")
	pos, err := parseArgs(fs, args)
	switch {
	case err != nil:
		return o, false, err
	case len(pos) > 0:
		return o, false, fmt.Errorf("%w: status takes no arguments", errUsage)
	case o.interval <= 0 || o.count < 0 || o.top < 0:
		return o, false, fmt.Errorf("%w: -interval must be positive, -count and -top not negative", errUsage)
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "watch" && !watch && err == nil {
			err = fmt.Errorf("%w: -%s needs -watch", errUsage, f.Name)
		}
	})
	return o, watch, err
}
