package hv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

var errKilled = errors.New("mover killed")

// The mover killed in each phase leaves the shard served by exactly one
// copy; the next MoveShard resumes (cleans up and moves), or AbortMove
// removes the half-made target and the replication objects.
func TestMoveShardKilled(t *testing.T) {
	f := newMoveFleet(t)
	ctx := context.Background()
	const shard = 2
	owner := 0
	seed := f.open(t)
	for i := 0; i < 50; i++ {
		if _, err := seed.Put(ctx, shard, 1, map[string]string{"i": fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	direct := []*pgx.Conn{f.direct(t, 0), f.direct(t, 1)}
	for i, phase := range []string{PhaseSchema, PhaseCopy, PhaseCatchUp, PhaseCutOver, "cutover-locked", PhaseCleanup} {
		t.Run(phase, func(t *testing.T) {
			target := 1 - owner
			mover := f.open(t)
			_, err := MoveShard(ctx, mover.Connector(), shard, f.names[target], &MoveOptions{hook: func(p string) error {
				if p == phase {
					return errKilled
				}
				return nil
			}})
			if !errors.Is(err, errKilled) {
				t.Fatalf("killed in %s: %v", phase, err)
			}
			fenced := phase == PhaseCleanup
			serving := owner
			if fenced {
				serving = target
			}
			// One writable copy: a process on the old DSN writes, and
			// the row lands on the serving copy only.
			assertServedBy(t, f, direct, shard, serving)
			if fenced {
				owner = target
			}
			// Resolve it: every other time a new MoveShard (which cleans
			// up and moves), else AbortMove.
			if i%2 == 0 && !fenced {
				rep, err := MoveShard(ctx, f.open(t).Connector(), shard, f.names[target], nil)
				if err != nil {
					t.Fatalf("MoveShard after the kill: %v", err)
				}
				if !rep.Cleaned {
					t.Error("the resumed move did not report cleaning up")
				}
				owner = target
			} else {
				if err := AbortMove(ctx, f.open(t).Connector(), shard); err != nil {
					t.Fatalf("AbortMove: %v", err)
				}
				if schemaExists(t, direct[1-owner], "shard0002") {
					t.Error("the half-made copy is still there after AbortMove")
				}
			}
			for h := range direct {
				if n := replicationLeft(t, direct[h]); n != 0 {
					t.Errorf("host %d: %d replication objects left", h, n)
				}
			}
			assertServedBy(t, f, direct, shard, owner)
		})
	}
}

// assertServedBy writes through a new process on the old DSN and checks
// that the row is on host serving and that no other copy of the shard is
// called shard0002 and takes writes.
func assertServedBy(t *testing.T, f *moveFleet, direct []*pgx.Conn, shard, serving int) {
	t.Helper()
	ctx := context.Background()
	d := f.open(t)
	tag := fmt.Sprintf("probe-%d-%d", os.Getpid(), len(t.Name()))
	k, err := d.Put(ctx, shard, 7, map[string]string{"probe": tag})
	if err != nil {
		t.Fatalf("write after the kill: %v", err)
	}
	for h := range direct {
		c := direct[h]
		has := schemaExists(t, c, "shard0002")
		var n int64
		if has {
			n = queryInt(t, c, "SELECT count(*) FROM shard0002.entities WHERE id = $1", int64(k))
		}
		switch {
		case h == serving && n != 1:
			t.Errorf("host %d serves the shard but has %d copies of the write", h, n)
		case h != serving && n != 0:
			t.Errorf("host %d does not serve the shard but got the write", h)
		}
	}
}

// The refusals change nothing and say what was wrong.
func TestMoveShardRefused(t *testing.T) {
	f := newMoveFleet(t)
	ctx := context.Background()
	d := f.open(t)
	c := d.Connector()
	src, dst := f.direct(t, 0), f.direct(t, 1)
	refused := func(what string, err error, want ...string) {
		t.Helper()
		var se *ShardError
		if !errors.Is(err, ErrBadMove) || !errors.As(err, &se) {
			t.Errorf("%s: %v, want ErrBadMove", what, err)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want %q in it", what, err, w)
			}
		}
	}
	_, err := MoveShard(ctx, c, 2, f.names[0], nil)
	refused("already on the target", err, "already on host "+f.names[0])
	_, err = MoveShard(ctx, c, 2, "nowhere:5432/db", nil)
	refused("target not in the DSN", err, `target host "nowhere:5432/db" is not in the configuration`, f.names[1])
	if _, err := MoveShard(ctx, c, 99, f.names[1], nil); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("unowned shard: %v", err)
	}

	lock := f.direct(t, 0)
	if _, err := lock.Exec(ctx, "SELECT pg_advisory_lock($1, 2)", lockMoveShard); err != nil {
		t.Fatal(err)
	}
	_, err = MoveShard(ctx, c, 2, f.names[1], nil)
	refused("already moving", err, "already moving")
	if _, err := lock.Exec(ctx, "SELECT pg_advisory_unlock($1, 2)", lockMoveShard); err != nil {
		t.Fatal(err)
	}

	if _, err := dst.Exec(ctx, "CREATE SCHEMA shard0002; CREATE TABLE shard0002.x (id int PRIMARY KEY); INSERT INTO shard0002.x VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	_, err = MoveShard(ctx, c, 2, f.names[1], nil)
	refused("target with data", err, "already has schema shard0002 with rows", f.names[1])
	if queryInt(t, dst, "SELECT count(*) FROM shard0002.x") != 1 {
		t.Error("the target's rows were touched")
	}
	if _, err := dst.Exec(ctx, "DROP SCHEMA shard0002 CASCADE"); err != nil {
		t.Fatal(err)
	}

	if _, err := src.Exec(ctx, "CREATE TABLE shard0003.nokey (v int)"); err != nil {
		t.Fatal(err)
	}
	_, err = MoveShard(ctx, c, 3, f.names[1], nil)
	refused("table without a key", err, "shard0003.nokey", "REPLICA IDENTITY FULL")

	role := fmt.Sprintf("hv_move_plain_%d", os.Getpid())
	if _, err := dst.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = f.direct(t, 1).Exec(context.Background(), "DROP ROLE IF EXISTS "+role) })
	cfg, _ := ParseConfig(f.dsn)
	cfg.Hosts[1].Params["user"] = role
	plain, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = MoveShard(ctx, plain, 2, cfg.Hosts[1].Name(), nil)
	refused("target user without privileges", err, "needs a superuser")

	// A source without wal_level=logical: a host on a server that has
	// another wal_level.
	def := pgtest.Default(t)
	kw := def.CreateDatabase(t)
	var wal string
	plainSrc := pgConnect(t, kw)
	if err := plainSrc.QueryRow(ctx, "SHOW wal_level").Scan(&wal); err != nil {
		t.Fatal(err)
	}
	if wal == "logical" {
		t.Log("the default server has wal_level=logical: not checking the refusal of a non-logical source")
	} else {
		if _, err := plainSrc.Exec(ctx, "CREATE SCHEMA shard0001; CREATE TABLE shard0001.t (id int PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		cfg, err := ParseConfig("shards=1-2 " + kw + "; shards='' " + f.kws[1])
		if err != nil {
			t.Fatal(err)
		}
		nl, err := NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer nl.Close()
		_, err = MoveShard(ctx, nl, 1, cfg.Hosts[1].Name(), nil)
		refused("source without wal_level=logical", err, "wal_level="+wal, "ALTER SYSTEM SET wal_level = logical")
	}
	if n := replicationLeft(t, src) + replicationLeft(t, dst); n != 0 {
		t.Errorf("%d replication objects after refusals", n)
	}
	if schemaExists(t, dst, "shard0002") || schemaExists(t, dst, "shard0003") {
		t.Error("a refused move left a schema on the target")
	}
	// Still served where it was.
	if _, err := d.Put(ctx, 2, 1, map[string]string{"after": "refusals"}); err != nil {
		t.Fatal(err)
	}
}
