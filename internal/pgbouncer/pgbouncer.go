// Package pgbouncer starts a throwaway PgBouncer in front of a PostgreSQL
// server, for tests.
//
// The bouncer runs from the pgbouncer binary on PATH (Debian: apt-get install
// pgbouncer), in the foreground as a child of the test process, in its own
// temporary directory (configuration, auth file, log), listening on a free
// port of 127.0.0.1 with auth_type=trust. Every database name is forwarded
// to the target server ("*" wildcard). When the process runs as root the
// bouncer runs as the postgres system user, because PgBouncer refuses to
// run as root. It is killed if the test process dies.
package pgbouncer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotInstalled is returned (wrapped) by Start when no pgbouncer binary
// is on PATH.
var ErrNotInstalled = errors.New("pgbouncer not found on PATH (Debian: apt-get install pgbouncer)")

// Options configure a bouncer.
type Options struct {
	// TargetHost and TargetPort locate the PostgreSQL server (default
	// 127.0.0.1 and 5432).
	TargetHost string
	TargetPort int
	// PoolMode is PgBouncer's pool_mode: session (default), transaction or
	// statement.
	PoolMode string
	// PoolSize is default_pool_size, the server connections per database
	// and user (default 4).
	PoolSize int
	// User is the only user in the auth file (default postgres).
	User string
}

// Bouncer is a running PgBouncer.
type Bouncer struct {
	dir  string
	port int
	user string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, valid after done is closed
}

// Start starts a bouncer and waits until it accepts connections.
func Start(ctx context.Context, o Options) (*Bouncer, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", ErrNotInstalled)
	}
	if o.TargetHost == "" {
		o.TargetHost = "127.0.0.1"
	}
	if o.TargetPort == 0 {
		o.TargetPort = 5432
	}
	if o.PoolMode == "" {
		o.PoolMode = "session"
	}
	if o.PoolSize == 0 {
		o.PoolSize = 4
	}
	if o.User == "" {
		o.User = "postgres"
	}
	dir, err := os.MkdirTemp("", "hv-pgbouncer-")
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("pgbouncer: running as root needs a postgres system user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		b, err := start(ctx, bin, dir, cred, o)
		if err == nil {
			return b, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

func start(ctx context.Context, bin, dir string, cred *syscall.Credential, o Options) (*Bouncer, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: picking a port: %w", err)
	}
	conf := filepath.Join(dir, "pgbouncer.ini")
	logFile := filepath.Join(dir, "pgbouncer.log")
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = 1000
logfile = %s
ignore_startup_parameters = extra_float_digits,options
server_reset_query = DISCARD ALL
server_check_delay = 0
`, o.TargetHost, o.TargetPort, port, filepath.Join(dir, "users.txt"), o.PoolMode, o.PoolSize, logFile)
	files := map[string]string{
		conf:                            ini,
		filepath.Join(dir, "users.txt"): fmt.Sprintf("%q \"\"\n", o.User),
	}
	for name, text := range files {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
	}
	cmd := exec.Command(bin, conf)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	b := &Bouncer{dir: dir, port: port, user: o.User, cmd: cmd, done: make(chan struct{})}
	go func() {
		b.err = cmd.Wait()
		close(b.done)
	}()
	for {
		c, err := net.DialTimeout("tcp", b.addr(), time.Second)
		if err == nil {
			_ = c.Close()
			return b, nil
		}
		select {
		case <-b.done:
			log, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("pgbouncer exited: %v: %s%s", b.err, stderr.String(), log)
		case <-ctx.Done():
			b.kill()
			return nil, fmt.Errorf("pgbouncer: not listening on %s: %w", b.addr(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (b *Bouncer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// Port returns the port the bouncer listens on.
func (b *Bouncer) Port() int { return b.port }

// Keywords returns libpq keywords that connect through the bouncer (host,
// port, user; no dbname).
func (b *Bouncer) Keywords() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s sslmode=disable", b.port, b.user)
}

// Log returns the bouncer's log so far.
func (b *Bouncer) Log() string {
	out, _ := os.ReadFile(filepath.Join(b.dir, "pgbouncer.log"))
	return string(out)
}

// kill stops the process: SIGINT (PgBouncer's immediate shutdown), then
// SIGKILL if it has not exited within 5 s.
func (b *Bouncer) kill() {
	_ = b.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

// Stop stops the bouncer and removes its directory.
func (b *Bouncer) Stop() error {
	b.kill()
	return os.RemoveAll(b.dir)
}
