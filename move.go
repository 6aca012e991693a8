package hv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Moving a shard between hosts online (MoveShard), with PostgreSQL's own
// machinery: the schema's DDL by pg_dump --schema-only, the rows by logical
// replication (a publication of the shard's tables on the source, a slot,
// a subscription on the target that copies them and then streams changes),
// then a short cut-over under a table lock on the source, which fences the
// source copy by renaming its schema. How processes learn the new owner:
// moved.go.
//
// Catch-up is measured with marks, not LSNs: the publication also carries
// this move's rows of hv_meta.move_marks (a row filter), and a mark written
// on the source after the shard's last write has arrived on the target
// exactly when every earlier transaction of the shard has been applied
// there (logical replication applies in commit order).
//
// Crash safety: until the fence commits, the source is the only copy any
// process routes to (no "done" record exists), so a mover that dies leaves
// the source serving and a half-made target that the next MoveShard or
// AbortMove removes. The fence (schema renamed, sequences capped, record
// "done") is one transaction on the source: after it, the target is the
// only writable copy.

// ErrBadMove is wrapped by MoveShard's and AbortMove's refusals: bad input
// or a fleet that cannot take the move. Nothing was changed.
var ErrBadMove error = &sentinel{"shard move refused"}

// ErrMoveAborted is wrapped when a move gave up after it began: the target
// could not catch up within MoveOptions.MaxPause, or the row counts at the
// fence differed. The source keeps serving; the target copy and the
// replication objects were removed.
var ErrMoveAborted error = &sentinel{"shard move aborted, the source keeps serving"}

// Move phases, in order (MoveProgress.Phase, MoveReport.Phases).
const (
	PhaseCheck   = "check"   // preflight checks, leftovers of earlier moves removed
	PhaseSchema  = "schema"  // pg_dump --schema-only applied on the target
	PhaseCopy    = "copy"    // initial copy of the rows by the subscription
	PhaseCatchUp = "catchup" // streamed changes applied until the target is close behind
	PhaseCutOver = "cutover" // writes paused, last changes applied, sequences set, source fenced
	PhaseCleanup = "cleanup" // subscription, slot and publication dropped
)

// DefaultMaxPause is MoveOptions.MaxPause when it is zero.
const DefaultMaxPause = 2 * time.Second

// MoveOptions tune MoveShard. The zero value (or nil) means the defaults.
type MoveOptions struct {
	// MaxPause bounds how long writes to the shard are paused at the
	// cut-over, waiting for the target to apply the last changes (and for
	// the table locks). When it runs out the move aborts and the source
	// keeps serving. Zero means DefaultMaxPause.
	MaxPause time.Duration
	// Checksum compares an md5 of every table's rows, source and target, at
	// the fence, besides the row counts (reads every row twice, during the
	// pause).
	Checksum bool
	// Progress, when set, is called from time to time with the phase and
	// how far the copy is.
	Progress func(MoveProgress)
	// BinDir is where pg_dump is; empty means PATH, then the newest
	// /usr/lib/postgresql/*/bin.
	BinDir string

	// hook, for tests, is called at the start of each phase; an error
	// stops the move there as a crash would (nothing cleaned up).
	hook func(phase string) error
}

// MoveProgress is a snapshot of a move, for MoveOptions.Progress.
type MoveProgress struct {
	Shard int
	Phase string
	// TablesReady of Tables have finished their initial copy.
	Tables, TablesReady int
	// Rows and Bytes is what the target holds of the shard so far.
	Rows, Bytes int64
	// LagBytes is how far the target's replication slot is behind the
	// source's WAL.
	LagBytes int64
}

// PhaseTime is how long one phase of a move took.
type PhaseTime struct {
	Phase    string
	Duration time.Duration
}

// TableCount is one table's row count (and checksum) on both copies at the
// fence.
type TableCount struct {
	Table                string
	Source, Target       int64
	SourceSum, TargetSum string // with MoveOptions.Checksum
}

// MoveReport is what a finished move did.
type MoveReport struct {
	Shard    int
	From, To string // host names, HostConfig.Name
	// FencedSchema is the name the source's copy was renamed to; hv move
	// -cleanup drops it.
	FencedSchema string
	// Phases in order, and Pause, how long writes waited at the cut-over.
	Phases []PhaseTime
	Pause  time.Duration
	// Tables are the row counts compared at the fence.
	Tables []TableCount
	// Bytes is the size of the shard's tables and indexes on the target.
	Bytes int64
	// Cleaned reports that leftovers of an earlier, interrupted move of
	// the shard were removed first.
	Cleaned bool
}

// mover is one MoveShard.
type mover struct {
	c          *Connector
	shard      int
	schema     string
	from, to   HostConfig
	src, dst   *pgx.Conn // administration connections
	marks      *pgx.Conn // the source, for marks while src holds the cut-over's locks
	opts       MoveOptions
	name       string // publication, slot and subscription name
	moveID     int64
	markKey    int64    // the move's rows of hv_meta.move_marks: random, as move ids repeat across hosts
	tables     []string // schema-qualified, quoted
	sequences  []string
	report     *MoveReport
	phaseStart time.Time
	phase      string
	trace      moveTrace // tracer_move.go
}

// MoveShard moves shard from the host that owns it to the host named to
// (HostConfig.Name as hv prints it, e.g. "db3:5432/app"), online: writes
// to the shard pause only at the cut-over, for at most opts.MaxPause, and
// every process using the fleet, with this DSN or an older one, routes the
// shard to its new owner once it meets the fenced copy (see ErrShardMoved).
// c's own routing is updated at once. nil opts means the defaults.
//
// The source needs wal_level=logical; the user of both hosts needs to be
// a superuser, or on the source a role with REPLICATION that owns the
// shard's tables. The target must be in c's configuration and must not
// already hold the shard's schema with rows.
//
// It returns the report of the move, or an error: a *ShardError wrapping
// ErrBadMove when it was refused (nothing changed), wrapping
// ErrMoveAborted when it gave up (the source keeps serving), or another
// cause when a host failed (run MoveShard again, which cleans up and
// starts over, or AbortMove).
func MoveShard(ctx context.Context, c *Connector, shard int, to string, opts *MoveOptions) (*MoveReport, error) {
	m, err := newMover(ctx, c, shard, to, opts)
	if err != nil {
		return nil, err
	}
	defer m.close()
	m.trace = traceMove(ctx, c.fleet.Load().tracer, shard, &m.from, &m.to)
	if err := m.run(ctx); err != nil {
		err = m.fail(err)
		m.trace.end(nil, err)
		return nil, err
	}
	m.trace.end(m.report, nil)
	return m.report, nil
}

// refuse returns a refusal of the move of shard on host.
func refuse(shard int, host, format string, args ...any) error {
	return &ShardError{Shard: shard, Host: host, Err: errorf(ErrBadMove, format, args...)}
}

// newMover checks what can be checked without connecting and connects.
func newMover(ctx context.Context, c *Connector, shard int, to string, opts *MoveOptions) (*mover, error) {
	if c == nil {
		return nil, errorf(ErrBadMove, "nil *Connector")
	}
	m := &mover{c: c, shard: shard}
	if opts != nil {
		m.opts = *opts
	}
	if m.opts.MaxPause <= 0 {
		m.opts.MaxPause = DefaultMaxPause
	}
	f := c.fleet.Load()
	p, err := f.place(shard)
	if err != nil {
		return nil, err
	}
	// Ask the fleet where the shard really is: this Connector may not
	// have met a move made by another process yet.
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	owner, err := c.resolveMove(lctx, f, p)
	cancel()
	if err != nil {
		return nil, shardErr(shard, p.host.name, err)
	}
	if owner != "" && owner != p.host.name {
		if err := c.learnMove(shard, owner); err != nil {
			return nil, err
		}
		p, _ = c.fleet.Load().place(shard)
	}
	cfg := c.Config()
	from, ok1 := hostByName(cfg, p.host.name)
	dst, ok2 := hostByName(cfg, to)
	switch {
	case !ok2:
		names := make([]string, len(cfg.Hosts))
		for i, h := range cfg.Hosts {
			names[i] = h.Name()
		}
		return nil, refuse(shard, p.host.name, "target host %q is not in the configuration (hosts: %s)", to, strings.Join(names, ", "))
	case to == p.host.name:
		return nil, refuse(shard, p.host.name, "the shard is already on host %s", to)
	case !ok1:
		return nil, refuse(shard, p.host.name, "the source host is not in the configuration")
	}
	m.from, m.to = from, dst
	m.schema = cfg.SchemaName(shard)
	m.report = &MoveReport{Shard: shard, From: from.Name(), To: dst.Name()}
	if m.src, err = adminConn(ctx, cfg, &from); err != nil {
		return nil, shardErr(shard, from.Name(), err)
	}
	if m.marks, err = adminConn(ctx, cfg, &from); err != nil {
		m.close()
		return nil, shardErr(shard, from.Name(), err)
	}
	if m.dst, err = adminConn(ctx, cfg, &dst); err != nil {
		m.close()
		return nil, shardErr(shard, dst.Name(), err)
	}
	return m, nil
}

// hostByName returns the host of cfg called name.
func hostByName(cfg *Config, name string) (HostConfig, bool) {
	for _, h := range cfg.Hosts {
		if h.Name() == name {
			return h, true
		}
	}
	return HostConfig{}, false
}

// adminConn opens a plain pgx connection to host h for the mover.
func adminConn(ctx context.Context, cfg *Config, h *HostConfig) (*pgx.Conn, error) {
	pc, err := pgx.ParseConfig(innerConnString(cfg, h))
	if err != nil {
		return nil, errors.New(innerConfigErr(err))
	}
	pc.RuntimeParams["application_name"] = "hv move"
	return pgx.ConnectConfig(ctx, pc)
}

func (m *mover) close() {
	ctx := context.Background()
	if m.src != nil {
		m.src.Close(ctx)
	}
	for _, c := range []*pgx.Conn{m.marks, m.dst} {
		if c != nil {
			c.Close(ctx)
		}
	}
}

// fail turns err into the move's error, naming the shard and the host.
func (m *mover) fail(err error) error {
	var se *ShardError
	if errors.As(err, &se) {
		return err
	}
	return &ShardError{Shard: m.shard, Host: m.from.Name(), Err: note(err, "move to "+m.to.Name()+", phase "+m.phase)}
}

// begin starts phase, ending the one before; the test hook may stop it.
func (m *mover) begin(phase string) error {
	m.endPhase()
	m.phase, m.phaseStart = phase, time.Now()
	m.trace.phase(phase)
	m.progress(MoveProgress{})
	if m.opts.hook != nil {
		return m.opts.hook(phase)
	}
	return nil
}

func (m *mover) endPhase() {
	if m.phase != "" {
		m.report.Phases = append(m.report.Phases, PhaseTime{Phase: m.phase, Duration: time.Since(m.phaseStart)})
	}
}

func (m *mover) progress(p MoveProgress) {
	if m.opts.Progress != nil {
		p.Shard, p.Phase = m.shard, m.phase
		m.opts.Progress(p)
	}
}

func (m *mover) run(ctx context.Context) error {
	if err := m.begin(PhaseCheck); err != nil {
		return err
	}
	if err := m.check(ctx); err != nil {
		return err
	}
	if err := m.begin(PhaseSchema); err != nil {
		return err
	}
	if err := m.copySchema(ctx); err != nil {
		return m.abort(ctx, err)
	}
	if err := m.begin(PhaseCopy); err != nil {
		return err
	}
	if err := m.startReplication(ctx); err != nil {
		return m.abort(ctx, err)
	}
	if err := m.waitCopied(ctx); err != nil {
		return m.abort(ctx, err)
	}
	if err := m.begin(PhaseCatchUp); err != nil {
		return err
	}
	if err := m.catchUp(ctx); err != nil {
		return m.abort(ctx, err)
	}
	if err := m.begin(PhaseCutOver); err != nil {
		return err
	}
	if err := m.cutOver(ctx); err != nil {
		return m.abort(ctx, err)
	}
	if err := m.begin(PhaseCleanup); err != nil {
		return err
	}
	if err := dropReplication(ctx, m.src, m.dst, m.name); err != nil {
		return err
	}
	for _, c := range []*pgx.Conn{m.src, m.dst} {
		if _, err := c.Exec(ctx, "DELETE FROM hv_meta.move_marks WHERE move_id = $1", m.markKey); err != nil {
			return err
		}
	}
	m.endPhase()
	m.c.learnMoveBestEffort(m.shard, m.to.Name())
	return nil
}

// abort removes what the move made and returns err; after a crash (or
// once the fence may have committed) it leaves everything as it is.
func (m *mover) abort(ctx context.Context, err error) error {
	var c crash
	if errors.As(err, &c) {
		return c.err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if cerr := m.cleanupTarget(cctx); cerr != nil {
		return errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
	}
	return err
}

// cleanupTarget drops the replication objects and the target's copy, and
// marks the move aborted.
func (m *mover) cleanupTarget(ctx context.Context) error {
	if err := dropReplication(ctx, m.src, m.dst, m.name); err != nil {
		return err
	}
	if _, err := m.dst.Exec(ctx, "DROP SCHEMA IF EXISTS "+quoteIdent(m.schema)+" CASCADE"); err != nil {
		return err
	}
	_, err := m.src.Exec(ctx, "UPDATE hv_meta.shard_moves SET state = 'aborted', finished = clock_timestamp() WHERE id = $1 AND state = 'copying'", m.moveID)
	return err
}

// learnMoveBestEffort routes shard to host to; a configuration that lacks
// it cannot happen here (MoveShard checked it).
func (c *Connector) learnMoveBestEffort(shard int, to string) { _ = c.learnMove(shard, to) }

// moveName returns the name of the publication, slot and subscription of
// a move of shard out of the database with oid db: slots are named per
// cluster, so the database is part of it.
func moveName(db uint32, shard int) string { return fmt.Sprintf("hv_move_%d_%d", db, shard) }

// check refuses bad moves, removes the leftovers of an interrupted one,
// and records the move as copying.
func (m *mover) check(ctx context.Context) error {
	src, dst := m.from.Name(), m.to.Name()
	var walLevel string
	var srcSuper, srcRepl, dstSuper bool
	var dbOID uint32
	if err := m.src.QueryRow(ctx, `SELECT current_setting('wal_level'), r.rolsuper, r.rolreplication, d.oid
		FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()`).Scan(&walLevel, &srcSuper, &srcRepl, &dbOID); err != nil {
		return err
	}
	if walLevel != "logical" {
		return refuse(m.shard, src, "the source host has wal_level=%s, logical replication needs wal_level=logical: run ALTER SYSTEM SET wal_level = logical on it and restart the server", walLevel)
	}
	if !srcSuper && !srcRepl {
		return refuse(m.shard, src, "the user has neither SUPERUSER nor REPLICATION on the source host: ALTER ROLE ... REPLICATION (and own the shard's tables)")
	}
	if err := m.dst.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&dstSuper); err != nil {
		return err
	}
	if !dstSuper {
		return refuse(m.shard, dst, "creating a subscription on the target host needs a superuser")
	}
	m.name = moveName(dbOID, m.shard)
	// One mover per shard: a session lock held until the mover's
	// connection closes, so a crashed mover frees it.
	var got bool
	if err := m.src.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", lockMoveShard, m.shard).Scan(&got); err != nil {
		return err
	}
	if !got {
		return refuse(m.shard, src, "the shard is already moving (another mover holds its lock)")
	}
	var exists bool
	if err := m.src.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", m.schema).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return refuse(m.shard, src, "schema %s does not exist on the source host", m.schema)
	}
	rows, err := m.src.Query(ctx, `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind,
			c.relkind = 'r' AND c.relreplident <> 'f' AND NOT (c.relreplident = 'd' AND EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
			AND NOT (c.relreplident = 'i' AND EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'S', 'p') ORDER BY c.relname`, m.schema)
	if err != nil {
		return err
	}
	var noIdentity []string
	for rows.Next() {
		var name, kind string
		var bad bool
		if err := rows.Scan(&name, &kind, &bad); err != nil {
			return err
		}
		switch kind {
		case "r":
			m.tables = append(m.tables, name)
		case "S":
			m.sequences = append(m.sequences, name)
		case "p":
			return refuse(m.shard, src, "table %s is partitioned: MoveShard does not move partitioned tables", name)
		}
		if bad {
			noIdentity = append(noIdentity, name)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(noIdentity) > 0 {
		return refuse(m.shard, src, "tables without a primary key or replica identity cannot replicate updates and deletes: %s (add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL)", strings.Join(noIdentity, ", "))
	}
	// Leftovers of an earlier move of this shard that did not finish.
	if err := m.ensureMeta(ctx, m.src); err != nil {
		return err
	}
	rows2, err := m.src.Query(ctx, "SELECT peer FROM hv_meta.shard_moves WHERE shard = $1 AND direction = 'out' AND state = 'copying'", m.shard)
	if err != nil {
		return err
	}
	stale, err := pgx.CollectRows(rows2, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, peer := range stale {
		if peer != dst {
			return refuse(m.shard, src, "an interrupted move of the shard to host %s is not cleaned up: run hv move -abort -shard %d (or MoveShard to %s)", peer, m.shard, peer)
		}
	}
	if len(stale) > 0 || m.hasReplication(ctx) {
		if err := dropReplication(ctx, m.src, m.dst, m.name); err != nil {
			return err
		}
		if _, err := m.dst.Exec(ctx, "DROP SCHEMA IF EXISTS "+quoteIdent(m.schema)+" CASCADE"); err != nil {
			return err
		}
		if _, err := m.src.Exec(ctx, "UPDATE hv_meta.shard_moves SET state = 'aborted', finished = clock_timestamp() WHERE shard = $1 AND direction = 'out' AND state = 'copying'", m.shard); err != nil {
			return err
		}
		m.report.Cleaned = true
	}
	// The target must not hold the shard with rows.
	if err := m.dst.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", m.schema).Scan(&exists); err != nil {
		return err
	}
	if exists {
		var rows int64
		if err := m.dst.QueryRow(ctx, `SELECT coalesce(sum(s.n_live_tup), 0)::bigint FROM pg_stat_user_tables s WHERE s.schemaname = $1`, m.schema).Scan(&rows); err != nil {
			return err
		}
		var any bool
		if err := m.dst.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r' AND (c.reltuples > 0 OR pg_relation_size(c.oid) > 0))`, m.schema).Scan(&any); err != nil {
			return err
		}
		if rows > 0 || any {
			return refuse(m.shard, dst, "the target host already has schema %s with rows: drop it there, or move the shard elsewhere", m.schema)
		}
		if _, err := m.dst.Exec(ctx, "DROP SCHEMA "+quoteIdent(m.schema)+" CASCADE"); err != nil {
			return err
		}
	}
	if err := m.ensureMeta(ctx, m.dst); err != nil {
		return err
	}
	m.markKey = rand.Int64N(1 << 62)
	return m.src.QueryRow(ctx, "INSERT INTO hv_meta.shard_moves (shard, direction, peer, state) VALUES ($1, 'out', $2, 'copying') RETURNING id", m.shard, dst).Scan(&m.moveID)
}

// lockMoveShard is the advisory lock class a mover holds on its shard
// (session level, on the source).
const lockMoveShard = 0x6878

func (m *mover) ensureMeta(ctx context.Context, c *pgx.Conn) error {
	_, err := c.Exec(ctx, metaDDL)
	return err
}

func (m *mover) hasReplication(ctx context.Context) bool {
	var n int
	_ = m.src.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = $1) + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1)", m.name).Scan(&n)
	var k int
	_ = m.dst.QueryRow(ctx, "SELECT count(*) FROM pg_subscription WHERE subname = $1", m.name).Scan(&k)
	return n+k > 0
}

// dropSubscription drops subscription name on c, detached from its slot
// first so that the drop does not need the source: the slot is dropped on
// the source by itself.
func dropSubscription(ctx context.Context, c *pgx.Conn, name string) error {
	for _, q := range []string{"ALTER SUBSCRIPTION %s DISABLE", "ALTER SUBSCRIPTION %s SET (slot_name = NONE)", "DROP SUBSCRIPTION %s"} {
		if _, err := c.Exec(ctx, fmt.Sprintf(q, quoteIdent(name))); err != nil {
			return err
		}
	}
	return nil
}

// dropReplication drops the subscription on dst, the slot and the
// publication on src, whichever exist. The subscription is detached from
// its slot first, so that dropping it never connects to the source.
func dropReplication(ctx context.Context, src, dst *pgx.Conn, name string) error {
	var sub bool
	if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))", name).Scan(&sub); err != nil {
		return err
	}
	if sub {
		if err := dropSubscription(ctx, dst, name); err != nil {
			return err
		}
	}
	// The slot may still be in use for a moment after the subscription's
	// worker was told to stop.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var active, exists bool
		if err := src.QueryRow(ctx, "SELECT count(*) > 0, coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&exists, &active); err != nil {
			return err
		}
		if !exists {
			break
		}
		if !active {
			if _, err := src.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err == nil {
				break
			} else if time.Now().After(deadline) {
				return err
			}
		} else if time.Now().After(deadline) {
			return fmt.Errorf("replication slot %s stays active", name)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	_, err := src.Exec(ctx, "DROP PUBLICATION IF EXISTS "+quoteIdent(name))
	return err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// copySchema applies the shard schema's DDL, from pg_dump --schema-only,
// on the target, with the extensions of the fleet's extension schema.
func (m *mover) copySchema(ctx context.Context) error {
	ext := m.c.Config().ExtSchema()
	if ext != "" {
		rows, err := m.src.Query(ctx, "SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE n.nspname = $1", ext)
		if err != nil {
			return err
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if _, err := m.dst.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+quoteIdent(ext)); err != nil {
			return err
		}
		for _, n := range names {
			if _, err := m.dst.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS "+quoteIdent(n)+" SCHEMA "+quoteIdent(ext)); err != nil {
				return err
			}
		}
	}
	ddl, err := pgDumpSchema(ctx, m.opts.BinDir, &m.from, m.schema)
	if err != nil {
		return err
	}
	// One transaction: a failure leaves no half-made schema. Simple
	// protocol: a dump is many statements.
	// Until the fence the target's copy refuses writes (but the
	// subscription's, which run as replica and fire no ordinary trigger)
	// with the error of a missing table: a process that still believes
	// this host owns the shard (it did once) looks up where it lives.
	var guard strings.Builder
	guard.WriteString(movingGuardFunc)
	for _, t := range m.tables {
		fmt.Fprintf(&guard, "CREATE TRIGGER hv_moving BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION hv_meta.moving();\n", t)
	}
	_, err = m.dst.Exec(ctx, "BEGIN;\n"+ddl+"\n"+guard.String()+"COMMIT;", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		_, _ = m.dst.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		return fmt.Errorf("applying pg_dump --schema-only -n %s on the target: %w", m.schema, err)
	}
	return nil
}

// movingGuardFunc is the trigger function of a target's copy during a move.
const movingGuardFunc = `CREATE OR REPLACE FUNCTION hv_meta.moving() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
	RAISE EXCEPTION 'hv: shard % is moving to this host and not served here yet', TG_TABLE_SCHEMA USING ERRCODE = '42P01';
END $f$;
`

// pgDumpSchema returns the DDL of schema on host h by pg_dump
// --schema-only, passing the password through the environment.
func pgDumpSchema(ctx context.Context, binDir string, h *HostConfig, schema string) (string, error) {
	bin, err := findPgDump(binDir)
	if err != nil {
		return "", err
	}
	params := make(map[string]string, len(h.Params))
	for k, v := range h.Params {
		params[k] = v
	}
	env := os.Environ()
	if pw, ok := params["password"]; ok {
		delete(params, "password")
		env = append(env, "PGPASSWORD="+pw)
	}
	conn := HostConfig{Params: params}.ConnString()
	cmd := exec.CommandContext(ctx, bin, "--schema-only", "--no-publications", "--no-subscriptions",
		"-n", schema, "-d", conn)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("pg_dump --schema-only -n %s on host %s: %v: %s", schema, h.Name(), err, strings.TrimSpace(stderr.String()))
	}
	// Recent pg_dumps add psql meta-commands (\restrict): psql's, not
	// the server's. pg_dump empties search_path for the session; the
	// connection is the mover's own.
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "\\") {
			lines[i] = ""
		}
	}
	return strings.Join(lines, "\n"), nil
}

// findPgDump returns the pg_dump to use: in binDir, else on PATH, else the
// newest /usr/lib/postgresql/*/bin/pg_dump.
func findPgDump(binDir string) (string, error) {
	if binDir != "" {
		return filepath.Join(binDir, "pg_dump"), nil
	}
	if p, err := exec.LookPath("pg_dump"); err == nil {
		return p, nil
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_dump")
	if len(found) == 0 {
		return "", errors.New("pg_dump not found: install the PostgreSQL client (Debian: apt-get install postgresql-client) or set MoveOptions.BinDir")
	}
	sort.Slice(found, func(i, j int) bool { return versionOf(found[i]) < versionOf(found[j]) })
	return found[len(found)-1], nil
}

// versionOf returns the major version in a /usr/lib/postgresql/N/bin path.
func versionOf(p string) int {
	n := 0
	fmt.Sscanf(filepath.Base(filepath.Dir(filepath.Dir(p))), "%d", &n)
	return n
}

// startReplication makes the publication, slot and subscription.
func (m *mover) startReplication(ctx context.Context) error {
	pub := "CREATE PUBLICATION " + quoteIdent(m.name) + " FOR TABLE "
	if len(m.tables) > 0 {
		pub += strings.Join(m.tables, ", ") + ", "
	}
	pub += fmt.Sprintf("hv_meta.move_marks WHERE (move_id = %d)", m.markKey)
	if _, err := m.src.Exec(ctx, pub); err != nil {
		return err
	}
	if _, err := m.src.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", m.name); err != nil {
		return err
	}
	conn := m.from.ConnString()
	if _, err := m.dst.Exec(ctx, fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (create_slot = false, slot_name = %s, copy_data = true)",
		quoteIdent(m.name), quoteLiteral(conn), quoteIdent(m.name), quoteIdent(m.name))); err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), conn, "<connection>"))
	}
	return nil
}

// poll is how often the mover looks at the target.
const poll = 5 * time.Millisecond

// waitCopied waits until every table has finished its initial copy.
func (m *mover) waitCopied(ctx context.Context) error {
	last := time.Time{}
	for {
		var total, ready int
		if err := m.dst.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE srsubstate = 'r') FROM pg_subscription_rel
			WHERE srsubid = (SELECT oid FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))`, m.name).Scan(&total, &ready); err != nil {
			return err
		}
		if total > 0 && ready == total {
			return nil
		}
		if time.Since(last) > 200*time.Millisecond {
			last = time.Now()
			p := m.measure(ctx)
			p.Tables, p.TablesReady = total, ready
			m.progress(p)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// measure reads how much of the shard the target holds and the slot's lag.
func (m *mover) measure(ctx context.Context) MoveProgress {
	var p MoveProgress
	_ = m.dst.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`, m.schema).Scan(&p.Bytes, &p.Rows)
	_ = m.src.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = $1`, m.name).Scan(&p.LagBytes)
	return p
}

// mark writes mark seq of the move on the source (autocommit) and waits
// until it has been applied on the target, or until deadline.
func (m *mover) mark(ctx context.Context, seq int, deadline time.Time) error {
	if _, err := m.marks.Exec(ctx, "INSERT INTO hv_meta.move_marks VALUES ($1, $2)", m.markKey, seq); err != nil {
		return err
	}
	for {
		var ok bool
		if err := m.dst.QueryRow(ctx, "SELECT EXISTS (SELECT FROM hv_meta.move_marks WHERE move_id = $1 AND seq = $2)", m.markKey, seq).Scan(&ok); err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errDeadline
		}
		if err := sleepCtx(ctx, poll); err != nil {
			return err
		}
	}
}

var errDeadline = errors.New("deadline")

// catchUp waits until a mark reaches the target within half of MaxPause:
// then the cut-over, which waits for one more, likely fits in it.
func (m *mover) catchUp(ctx context.Context) error {
	for seq := 1; ; seq++ {
		start := time.Now()
		err := m.mark(ctx, seq, start.Add(10*time.Minute))
		if err != nil {
			return err
		}
		p := m.measure(ctx)
		m.progress(p)
		if time.Since(start) < m.opts.MaxPause/2 {
			return nil
		}
	}
}

// seqState is a sequence's position on the source at the fence.
type seqState struct {
	name      string
	last, inc int64
	called    bool
}

// cutOver pauses writes to the shard on the source, waits for the target
// to apply the last of them, sets the target's sequences past the
// source's, compares the row counts and fences the source, in one
// transaction of the source.
func (m *mover) cutOver(ctx context.Context) error {
	tx, err := m.src.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit a no-op
	start := time.Now()
	deadline := start.Add(m.opts.MaxPause)
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", max(1, m.opts.MaxPause.Milliseconds()))); err != nil {
		return err
	}
	// EXCLUSIVE: writes wait, plain reads go on. ALTER SEQUENCE takes a
	// lock that nextval() and setval() wait for.
	if len(m.tables) > 0 {
		if _, err := tx.Exec(ctx, "LOCK TABLE "+strings.Join(m.tables, ", ")+" IN EXCLUSIVE MODE"); err != nil {
			return errorf(ErrMoveAborted, "writes could not be paused within MaxPause %v: %v", m.opts.MaxPause, err)
		}
	}
	var seqs []seqState
	for _, s := range m.sequences {
		if _, err := tx.Exec(ctx, "ALTER SEQUENCE "+s+" NO CYCLE"); err != nil {
			return errorf(ErrMoveAborted, "sequence %s could not be paused within MaxPause %v: %v", s, m.opts.MaxPause, err)
		}
		st := seqState{name: s}
		if err := tx.QueryRow(ctx, "SELECT s.last_value, s.is_called, q.increment_by FROM "+s+" s, pg_sequences q WHERE quote_ident(q.schemaname) || '.' || quote_ident(q.sequencename) = $1", s).Scan(&st.last, &st.called, &st.inc); err != nil {
			return err
		}
		seqs = append(seqs, st)
	}
	if err := m.mark(ctx, 1<<30, deadline); err == errDeadline {
		return errorf(ErrMoveAborted, "the target did not catch up within MaxPause %v", m.opts.MaxPause)
	} else if err != nil {
		return err
	}
	if m.opts.hook != nil {
		if err := m.opts.hook("cutover-locked"); err != nil {
			return crash{err}
		}
	}
	// Sequences past the source's values (by two steps, which keeps the
	// parity next_id()'s generation counter relies on).
	for _, s := range seqs {
		if _, err := m.dst.Exec(ctx, "SELECT setval($1::regclass, greatest($2::bigint + 2 * $3::bigint, (SELECT last_value FROM "+s.name+")), true)", s.name, s.last, s.inc); err != nil {
			return err
		}
	}
	// Row counts, and checksums when asked, both sides.
	for _, t := range m.tables {
		tc := TableCount{Table: t}
		q := "SELECT count(*) FROM " + t
		if m.opts.Checksum {
			q = "SELECT count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM " + t + " x"
		}
		var srcArgs, dstArgs []any
		srcArgs, dstArgs = []any{&tc.Source}, []any{&tc.Target}
		if m.opts.Checksum {
			srcArgs, dstArgs = append(srcArgs, &tc.SourceSum), append(dstArgs, &tc.TargetSum)
		}
		// Both sides at once: the count is part of the pause.
		dstErr := make(chan error, 1)
		go func() { dstErr <- m.dst.QueryRow(ctx, q).Scan(dstArgs...) }()
		srcErr := tx.QueryRow(ctx, q).Scan(srcArgs...)
		if err := errors.Join(srcErr, <-dstErr); err != nil {
			return err
		}
		m.report.Tables = append(m.report.Tables, tc)
		if tc.Source != tc.Target || tc.SourceSum != tc.TargetSum {
			return errorf(ErrMoveAborted, "table %s differs at the fence: source %d rows %s, target %d rows %s", t, tc.Source, tc.SourceSum, tc.Target, tc.TargetSum)
		}
	}
	// The fence: sequences capped, schema renamed, the move recorded.
	for _, s := range seqs {
		bound := "MAXVALUE"
		if s.inc < 0 {
			bound = "MINVALUE"
		}
		if s.called {
			if _, err := tx.Exec(ctx, fmt.Sprintf("ALTER SEQUENCE %s %s %d", s.name, bound, s.last)); err != nil {
				return err
			}
		}
	}
	fenced := fmt.Sprintf("%s_moved_%s_%d", m.schema, time.Now().UTC().Format("20060102150405"), m.moveID)
	if _, err := tx.Exec(ctx, "ALTER SCHEMA "+quoteIdent(m.schema)+" RENAME TO "+quoteIdent(fenced)); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "UPDATE hv_meta.shard_moves SET state = 'done', finished = clock_timestamp(), fenced_schema = $2 WHERE id = $1", m.moveID, fenced); err != nil {
		return err
	}
	// The target takes writes from now on: its guards go just before the
	// fence commits.
	for _, t := range m.tables {
		if _, err := m.dst.Exec(ctx, "DROP TRIGGER IF EXISTS hv_moving ON "+t); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return crash{err} // it may have committed: leave everything for AbortMove to judge
	}
	m.report.Pause = time.Since(start)
	m.report.FencedSchema = fenced
	// The target's own record; a lookup that reaches it without one
	// finds the shard there anyway.
	if _, err := m.dst.Exec(ctx, "INSERT INTO hv_meta.shard_moves (shard, direction, peer, state, finished) VALUES ($1, 'in', $2, 'done', clock_timestamp())", m.shard, m.from.Name()); err != nil {
		return crash{err}
	}
	_ = m.dst.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1`, m.schema).Scan(&m.report.Bytes)
	return nil
}

// crash is an error after which the move must not clean up the target:
// the fence may have committed, or a test hook stands for a crash.
type crash struct{ err error }

func (e crash) Error() string { return e.err.Error() }
func (e crash) Unwrap() error { return e.err }
