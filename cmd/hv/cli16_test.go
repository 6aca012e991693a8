package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// The CLI does not redact by replacing the password's text: with
// password=o the message stays whole (it used to print "1 xxxxxf 1
// hxxxxxsts are down", which also told the password).
func TestPasswordNotReplacedInMessages(t *testing.T) {
	t.Setenv("HV_DSN", "")
	code, out, errOut := runCLI(t, "-dsn", "shards=1-9 host=127.0.0.1 port=1 password=o dbname=d connect_timeout=2", "status")
	if code != 1 || !strings.Contains(errOut, "hv status: 1 of 1 hosts are down") || strings.Contains(errOut+out, "xxxxx") {
		t.Errorf("exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	if !strings.Contains(out, "DOWN: ") || !strings.Contains(out, "host 127.0.0.1:1/d") {
		t.Errorf("stdout %s", out)
	}
}

// One "hv: " prefix: the command's name replaces hv's own, also inside
// wrapped errors.
func TestOnePrefix(t *testing.T) {
	t.Setenv("HV_DSN", "")
	code, _, errOut := runCLI(t, "-dsn", "shards=1-9 host=127.0.0.1 port=1 dbname=d connect_timeout=2", "init")
	if code != 1 || !strings.HasPrefix(errOut, "hv init: host 127.0.0.1:1/d: installing extensions: shard 1 on host 127.0.0.1:1/d: ") || strings.Contains(errOut, "hv: ") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestRoughEdges(t *testing.T) {
	t.Setenv("HV_DSN", "")
	// hv key -5: the key is negative, not an unknown flag.
	if code, _, errOut := runCLI(t, "key", "-5"); code != 1 || !strings.Contains(errOut, `"-5" is negative`) || strings.Contains(errOut, "flag provided") {
		t.Errorf("key -5: exit %d, %q", code, errOut)
	}
	// put needs -kind.
	if code, _, errOut := runCLI(t, "-dsn", "shards=1-2 host=x", "put", "-shard", "1", "a=b"); code != 2 || !strings.Contains(errOut, "put needs -kind K") {
		t.Errorf("put without -kind: exit %d, %q", code, errOut)
	}
	// Flags after the pairs are read (here: -shard is missing its value).
	if code, _, errOut := runCLI(t, "-dsn", "shards=1-2 host=x", "put", "a=b", "-kind", "1", "-shard"); code != 2 || !strings.Contains(errOut, "flag needs an argument: -shard") {
		t.Errorf("put a=b -shard: exit %d, %q", code, errOut)
	}
	// After "--" a pair may start with '-'.
	if code, _, errOut := runCLI(t, "-dsn", "shards=1-2 host=x", "put", "-kind", "1", "--", "-x=y"); code != 2 || !strings.Contains(errOut, "put needs -shard N") {
		t.Errorf("put -- -x=y: exit %d, %q", code, errOut)
	}
	// A DSN nothing could be read of: no "..." placeholder.
	if code, _, errOut := runCLI(t, "-dsn", "garbage", "status"); code != 1 || strings.Contains(errOut, `"..."`) || !strings.Contains(errOut, `segment 1: missing "="`) {
		t.Errorf("-dsn garbage: exit %d, %q", code, errOut)
	}
	// A misspelt keyword.
	if code, _, errOut := runCLI(t, "-dsn", "shards=1-2 host=x passwrd=sekrit99", "status"); code != 1 || !strings.Contains(errOut, "did you mean password?") || strings.Contains(errOut, "sekrit99") {
		t.Errorf("passwrd: exit %d, %q", code, errOut)
	}
}

// put before init says to run hv init; ranges written inclusively are
// named by init and status; Ctrl-C prints one line.
func TestBeforeInitUnownedInterrupted(t *testing.T) {
	servers := pgtest.Servers(t, 2)
	a, b := servers[0].CreateDatabase(t), servers[1].CreateDatabase(t)
	t.Setenv("HV_DSN", fmt.Sprintf("shards=1-8 %s; shards=9-16 %s", a, b))
	code, _, errOut := runCLI(t, "put", "-shard", "3", "-kind", "1", "a=b")
	if code != 1 || !strings.Contains(errOut, "hv init") {
		t.Errorf("put before init: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "get", "3490266505881333761"); code != 1 || !strings.Contains(errOut, "run hv init first") || strings.Contains(errOut, "hv: ") {
		t.Errorf("get before init: exit %d, %q", code, errOut)
	}

	// Interrupted: one line, not one per shard.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errBuf bytes.Buffer
	if code := run(ctx, []string{"init"}, &out, &errBuf); code != 1 {
		t.Errorf("cancelled init: exit %d", code)
	}
	if lines := strings.Split(strings.TrimSpace(errBuf.String()), "\n"); !strings.HasPrefix(lines[len(lines)-1], "hv init: interrupted: ") || strings.Count(errBuf.String(), "context canceled") != 1 {
		t.Errorf("cancelled init printed:\n%s", errBuf.String())
	}

	code, out2, errOut := runCLI(t, "init")
	if code != 0 || !strings.Contains(errOut, "no host owns shard(s) 8") || !strings.Contains(errOut, "shard 16 is unowned too") || !strings.Contains(out2, "shards 1-8 ready") {
		t.Errorf("init: exit %d\n%s%s", code, out2, errOut)
	}
	code, out2, _ = runCLI(t, "status")
	if code != 1 || !strings.Contains(out2, "warning: no host owns shard(s) 8") || !strings.Contains(out2, "shards=1-9; shards=9-17") {
		t.Errorf("status: exit %d\n%s", code, out2)
	}
}

// hv migrate: three versions over 16 shards on two servers, shard 5 made
// to fail at version 2; the report names it; status and hv status show the
// skew; a re-run finishes it.
func TestMigrateCLI(t *testing.T) {
	servers := pgtest.Servers(t, 2)
	dbs := []string{servers[0].CreateDatabase(t), servers[1].CreateDatabase(t)}
	t.Setenv("HV_DSN", fmt.Sprintf("shards=1-9 %s; shards=9-17 %s; pool_max=4", dbs[0], dbs[1]))
	if code, out, errOut := runCLI(t, "init"); code != 0 {
		t.Fatalf("init: %d %s %s", code, out, errOut)
	}
	direct := func(i int, sql string) {
		t.Helper()
		conn, err := pgx.Connect(context.Background(), dbs[i])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatal(err)
		}
	}
	direct(0, "CREATE TABLE shard0005.tags (x int)")

	code, out, errOut := runCLI(t, "migrate", "up", "-dir", "testdata/migrations")
	if code != 1 || !strings.Contains(errOut, "hv migrate: 1 of 16 shards failed:") || !strings.Contains(errOut, "shard 5 on host ") ||
		!strings.Contains(errOut, "migration 2 (00002_tags.sql): ") || !strings.Contains(errOut, `relation "tags" already exists`) {
		t.Errorf("up: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "applied 46 migrations on 15 shards") || !strings.Contains(out, "version 3: 15 shards (1-5 6-17)") || !strings.Contains(out, "version 1: 1 shards (5) (behind the rest)") {
		t.Errorf("up output:\n%s", out)
	}
	code, out, _ = runCLI(t, "migrate", "status", "-dir", "testdata/migrations")
	if code != 1 || !strings.Contains(out, "version 1: 1 shards (5) (behind: 2 pending)") || !strings.Contains(out, "target version 3") {
		t.Errorf("migrate status: exit %d\n%s", code, out)
	}
	code, out, errOut = runCLI(t, "status")
	if code != 1 || !strings.Contains(out, "migrations: warning: the shards are at different versions") || !strings.Contains(errOut, "migration versions skewed") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}

	direct(0, "DROP TABLE shard0005.tags")
	code, out, errOut = runCLI(t, "migrate", "-dir", "testdata/migrations", "up")
	if code != 0 || !strings.Contains(out, "applied 2 migrations on 16 shards") || !strings.Contains(out, "version 3: 16 shards (1-17)") {
		t.Errorf("re-run: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := runCLI(t, "status"); code != 0 || !strings.Contains(out, "version 3: 16 shards (1-17)") {
		t.Errorf("status after: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "migrate", "down", "-dir", "testdata/migrations", "-shards", "1-3,12")
	if code != 0 || !strings.Contains(out, "rolled back 3 migrations on 3 shards") || !strings.Contains(out, "version 2: 3 shards (1-3 12)") {
		t.Errorf("down: exit %d\n%s%s", code, out, errOut)
	}
}

func TestMigrateCreateCLI(t *testing.T) {
	t.Setenv("HV_DSN", "")
	dir := filepath.Join(t.TempDir(), "m")
	code, out, errOut := runCLI(t, "migrate", "create", "add_users", "-dir", dir, "-seq")
	if code != 0 || !strings.Contains(out, "00001_add_users.sql") {
		t.Fatalf("exit %d %s %s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "00001_add_users.sql")); err != nil {
		t.Error(err)
	}
	if code, _, errOut := runCLI(t, "migrate", "sideways"); code != 2 || !strings.Contains(errOut, `unknown migrate command "sideways"`) {
		t.Errorf("exit %d %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "-dsn", "shards=1-2 host=x", "migrate", "up", "-dir", filepath.Join(dir, "nope")); code != 2 || !strings.Contains(errOut, "not a directory") {
		t.Errorf("exit %d %q", code, errOut)
	}
}
