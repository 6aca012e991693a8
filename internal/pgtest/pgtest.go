// Package pgtest gives tests real PostgreSQL servers to talk to.
//
// Default returns the server named by HV_TEST_PG (libpq keywords without
// dbname), else the one answering on 127.0.0.1:5432 as user postgres, else
// a throwaway cluster started from the local PostgreSQL binaries. Servers
// returns n separate servers (distinct clusters, never two databases of one
// server): the default one plus throwaway clusters. Servers are shared by
// every test of the process and removed by Main when the tests end.
//
// When no server can be had, a test is skipped, unless the environment
// variable CI is "true": then it fails, because CI must run every test.
package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"github.com/hypervault/hv/internal/ci"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypervault/hv/internal/pgcluster"
	_ "github.com/jackc/pgx/v5/stdlib" // the pgx database/sql driver used for administration
)

// Server is a PostgreSQL server tests may create databases on.
type Server struct {
	keywords string             // libpq keywords without dbname
	cluster  *pgcluster.Cluster // nil for a server pgtest did not start
}

// Keywords returns libpq keywords for the server's superuser, without
// dbname.
func (s *Server) Keywords() string { return s.keywords }

// Cluster returns the throwaway cluster behind s, or nil when s is a server
// pgtest did not start (it must not be stopped then).
func (s *Server) Cluster() *pgcluster.Cluster { return s.cluster }

var (
	mu       sync.Mutex
	shared   []*Server            // shared[0] is the default server
	owned    []*pgcluster.Cluster // clusters to destroy in Main
	failures = map[int]error{}    // index in shared → why it could not be had
	dbSeq    atomic.Int64
)

// unavailable fails or skips tb: a missing server fails the test on CI,
// and whenever HV_TEST_PG names a server (its user asked for that server,
// so skipping every test and printing ok would hide that it is down).
func unavailable(tb testing.TB, err error) {
	tb.Helper()
	switch {
	case ci.Required():
		tb.Fatalf("PostgreSQL needed (CI=true): %v", err)
	case os.Getenv("HV_TEST_PG") != "":
		tb.Fatalf("PostgreSQL needed: HV_TEST_PG is set but %v", err)
	}
	tb.Skipf("PostgreSQL not available: %v", err)
}

// Default returns the default server, skipping or failing tb when none can
// be had.
func Default(tb testing.TB) *Server {
	tb.Helper()
	servers, err := acquire(1)
	if err != nil {
		unavailable(tb, err)
	}
	return servers[0]
}

// Servers returns n distinct PostgreSQL servers (separate clusters),
// skipping or failing tb when they cannot be had.
func Servers(tb testing.TB, n int) []*Server {
	tb.Helper()
	servers, err := acquire(n)
	if err != nil {
		unavailable(tb, err)
	}
	return servers
}

// Acquire is Servers for code that has no testing.TB, such as TestMain.
func Acquire(n int) ([]*Server, error) { return acquire(n) }

func acquire(n int) ([]*Server, error) {
	mu.Lock()
	defer mu.Unlock()
	for i := len(shared); i < n; i++ {
		if err := failures[i]; err != nil {
			return nil, err
		}
		var s *Server
		var err error
		if i == 0 {
			s, err = findDefault()
		} else {
			s, err = startCluster()
		}
		if err != nil {
			failures[i] = err
			return nil, err
		}
		shared = append(shared, s)
	}
	return append([]*Server(nil), shared[:n]...), nil
}

// findDefault finds or starts the default server.
func findDefault() (*Server, error) {
	if kw := os.Getenv("HV_TEST_PG"); kw != "" {
		if err := ping(kw); err != nil {
			return nil, fmt.Errorf("HV_TEST_PG: %w", err)
		}
		return &Server{keywords: kw}, nil
	}
	const local = "host=127.0.0.1 port=5432 user=postgres"
	if ping(local) == nil {
		return &Server{keywords: local}, nil
	}
	return startCluster()
}

// startCluster starts a throwaway cluster that Main destroys. Called with
// mu held.
func startCluster() (*Server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return nil, err
	}
	owned = append(owned, c)
	return &Server{keywords: c.Keywords(), cluster: c}, nil
}

// NewCluster starts a private throwaway cluster for tb (one it may stop and
// start), destroyed when tb ends.
func NewCluster(tb testing.TB) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		unavailable(tb, err)
	}
	tb.Cleanup(func() { _ = c.Destroy() })
	return &Server{keywords: c.Keywords(), cluster: c}
}

func ping(kw string) error {
	db, err := sql.Open("pgx", kw+" dbname=postgres connect_timeout=3 sslmode=disable")
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

// admin runs statements on the server's postgres database.
func (s *Server) admin(ctx context.Context, stmts ...string) error {
	db, err := sql.Open("pgx", s.keywords+" dbname=postgres sslmode=disable connect_timeout=10")
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// NewDatabase creates a fresh empty database and returns libpq keywords
// for it (with dbname) and a function that drops it.
func (s *Server) NewDatabase(ctx context.Context) (keywords string, drop func() error, err error) {
	name := fmt.Sprintf("hv_test_%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := s.admin(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)", "CREATE DATABASE "+name); err != nil {
		return "", nil, err
	}
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return s.admin(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
	return s.keywords + " dbname=" + name + " sslmode=disable", drop, nil
}

// CreateDatabase creates a fresh empty database for tb, dropped when tb
// ends, and returns libpq keywords for it (with dbname and sslmode).
func (s *Server) CreateDatabase(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kw, drop, err := s.NewDatabase(ctx)
	if err != nil {
		tb.Fatalf("pgtest: creating a database on %s: %v", s.keywords, err)
	}
	tb.Cleanup(func() {
		if err := drop(); err != nil {
			tb.Logf("pgtest: %v", err)
		}
	})
	return kw
}

// Main runs the tests of m after setup (which may be nil) and destroys the
// clusters pgtest started, then exits. When setup fails the run fails if
// CI=true; otherwise only tests (not examples, which need setup) run, and
// those that need PostgreSQL skip.
func Main(m *testing.M, setup func() (cleanup func(), err error)) {
	code := run(m, setup)
	mu.Lock()
	for _, c := range owned {
		_ = c.Destroy()
	}
	mu.Unlock()
	os.Exit(code)
}

func run(m *testing.M, setup func() (func(), error)) int {
	if setup != nil {
		cleanup, err := setup()
		if err != nil {
			if ci.Required() || os.Getenv("HV_TEST_PG") != "" {
				fmt.Fprintf(os.Stderr, "pgtest: setup failed (CI=true or HV_TEST_PG set): %v\n", err)
				return 1
			}
			fmt.Fprintf(os.Stderr, "pgtest: setup failed, running tests only: %v\n", err)
			flag.Parse()
			if f := flag.Lookup("test.run"); f != nil && f.Value.String() == "" {
				_ = flag.Set("test.run", "^(Test|Fuzz)")
			}
		} else if cleanup != nil {
			defer cleanup()
		}
	}
	return m.Run()
}

// ErrNotStarted reports that a server was not started by pgtest and so
// cannot be stopped or started.
var ErrNotStarted = errors.New("pgtest: server was not started by pgtest")

// Stop stops the server, which must be a private cluster from NewCluster.
func (s *Server) Stop(ctx context.Context) error {
	if s.cluster == nil {
		return ErrNotStarted
	}
	return s.cluster.Stop(ctx)
}

// Start starts the server again after Stop.
func (s *Server) Start(ctx context.Context) error {
	if s.cluster == nil {
		return ErrNotStarted
	}
	return s.cluster.Start(ctx)
}

// Port returns the server's TCP port, read from its keywords.
func (s *Server) Port() string {
	for _, f := range strings.Fields(s.keywords) {
		if v, ok := strings.CutPrefix(f, "port="); ok {
			return v
		}
	}
	return "5432"
}
