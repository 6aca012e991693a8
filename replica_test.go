package hv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/ci"
	"github.com/hypervault/hv/internal/pgcluster"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

// replicaFleet is a primary cluster owning shards 1-4 with streaming
// standbys of its own, and a second host (a database of the default
// server, no replicas) owning shards 5-8. Every shard has t(id int primary
// key, shard int, note text) holding (0, shard, 'seed').
type replicaFleet struct {
	primary   *pgcluster.Cluster
	standbys  []*pgcluster.Cluster
	other     string // libpq keywords of the second host's database
	otherPort int
}

// newReplicaFleet starts the clusters: standbys standbys, each with
// settings (nil for none).
func newReplicaFleet(t testing.TB, standbys int, settings map[string]string) *replicaFleet {
	t.Helper()
	if _, err := pgcluster.BinDir(); err != nil {
		if ci.Required() {
			t.Fatalf("PostgreSQL binaries needed (CI=true): %v", err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rf := &replicaFleet{}
	p, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Destroy() })
	rf.primary = p
	var ddl strings.Builder
	for sh := 1; sh < 5; sh++ {
		fmt.Fprintf(&ddl, `CREATE SCHEMA shard%04[1]d;
			CREATE TABLE shard%04[1]d.t (id int PRIMARY KEY, shard int NOT NULL, note text);
			INSERT INTO shard%04[1]d.t VALUES (0, %[1]d, 'seed');`, sh)
	}
	if err := execOn(ctx, p.Keywords()+" dbname=postgres", ddl.String()); err != nil {
		t.Fatal(err)
	}
	for range standbys {
		s, err := pgcluster.StartStandby(ctx, p, pgcluster.Options{Settings: settings})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Destroy() })
		rf.standbys = append(rf.standbys, s)
	}
	rf.other = pgtest.Default(t).CreateDatabase(t)
	ddl.Reset()
	for sh := 5; sh < 9; sh++ {
		fmt.Fprintf(&ddl, `CREATE SCHEMA shard%04[1]d;
			CREATE TABLE shard%04[1]d.t (id int PRIMARY KEY, shard int NOT NULL, note text);
			INSERT INTO shard%04[1]d.t VALUES (0, %[1]d, 'seed');`, sh)
	}
	if err := execOn(ctx, rf.other, ddl.String()+"SELECT 1"); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", rf.other)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRow("SELECT inet_server_port()").Scan(&rf.otherPort); err != nil {
		t.Fatal(err)
	}
	return rf
}

// dsn returns the fleet's DSN; primaryHost replaces the first host's
// host/port keywords when set (multi-host), global is appended.
func (rf *replicaFleet) dsn(primaryHost, global string) string {
	if primaryHost == "" {
		primaryHost = fmt.Sprintf("host=127.0.0.1 port=%d", rf.primary.Port())
	}
	var reps []string
	for _, s := range rf.standbys {
		reps = append(reps, fmt.Sprintf("127.0.0.1:%d", s.Port()))
	}
	seg := fmt.Sprintf("shards=1-5 %s user=postgres dbname=postgres sslmode=disable", primaryHost)
	if len(reps) > 0 {
		seg += " replicas=" + strings.Join(reps, ",")
	}
	return seg + "; shards=5-9 " + rf.other + "; " + global
}

// open opens a Connector on the fleet's DSN.
func (rf *replicaFleet) open(t testing.TB, primaryHost, global string) (*Connector, *sql.DB) {
	t.Helper()
	_, c, db := openDSN(t, rf.dsn(primaryHost, global), nil)
	return c, db
}

// replicaStats returns the stats of the first host's replicas.
func replicaStats(c *Connector) []ReplicaStats { return c.Stats()[0].Replicas }

// waitReplicasFit waits until every replica of the first host answered a
// poll and lags no more than bound.
func waitReplicasFit(t testing.TB, c *Connector, bound time.Duration) {
	t.Helper()
	waitUntil(t, "replicas up and caught up", func() bool {
		for _, r := range replicaStats(c) {
			if r.Down || r.Lag > bound {
				return false
			}
		}
		return true
	})
}

// servedBy returns the port of the server that ran a read on ctx.
func servedBy(t testing.TB, ctx context.Context, db *sql.DB) int {
	t.Helper()
	w, err := whereAmI(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	return w.Port
}

// execOnCluster runs sql on a cluster's postgres database.
func execOnCluster(t testing.TB, c *pgcluster.Cluster, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := execOn(ctx, c.Keywords()+" dbname=postgres", sql); err != nil {
		t.Fatal(err)
	}
}

// TestReplicaRouting: WithReplica reads (statements, read-only
// transactions, fan-outs) go to the replicas, in turn, on the shard's
// schema; writes and read-write transactions go to the primary; a write on
// a replica context fails with the read-only error naming shard and
// replica; a stopped replica is skipped.
func TestReplicaRouting(t *testing.T) {
	rf := newReplicaFleet(t, 2, nil)
	c, db := rf.open(t, "", "")
	waitReplicasFit(t, c, time.Second)
	ctx := context.Background()
	pPort, s1, s2 := rf.primary.Port(), rf.standbys[0].Port(), rf.standbys[1].Port()

	shard3 := WithShard(ctx, 3)
	if got := servedBy(t, shard3, db); got != pPort {
		t.Errorf("plain read served by port %d, want the primary %d", got, pPort)
	}
	seen := map[int]int{}
	for range 20 {
		w, err := whereAmI(WithReplica(shard3), db)
		if err != nil {
			t.Fatal(err)
		}
		if w.Schema != "shard0003" || w.Shard != 3 {
			t.Fatalf("replica read on %+v, want shard0003", w)
		}
		seen[w.Port]++
	}
	if seen[s1] == 0 || seen[s2] == 0 || seen[pPort] != 0 {
		t.Errorf("replica reads by port: %v, want both replicas (%d, %d) and not the primary %d", seen, s1, s2, pPort)
	}

	// Transactions: read-only ones on a replica context read a replica.
	for _, ro := range []bool{true, false} {
		tx, err := db.BeginTx(WithReplica(shard3), &sql.TxOptions{ReadOnly: ro})
		if err != nil {
			t.Fatal(err)
		}
		w, err := whereAmI(ctx, tx)
		if err != nil {
			t.Fatal(err)
		}
		_ = tx.Rollback()
		if onPrimary := w.Port == pPort; onPrimary == ro {
			t.Errorf("transaction (read only %v) on port %d, primary is %d", ro, w.Port, pPort)
		}
	}

	// A write on a replica context: PostgreSQL's read-only error, wrapped.
	_, err := db.ExecContext(WithReplica(shard3), "UPDATE t SET note = 'x' WHERE id = 0")
	var se *ShardError
	var pe *pgconn.PgError
	if !errors.As(err, &se) || se.Shard != 3 || !errors.As(err, &pe) || pe.Code != "25006" {
		t.Fatalf("write on a replica context: %v, want a *ShardError for shard 3 wrapping SQLSTATE 25006", err)
	}
	if !strings.Contains(se.Host, fmt.Sprint(s1)) && !strings.Contains(se.Host, fmt.Sprint(s2)) {
		t.Errorf("error names host %q, want a replica", se.Host)
	}
	if _, err := db.ExecContext(shard3, "UPDATE t SET note = 'x' WHERE id = 0"); err != nil {
		t.Fatalf("write on the primary: %v", err)
	}

	// Fan-out: shards 1-4 from the replicas, 5-8 from their host without.
	rows, err := db.QueryContext(WithReplica(WithAllShards(ctx)), "SELECT shard, inet_server_port() FROM t WHERE id = 0")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var shard, port int
		if err := rows.Scan(&shard, &port); err != nil {
			t.Fatal(err)
		}
		n++
		if onReplica := port == s1 || port == s2; (shard < 5) != onReplica || shard >= 5 && port != rf.otherPort {
			t.Errorf("fan-out read shard %d on port %d", shard, port)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if n != 8 {
		t.Errorf("fan-out read %d shards, want 8", n)
	}

	st := replicaStats(c)
	if len(st) != 2 || st[0].Reads == 0 || st[1].Reads == 0 || st[0].ReplayLSN == "" {
		t.Errorf("replica stats: %+v", st)
	}

	// A stopped replica is skipped: reads keep working, on the other.
	if err := rf.standbys[1].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if got := servedBy(t, WithReplica(shard3), db); got == s2 {
			t.Fatalf("read served by the stopped replica")
		}
	}
	waitUntil(t, "the stopped replica shown down", func() bool { return replicaStats(c)[1].Down })
}

// TestReplicaLagFallback: with replay paused on the only replica and the
// primary writing, reads fall back to the primary once the lag passes
// max_replica_lag, and go back to the replica after replay resumes.
func TestReplicaLagFallback(t *testing.T) {
	rf := newReplicaFleet(t, 1, nil)
	c, db := rf.open(t, "", "max_replica_lag=300ms")
	waitReplicasFit(t, c, 300*time.Millisecond)
	ctx := context.Background()
	read := WithReplica(WithShard(ctx, 2))
	s := rf.standbys[0].Port()
	if got := servedBy(t, read, db); got != s {
		t.Fatalf("read served by %d, want the replica %d", got, s)
	}
	execOnCluster(t, rf.standbys[0], "SELECT pg_wal_replay_pause()")
	before := replicaStats(c)[0].Fallbacks
	i := 0
	write := func() {
		i++
		if _, err := db.ExecContext(WithShard(ctx, 2), "UPDATE t SET note = $1 WHERE id = 0", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "reads to fall back to the primary", func() bool {
		write()
		return servedBy(t, read, db) == rf.primary.Port()
	})
	lag := replicaStats(c)[0].Lag
	if lag < 300*time.Millisecond {
		t.Errorf("lag shown %v with reads falling back at a 300ms bound", lag)
	}
	execOnCluster(t, rf.standbys[0], "SELECT pg_wal_replay_resume()")
	waitUntil(t, "reads to return to the replica", func() bool {
		write()
		return servedBy(t, read, db) == s
	})
	fallbacks := replicaStats(c)[0].Fallbacks - before
	if fallbacks == 0 {
		t.Error("no fallback counted")
	}
	t.Logf("fallbacks under paused replay: %d, lag when falling back %v", fallbacks, lag)
}

// TestReadYourWrites: 1,000 write-then-read iterations on a replica
// context, under a replica that applies commits 100ms late and under one
// whose replay is paused: with WithReadYourWrites no read is stale;
// without, reads are.
func TestReadYourWrites(t *testing.T) {
	rf := newReplicaFleet(t, 1, map[string]string{"recovery_min_apply_delay": "100ms"})
	c, db := rf.open(t, "", "max_replica_lag=5s")
	waitReplicasFit(t, c, 5*time.Second)
	ctx := context.Background()
	run := func(ryw bool, n int) (stale, onReplica int) {
		t.Helper()
		for i := range n {
			u := WithShard(ctx, 1)
			if ryw {
				u = WithReadYourWrites(u)
			}
			v := fmt.Sprintf("%v-%d-%d", ryw, time.Now().UnixNano(), i)
			if _, err := db.ExecContext(u, "UPDATE t SET note = $1 WHERE id = 0", v); err != nil {
				t.Fatal(err)
			}
			var got string
			var port int
			if err := db.QueryRowContext(WithReplica(u), "SELECT note, inet_server_port() FROM t WHERE id = 0").Scan(&got, &port); err != nil {
				t.Fatal(err)
			}
			if got != v {
				stale++
			}
			if port != rf.primary.Port() {
				onReplica++
			}
		}
		return stale, onReplica
	}
	// A slow replica: within max_replica_lag, but behind every fresh write.
	stale, onReplica := run(true, 1000)
	if stale != 0 {
		t.Errorf("read-your-writes, slow replica: %d stale reads of 1000", stale)
	}
	t.Logf("read-your-writes, slow replica: %d of 1000 reads on the replica", onReplica)
	stale, onReplica = run(false, 200)
	if stale == 0 {
		t.Errorf("without read-your-writes, slow replica: no stale read in 200 (%d on the replica)", onReplica)
	}
	t.Logf("without read-your-writes, slow replica: %d stale of 200", stale)

	// The replica reaches a unit's write in time: a read after it serves.
	u := WithReadYourWrites(WithShard(ctx, 1))
	if _, err := db.ExecContext(u, "UPDATE t SET note = 'late' WHERE id = 0"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a read-your-writes read on the replica", func() bool {
		return servedBy(t, WithReplica(u), db) != rf.primary.Port()
	})

	// Paused replay: the LSN check, not the lag, keeps the unit off the
	// replica (the lag bound is 5s: the replica stays fit meanwhile).
	execOnCluster(t, rf.standbys[0], "SELECT pg_wal_replay_pause()")
	stale, _ = run(true, 1000)
	if stale != 0 {
		t.Errorf("read-your-writes, paused replica: %d stale reads of 1000", stale)
	}
	stale, onReplica = run(false, 200)
	if stale == 0 {
		t.Errorf("without read-your-writes, paused replica: no stale read in 200 (%d on the replica)", onReplica)
	}
	t.Logf("without read-your-writes, paused replica: %d stale of 200", stale)

	// A read-write transaction's position is read after COMMIT.
	execOnCluster(t, rf.standbys[0], "SELECT pg_wal_replay_resume()")
	u = WithReadYourWrites(WithShard(ctx, 1))
	tx, err := db.BeginTx(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(u, "UPDATE t SET note = 'tx' WHERE id = 0"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := db.QueryRowContext(WithReplica(u), "SELECT note FROM t WHERE id = 0").Scan(&got); err != nil || got != "tx" {
		t.Errorf("read after a committed transaction: %q, %v", got, err)
	}
}

// TestReplicaConcurrent reads and writes from several goroutines through
// replica contexts, for the race detector.
func TestReplicaConcurrent(t *testing.T) {
	rf := newReplicaFleet(t, 1, nil)
	c, db := rf.open(t, "", "pool_max=4")
	waitReplicasFit(t, c, time.Second)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				u := WithReadYourWrites(WithShard(context.Background(), 1+(g+i)%8))
				if _, err := db.ExecContext(u, "UPDATE t SET note = $1 WHERE id = 0", fmt.Sprint(i)); err != nil {
					t.Error(err)
					return
				}
				if _, err := whereAmI(WithReplica(u), db); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestReplicaReconfigure: Reconfigure adds a host's replicas (reads move to
// them) and removes them again (reads go to the primary, and the removed
// replica's pool and monitor are closed once idle).
func TestReplicaReconfigure(t *testing.T) {
	rf := newReplicaFleet(t, 1, nil)
	withReps, err := ParseConfig(rf.dsn("", ""))
	if err != nil {
		t.Fatal(err)
	}
	without := *withReps
	without.Hosts = append([]HostConfig(nil), withReps.Hosts...)
	without.Hosts[0].Replicas = nil
	c, err := NewConnector(&without)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	read := WithReplica(WithShard(context.Background(), 4))
	if got := servedBy(t, read, db); got != rf.primary.Port() {
		t.Fatalf("without replicas the read went to %d", got)
	}
	if err := c.Reconfigure(withReps); err != nil {
		t.Fatal(err)
	}
	waitReplicasFit(t, c, time.Second)
	if got := servedBy(t, read, db); got != rf.standbys[0].Port() {
		t.Fatalf("with a replica the read went to %d", got)
	}
	mon := c.fleet.Load().hosts[0].replicas.pools[0].replica
	if err := c.Reconfigure(withReps); err != nil { // kept, with its monitor
		t.Fatal(err)
	}
	if again := c.fleet.Load().hosts[0].replicas.pools[0].replica; again != mon {
		t.Error("an unchanged Reconfigure replaced the replica's pool")
	}
	if err := c.Reconfigure(&without); err != nil {
		t.Fatal(err)
	}
	if got := servedBy(t, read, db); got != rf.primary.Port() {
		t.Fatalf("after removing the replica the read went to %d", got)
	}
	waitUntil(t, "the removed replica's monitor to stop", func() bool {
		select {
		case <-mon.done:
			return true
		default:
			return false
		}
	})
}

// TestReadYourWritesRecord: on both drivers, a unit's ExecContext records
// a write with its completion, a writing QueryContext an unknown one, a
// plain read nothing, and a transaction its write only at COMMIT.
func TestReadYourWritesRecord(t *testing.T) {
	rf := newReplicaFleet(t, 0, nil)
	for _, driver := range []string{"pgx", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			_, db := rf.open(t, "", "driver="+driver)
			unit := func() context.Context { return WithReadYourWrites(WithShard(context.Background(), 2)) }
			u := unit()
			var note string
			if err := db.QueryRowContext(u, "SELECT note FROM t WHERE id = 0").Scan(&note); err != nil {
				t.Fatal(err)
			}
			if len(rywFrom(u).writes) != 0 {
				t.Error("a read recorded a write")
			}
			before := time.Now()
			if _, err := db.ExecContext(u, "UPDATE t SET note = $1 WHERE id = 0", "a"); err != nil {
				t.Fatal(err)
			}
			if w := rywFrom(u).writes[2]; w.unknown || !w.done.After(before) || w.primary == nil {
				t.Errorf("Exec recorded %+v", w)
			}
			if err := db.QueryRowContext(u, "UPDATE t SET note = 'b' WHERE id = 0 RETURNING note").Scan(&note); err != nil {
				t.Fatal(err)
			}
			if w := rywFrom(u).writes[2]; !w.unknown {
				t.Errorf("a writing query recorded %+v", w)
			}
			u = unit()
			tx, err := db.BeginTx(u, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(u, "UPDATE t SET note = 'tx' WHERE id = 0"); err != nil {
				t.Fatal(err)
			}
			if len(rywFrom(u).writes) != 0 {
				t.Error("a write recorded before COMMIT")
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if w := rywFrom(u).writes[2]; w.unknown || w.done.IsZero() {
				t.Errorf("COMMIT recorded %+v", w)
			}
		})
	}
}
