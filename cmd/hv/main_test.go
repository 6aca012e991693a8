package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// runCLI runs the command line in-process and returns its exit status,
// standard output and standard error.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestKeyDecode(t *testing.T) {
	t.Setenv("HV_DSN", "")
	created := time.Date(2024, 5, 1, 12, 30, 45, 123e6, time.UTC)
	k, err := hv.NewKey(created, 12, 5)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "key", k.String())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"created   2024-05-01T12:30:45.123Z", "shard     12", "added id  5"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// With a DSN the fleet's epoch decodes the time; no server is needed.
	l, err := hv.NewLayout(time.UnixMilli(1500000000000))
	if err != nil {
		t.Fatal(err)
	}
	k, err = l.NewKey(created, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCLI(t, "-dsn", "shards=0-8 host=nowhere.invalid; epoch=1500000000000", "key", k.String())
	if code != 0 || !strings.Contains(out, "created   2024-05-01T12:30:45.123Z") || !strings.Contains(out, "shard     3") {
		t.Errorf("exit %d, output:\n%s%s", code, out, errOut)
	}

	for _, bad := range [][]string{{"key", "-5"}, {"key", "abc"}, {"key"}, {"key", "1", "2"}} {
		code, _, errOut := runCLI(t, bad...)
		if code == 0 || errOut == "" {
			t.Errorf("%q: exit %d, stderr %q", bad, code, errOut)
		}
	}
}

func TestUsage(t *testing.T) {
	t.Setenv("HV_DSN", "")
	if code, _, errOut := runCLI(t); code != 2 || !strings.Contains(errOut, "usage:") {
		t.Errorf("no command: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "status"); code != 2 || !strings.Contains(errOut, "HV_DSN") {
		t.Errorf("status without DSN: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "-dsn", "shards=1-2 host=x", "put", "-kind", "1", "a=b"); code != 2 || !strings.Contains(errOut, "-shard") {
		t.Errorf("put without -shard: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "-dsn", "shards=1-2 host=x", "put", "-shard", "1", "novalue"); code != 2 || !strings.Contains(errOut, "key=value") {
		t.Errorf("put with a bad pair: exit %d, %q", code, errOut)
	}
	if code, out, _ := runCLI(t, "help"); code != 0 || !strings.Contains(out, "demo") {
		t.Errorf("help: exit %d, %q", code, out)
	}
}

// Errors never show the password: not for a bad DSN, not for a host that
// cannot be reached.
func TestErrorsHidePassword(t *testing.T) {
	t.Setenv("HV_DSN", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-dsn", "shards=1-9 host=h password=sekrit99; bogus=1", "status"}, "invalid configuration"},
		{[]string{"-dsn", "shards=1-9 host=h password='sekrit99'; shards=5-10 host=g password=sekrit99", "init"}, "overlaps"},
		{[]string{"-dsn", "shards=1-17 host=127.0.0.1 port=1 password=sekrit99 dbname=d", "get", "3490266505881333761"}, "127.0.0.1:1/d"},
		{[]string{"-dsn", "shards=1-9 host=127.0.0.1 port=1 password=sekrit99 dbname=d; driver=postgres", "put", "-shard", "3", "-kind", "1", "a=b"}, "shard 3"},
	} {
		code, out, errOut := runCLI(t, tc.args...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %q", tc.args, code, errOut)
		}
		if strings.Contains(errOut+out, "sekrit99") {
			t.Errorf("%q: the password shows: %q", tc.args, errOut)
		}
	}
}

// twoServerDSN creates a database on each of two PostgreSQL servers and
// returns an hv DSN with shards 1-8 on one and 9-16 on the other.
func twoServerDSN(t *testing.T) string {
	t.Helper()
	servers := pgtest.Servers(t, 2)
	return fmt.Sprintf("shards=1-9 %s; shards=9-17 %s", servers[0].CreateDatabase(t), servers[1].CreateDatabase(t))
}

func TestInitPutGetStatus(t *testing.T) {
	dsn := twoServerDSN(t)
	t.Setenv("HV_DSN", dsn)

	for range 2 {
		code, out, errOut := runCLI(t, "init")
		if code != 0 || !strings.Contains(out, "16 shards ready") {
			t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
		}
	}
	// Flags may follow the pairs.
	code, out, errOut := runCLI(t, "put", "beep=boop", "-shard", "12", "eq=a=b", `q="x"`, "empty=", "-kind", "3")
	if code != 0 {
		t.Fatalf("put: exit %d: %s", code, errOut)
	}
	k, err := hv.ParseKey(strings.TrimSpace(out))
	if err != nil || k.ShardID() != 12 {
		t.Fatalf("put printed %q: %v", out, err)
	}

	code, out, errOut = runCLI(t, "-dsn", dsn, "get", k.String())
	if code != 0 {
		t.Fatalf("get: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"kind      3", "shard     12", `"beep"=>"boop"`, `"eq"=>"a=b"`, `"q"=>"\"x\""`, `"empty"=>""`, "updated   20"} {
		if !strings.Contains(out, want) {
			t.Errorf("get output lacks %q:\n%s", want, out)
		}
	}

	missing := k + 512
	if code, _, errOut := runCLI(t, "get", missing.String()); code != 1 || !strings.Contains(errOut, "no rows") || !strings.Contains(errOut, missing.String()) {
		t.Errorf("get missing: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "put", "-shard", "40", "-kind", "1", "a=b"); code != 1 || !strings.Contains(errOut, "shard 40") {
		t.Errorf("put on an unowned shard: exit %d, %q", code, errOut)
	}

	code, out, errOut = runCLI(t, "status")
	if code != 0 || strings.Count(out, "  up, ping ") != 2 || !strings.Contains(out, "shards 1-9 (8)") || !strings.Contains(out, "shards 9-17 (8)") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}
}

// portsRE finds the throwaway servers' addresses in the demo's output.
var portsRE = regexp.MustCompile(`127\.0\.0\.1:(\d+)/postgres`)

// serverPorts returns the distinct ports of the demo's servers.
func serverPorts(out string) []string {
	seen := map[string]bool{}
	var ports []string
	for _, m := range portsRE.FindAllStringSubmatch(out, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			ports = append(ports, m[1])
		}
	}
	return ports
}

// assertGone fails t when a server still answers on one of ports.
func assertGone(t *testing.T, ports []string) {
	t.Helper()
	for _, p := range ports {
		db, err := sql.Open("pgx", "host=127.0.0.1 user=postgres dbname=postgres connect_timeout=2 port="+p)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Ping(); err == nil {
			t.Errorf("a server still answers on port %s", p)
		}
		db.Close()
	}
}

func TestDemo(t *testing.T) {
	pgtest.Default(t) // skips (or fails with CI=true) without PostgreSQL
	t.Setenv("HV_DSN", "")
	code, out, errOut := runCLI(t, "demo")
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("demo output:\n%s", out)
	for _, want := range []string{
		"Starting two throwaway PostgreSQL servers",
		"owns shards 1-8", "owns shards 9-16",
		"Put kind 1 {beep: boop} on shard 12 -> key",
		`body "beep"=>"boop"`,
		"shard 12, added id",
		"-> 1 entity:",
		"-> 2 entities (shard ",
		"Where the statements of steps 3 to 7 went",
		"statements (0 failed); by shard 12: ",
		"Pool statistics",
		"Removed the throwaway servers",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	ports := serverPorts(out)
	if len(ports) != 2 {
		t.Fatalf("found servers %v in the output, want 2", ports)
	}
	assertGone(t, ports)
}

// With HV_DSN set the demo uses that fleet and leaves no entities behind.
func TestDemoWithDSN(t *testing.T) {
	dsn := twoServerDSN(t)
	t.Setenv("HV_DSN", dsn)
	code, out, errOut := runCLI(t, "demo")
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(out, "throwaway") || !strings.Contains(out, "Using the fleet of the DSN") || !strings.Contains(out, "Deleted the demo's 2 entities") {
		t.Errorf("demo output:\n%s", out)
	}
}

// SIGINT during the demo removes the throwaway servers and fails the run.
func TestDemoInterrupted(t *testing.T) {
	pgtest.Default(t)
	bin := filepath.Join(t.TempDir(), "hv")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "demo")
	cmd.Env = append(os.Environ(), "HV_DSN=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once the servers run (their addresses are printed).
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "owns shards 9-16") {
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	rest, _ := io.ReadAll(stdout)
	out.Write(rest)
	err = cmd.Wait()
	t.Logf("output:\n%s\nstderr:\n%s", out.String(), stderr.String())
	ports := serverPorts(out.String())
	if len(ports) != 2 {
		t.Fatalf("found servers %v in the output, want 2", ports)
	}
	assertGone(t, ports)
	if !strings.Contains(out.String(), "Removed the throwaway servers") {
		t.Error("the demo did not say it removed the servers")
	}
	// The demo may have finished before the signal arrived; if not, it
	// must fail.
	if err == nil && !strings.Contains(out.String(), "Pool statistics") {
		t.Error("the interrupted demo exited 0")
	}
	if err != nil && !strings.Contains(stderr.String(), "hv demo: interrupted") {
		t.Errorf("stderr %q should say the demo was cancelled", stderr.String())
	}
}
