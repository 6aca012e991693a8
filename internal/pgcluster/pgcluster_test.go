package pgcluster

import (
	"context"
	"errors"
	"github.com/hypervault/hv/internal/ci"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// needBinaries skips the test when the PostgreSQL binaries are missing,
// except on CI (CI=true), where that is a failure.
func needBinaries(t *testing.T) {
	t.Helper()
	if _, err := BinDir(); err != nil {
		if ci.Required() {
			t.Fatalf("CI=true but %v", err)
		}
		t.Skip(err)
	}
}

func startCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	needBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Destroy(); err != nil {
			t.Errorf("Destroy: %v", err)
		}
	})
	return c
}

func connect(ctx context.Context, c *Cluster) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, c.Keywords()+" dbname=postgres connect_timeout=5")
}

func serverPort(t *testing.T, c *Cluster) int {
	t.Helper()
	ctx := context.Background()
	conn, err := connect(ctx, c)
	if err != nil {
		t.Fatalf("connect to %s: %v", c.Keywords(), err)
	}
	defer conn.Close(ctx)
	var port int
	if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		t.Fatalf("SELECT inet_server_port(): %v", err)
	}
	return port
}

func TestBinDir(t *testing.T) {
	needBinaries(t)
	dir, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("BinDir() = %q, but: %v", dir, err)
		}
	}

	// Without PATH, the well-known directories are still searched.
	t.Setenv("PATH", "")
	dir2, err := BinDir()
	if err != nil {
		t.Fatalf("BinDir with empty PATH: %v", err)
	}
	if !hasServerBinaries(dir2) {
		t.Errorf("BinDir with empty PATH = %q, which lacks the server binaries", dir2)
	}

	// Nothing anywhere: ErrNoBinaries with an actionable message.
	old := searchGlobs
	searchGlobs = []string{filepath.Join(t.TempDir(), "*", "bin")}
	defer func() { searchGlobs = old }()
	_, err = BinDir()
	if !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("BinDir with nothing installed: got %v, want ErrNoBinaries", err)
	}
	if !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("error does not say what to install: %v", err)
	}
}

func TestVersionLess(t *testing.T) {
	if !versionLess("/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/15/bin") {
		t.Error("9.6 should sort before 15")
	}
	if versionLess("/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin") {
		t.Error("16 should not sort before 15")
	}
}

func TestLifecycle(t *testing.T) {
	c := startCluster(t, Options{Settings: map[string]string{"work_mem": "7MB"}})
	ctx := context.Background()

	if c.Port() <= 0 {
		t.Fatalf("Port() = %d", c.Port())
	}
	want := "host=127.0.0.1 port=" + strconv.Itoa(c.Port()) + " user=postgres"
	if got := c.Keywords(); got != want {
		t.Errorf("Keywords() = %q, want %q", got, want)
	}
	if got := serverPort(t, c); got != c.Port() {
		t.Errorf("inet_server_port() = %d, want %d", got, c.Port())
	}

	conn, err := connect(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	for setting, want := range map[string]string{
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"max_connections":    "200",
		"work_mem":           "7MB",
		"listen_addresses":   "127.0.0.1",
		"server_encoding":    "UTF8",
	} {
		var got string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", setting).Scan(&got); err != nil {
			t.Fatalf("current_setting(%s): %v", setting, err)
		}
		if got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	port := c.Port()
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if conn, err := connect(ctx, c); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a stopped cluster")
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	if c.Port() != port {
		t.Errorf("port changed across restart: %d -> %d", port, c.Port())
	}
	conn, err = connect(ctx, c)
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	var v int
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 42 {
		t.Errorf("data after restart: v=%d err=%v", v, err)
	}
	conn.Close(ctx)

	dir := c.Dir()
	if err := c.Destroy(); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still there after Destroy (stat err %v)", dir, err)
	}
	if conn, err := connect(ctx, c); err == nil {
		conn.Close(ctx)
		t.Error("connected to a destroyed cluster")
	}
	if err := c.Destroy(); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if err := c.Start(ctx); err == nil {
		t.Error("Start after Destroy succeeded")
	}
}

// Without the template cache, Start runs initdb itself.
func TestStartWithoutCache(t *testing.T) {
	t.Setenv(NoCacheEnv, "1")
	c := startCluster(t, Options{})
	if got := serverPort(t, c); got != c.Port() {
		t.Errorf("inet_server_port() = %d, want %d", got, c.Port())
	}
}

func TestTwoClustersAreSeparate(t *testing.T) {
	a := startCluster(t, Options{})
	b := startCluster(t, Options{})
	if a.Port() == b.Port() {
		t.Fatalf("both clusters on port %d", a.Port())
	}
	if a.Dir() == b.Dir() {
		t.Fatalf("both clusters in %s", a.Dir())
	}
	if pa, pb := serverPort(t, a), serverPort(t, b); pa != a.Port() || pb != b.Port() {
		t.Errorf("server ports %d, %d; want %d, %d", pa, pb, a.Port(), b.Port())
	}
}

// occupy listens on a free port of 127.0.0.1 and returns it.
func occupy(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func TestExplicitPortTaken(t *testing.T) {
	needBinaries(t)
	taken := occupy(t)
	c, err := Start(context.Background(), Options{Port: taken})
	if err == nil {
		c.Destroy()
		t.Fatalf("Start on taken port %d succeeded", taken)
	}
	var se *startError
	if !errors.As(err, &se) || !se.portInUse {
		t.Errorf("error not recognised as port in use: %v", err)
	}
	if !strings.Contains(err.Error(), "server log") || !strings.Contains(err.Error(), "could not") {
		t.Errorf("error lacks the server log tail: %v", err)
	}
	// The message names the log file inside the cluster directory, which
	// must be gone.
	_, rest, ok := strings.Cut(err.Error(), "server log (")
	logFile, _, _ := strings.Cut(rest, ")")
	if !ok || !strings.HasSuffix(logFile, "postgres.log") {
		t.Fatalf("error does not name the log file: %v", err)
	}
	if _, serr := os.Stat(filepath.Dir(logFile)); !os.IsNotExist(serr) {
		t.Errorf("failed Start left %s behind (stat err %v)", filepath.Dir(logFile), serr)
	}
}

func TestExplicitPort(t *testing.T) {
	needBinaries(t)
	port, err := pickPort()
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, Options{Port: port})
	if c.Port() != port {
		t.Fatalf("Port() = %d, want %d", c.Port(), port)
	}
	if got := serverPort(t, c); got != port {
		t.Errorf("inet_server_port() = %d, want %d", got, port)
	}
}

// A picked port that turns out to be taken is replaced by another one.
func TestPickedPortTakenRetries(t *testing.T) {
	needBinaries(t)
	taken := occupy(t)
	calls := 0
	old := pickPort
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return old()
	}
	defer func() { pickPort = old }()

	c := startCluster(t, Options{})
	if calls < 2 {
		t.Fatalf("pickPort called %d times, want a retry", calls)
	}
	if c.Port() == taken {
		t.Fatalf("cluster claims the taken port %d", taken)
	}
	if got := serverPort(t, c); got != c.Port() {
		t.Errorf("inet_server_port() = %d, want %d", got, c.Port())
	}
}

func TestManagedSettingsRejected(t *testing.T) {
	needBinaries(t)
	for _, name := range []string{"port", "listen_addresses", "bad name"} {
		if c, err := Start(context.Background(), Options{Settings: map[string]string{name: "1"}}); err == nil {
			c.Destroy()
			t.Errorf("Start accepted setting %q", name)
		}
	}
}

func TestConfQuote(t *testing.T) {
	if got, want := confQuote(`it's a \ test`), `'it''s a \\ test'`; got != want {
		t.Errorf("confQuote = %s, want %s", got, want)
	}
}

// BenchmarkStart measures a cluster start (and destroy) with the template
// cache warm.
func BenchmarkStart(b *testing.B) {
	if _, err := BinDir(); err != nil {
		b.Skip(err)
	}
	for i := 0; i < b.N; i++ {
		c, err := Start(context.Background(), Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		c.Destroy()
		b.StartTimer()
	}
}

// TestKillPostmasterSignalsOnlyItsServer: the PID in postmaster.pid is
// signalled only while it is this cluster's server. A stale file naming
// another process (here the test itself) leaves that process alone.
func TestKillPostmasterSignalsOnlyItsServer(t *testing.T) {
	c := startCluster(t, Options{})
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	if !isPostmasterOf(pid, c.dataDir) {
		t.Errorf("isPostmasterOf(%d, %s) = false for the running server", pid, c.dataDir)
	}
	if isPostmasterOf(pid, c.dataDir+"-other") {
		t.Error("the server counts as another data directory's")
	}
	if isPostmasterOf(os.Getpid(), c.dataDir) {
		t.Error("the test process counts as the postmaster")
	}
}
