// Package pgcluster starts and stops throwaway PostgreSQL clusters built
// from the PostgreSQL server binaries installed on the local machine.
//
// A cluster lives in its own temporary directory (data directory, Unix
// socket and server log; under /dev/shm when that is available and TMPDIR
// is not set, otherwise under os.TempDir()), listens on 127.0.0.1 only, trusts every local
// connection for user postgres and runs with settings that trade durability
// for speed (fsync=off and friends). It is meant for tests and demos, never
// for data that matters.
//
// When the calling process runs as root, the directory is handed to the
// postgres system user and initdb/pg_ctl are run through
// "runuser -u postgres", because PostgreSQL refuses to run as root.
//
// Each cluster directory records the process that started it. The first
// Start in a process removes clusters whose owning process has exited
// without destroying them (a test binary killed by a timeout, say): a
// cluster never outlives its process for long.
//
// To keep start-up fast, a freshly initialised data directory is cached
// under the user cache directory (for example ~/.cache/hv-pgcluster) and
// copied for later clusters instead of running initdb again. Any problem
// with the cache silently falls back to running initdb.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoBinaries is returned (wrapped) by BinDir and Start when the
// PostgreSQL server binaries cannot be found on this machine.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: " +
	"install postgresql (Debian: apt-get install postgresql) or put its bin directory on PATH")

// searchGlobs lists the directory patterns BinDir tries last, in order.
// Within one pattern the highest version wins. It is a variable so tests
// can replace it.
var searchGlobs = []string{
	"/usr/lib/postgresql/*/bin", // Debian, Ubuntu
	"/usr/pgsql-*/bin",          // RHEL, Fedora (PGDG packages)
}

// BinDir returns the directory that holds the PostgreSQL server binaries
// (initdb, pg_ctl and postgres). It looks, in order, at initdb on $PATH,
// at the output of "pg_config --bindir" and at /usr/lib/postgresql/*/bin
// (and /usr/pgsql-*/bin), preferring the highest version there. Symbolic
// links are resolved, so the result is the real installation directory.
// If nothing is found the error wraps ErrNoBinaries.
func BinDir() (string, error) {
	var tried []string
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dir = filepath.Dir(real)
		}
		if hasServerBinaries(dir) {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		out, err := exec.Command(p, "--bindir").Output()
		if err == nil {
			dir := strings.TrimSpace(string(out))
			if hasServerBinaries(dir) {
				return dir, nil
			}
			tried = append(tried, dir)
		}
	}
	for _, pattern := range searchGlobs {
		matches, _ := filepath.Glob(pattern)
		sort.Slice(matches, func(i, j int) bool {
			return versionLess(matches[j], matches[i]) // highest first
		})
		for _, dir := range matches {
			if hasServerBinaries(dir) {
				return dir, nil
			}
			tried = append(tried, dir)
		}
	}
	if len(tried) > 0 {
		return "", fmt.Errorf("%w (looked in %s)", ErrNoBinaries, strings.Join(tried, ", "))
	}
	return "", ErrNoBinaries
}

// hasServerBinaries reports whether dir holds executable initdb, pg_ctl
// and postgres files.
func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// versionLess compares two paths by the first run of digits (and dots) in
// them, numerically: /usr/lib/postgresql/9.6/bin < /usr/lib/postgresql/15/bin.
func versionLess(a, b string) bool {
	va, vb := pathVersion(a), pathVersion(b)
	for i := 0; i < len(va) && i < len(vb); i++ {
		if va[i] != vb[i] {
			return va[i] < vb[i]
		}
	}
	if len(va) != len(vb) {
		return len(va) < len(vb)
	}
	return a < b
}

func pathVersion(p string) []int {
	start := strings.IndexAny(p, "0123456789")
	if start < 0 {
		return nil
	}
	end := start
	for end < len(p) && (p[end] == '.' || (p[end] >= '0' && p[end] <= '9')) {
		end++
	}
	var v []int
	for _, part := range strings.Split(p[start:end], ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			break
		}
		v = append(v, n)
	}
	return v
}

// Options configures Start.
type Options struct {
	// Port is the TCP port to listen on (on 127.0.0.1). Zero picks a free
	// port, and a different one is tried if it turns out to be taken.
	Port int
	// Settings are extra postgresql.conf settings. They override the
	// defaults set by Start (fsync, synchronous_commit, full_page_writes,
	// max_connections). listen_addresses, port and unix_socket_directories
	// are controlled by Start and cannot be overridden here.
	Settings map[string]string
}

// defaultSettings are the fast, non-durable settings every cluster gets
// unless Options.Settings overrides them.
var defaultSettings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
	"max_connections":    "200",
}

// Cluster is a throwaway PostgreSQL cluster started by Start. Its methods
// are safe for concurrent use.
type Cluster struct {
	binDir   string
	dir      string // temporary directory holding everything below
	dataDir  string
	logFile  string
	confFile string
	settings map[string]string
	asRoot   bool // run initdb/pg_ctl through runuser -u postgres
	uid, gid int  // postgres user, when asRoot

	mu        sync.Mutex
	port      int
	running   bool
	destroyed bool
}

// pickPort returns a port on 127.0.0.1 that is free right now. It is a
// variable so tests can simulate a port being taken.
var pickPort = func() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// maxPortAttempts bounds how many ports Start tries when Options.Port is 0.
const maxPortAttempts = 5

// tempRoot returns the directory in which cluster directories are created:
// /dev/shm when TMPDIR is not set and /dev/shm is a writable directory with
// at least 1 GiB free (a cluster on tmpfs initialises and starts several
// times faster than on disk), otherwise "" (meaning os.TempDir()).
func tempRoot() string {
	if os.Getenv("TMPDIR") != "" {
		return ""
	}
	const shm = "/dev/shm"
	var st syscall.Statfs_t
	if err := syscall.Statfs(shm, &st); err != nil {
		return ""
	}
	if uint64(st.Bavail)*uint64(st.Bsize) < 1<<30 {
		return ""
	}
	if syscall.Access(shm, 0x7 /* R_OK|W_OK|X_OK */) != nil {
		return ""
	}
	return shm
}

// Start creates a new cluster in a fresh temporary directory, initialises
// it (initdb --auth=trust -U postgres -E UTF8 --no-sync, or a copy of a
// cached initdb result) and starts the server with pg_ctl start -w. The
// server listens on 127.0.0.1 only, with its Unix socket in the temporary
// directory. When opts.Port is 0 a free port is picked, and if the server
// cannot bind it another one is tried.
//
// On failure nothing is left behind (the directory is removed and any
// server stopped) and the error describes the failing step; errors from
// the server include the tail of its log. If the binaries cannot be found
// the error wraps ErrNoBinaries.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	return start(ctx, opts, (*Cluster).initDataDir)
}

// start is Start with the step that fills the data directory given: initdb
// (or its cached copy) for Start, pg_basebackup for StartStandby.
func start(ctx context.Context, opts Options, fill func(*Cluster, context.Context) error) (*Cluster, error) {
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("pgcluster: invalid port %d", opts.Port)
	}
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	settings := make(map[string]string, len(defaultSettings)+len(opts.Settings))
	for k, v := range defaultSettings {
		settings[k] = v
	}
	for k, v := range opts.Settings {
		if !validSettingName(k) {
			return nil, fmt.Errorf("pgcluster: invalid setting name %q", k)
		}
		switch strings.ToLower(k) {
		case "port", "listen_addresses", "unix_socket_directories":
			return nil, fmt.Errorf("pgcluster: setting %q is managed by pgcluster; use Options.Port", k)
		}
		settings[k] = v
	}

	root := tempRoot()
	reapOnce.Do(func() { reapAbandoned(root) })
	dir, err := os.MkdirTemp(root, "hv-pgcluster-")
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := writeOwner(dir); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	c := &Cluster{
		binDir:   bin,
		dir:      dir,
		dataDir:  filepath.Join(dir, "data"),
		logFile:  filepath.Join(dir, "postgres.log"),
		settings: settings,
	}
	c.confFile = filepath.Join(c.dataDir, confName)
	ok := false
	defer func() {
		if !ok {
			_ = c.Destroy()
		}
	}()

	if os.Geteuid() == 0 {
		uid, gid, err := postgresUser()
		if err != nil {
			return nil, err
		}
		c.asRoot, c.uid, c.gid = true, uid, gid
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("pgcluster: %w", err)
		}
	}

	if err := fill(c, ctx); err != nil {
		return nil, err
	}

	for attempt := 1; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = pickPort(); err != nil {
				return nil, fmt.Errorf("pgcluster: picking a free port: %w", err)
			}
		}
		if err := c.writeConf(port); err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.port = port
		err := c.startLocked(ctx)
		c.mu.Unlock()
		if err == nil {
			ok = true
			return c, nil
		}
		var se *startError
		if opts.Port == 0 && attempt < maxPortAttempts && errors.As(err, &se) && se.portInUse {
			continue
		}
		return nil, err
	}
}

// Port returns the TCP port the cluster listens on (on 127.0.0.1). It
// stays the same across Stop and Start.
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// Keywords returns libpq connection keywords for the cluster's superuser,
// without dbname: "host=127.0.0.1 port=N user=postgres".
func (c *Cluster) Keywords() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port())
}

// Dir returns the cluster's temporary directory. It holds the data
// directory ("data"), the Unix socket and the server log ("postgres.log").
func (c *Cluster) Dir() string { return c.dir }

// LogFile returns the path of the server log file.
func (c *Cluster) LogFile() string { return c.logFile }

// Stop shuts the server down with pg_ctl stop -m fast -w. The data
// directory is kept, so Start can bring the server back on the same port.
// Stopping a stopped cluster does nothing. The error includes the tail of
// the server log if pg_ctl fails.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return errors.New("pgcluster: cluster destroyed")
	}
	if !c.running {
		return nil
	}
	if out, err := c.pgctl(ctx, "stop", "-D", c.dataDir, "-m", "fast", "-w", "-t", "60"); err != nil {
		return fmt.Errorf("pgcluster: pg_ctl stop: %v: %s%s", err, bytes.TrimSpace(out), c.logTail(0))
	}
	c.running = false
	return nil
}

// Start starts the server again after Stop, on the same port. Starting a
// running cluster does nothing. It fails if the cluster was destroyed or
// if the server does not come up (for example because another process
// took the port meanwhile); the error then includes the tail of the
// server log.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return errors.New("pgcluster: cluster destroyed")
	}
	if c.running {
		return nil
	}
	return c.startLocked(ctx)
}

// Destroy stops the server immediately (pg_ctl stop -m immediate) if it is
// running and removes the cluster's directory. It may be called more than
// once; later calls do nothing. It returns an error if the directory could
// not be removed.
func (c *Cluster) Destroy() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return nil
	}
	c.destroyed = true
	if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); err == nil || c.running {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := c.pgctl(ctx, "stop", "-D", c.dataDir, "-m", "immediate", "-w", "-t", "20")
		cancel()
		if err != nil {
			c.killPostmaster()
		}
		c.running = false
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("pgcluster: removing %s: %w", c.dir, err)
	}
	return nil
}

// killPostmaster is the fallback when pg_ctl stop fails: it sends SIGQUIT
// (immediate shutdown) to the PID in postmaster.pid, if that process is
// still this cluster's postmaster. A postmaster.pid left by a server that
// died (or by a machine that rebooted) names a PID another process may
// have now: signalling it would kill that process.
func (c *Cluster) killPostmaster() {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 1 || !isPostmasterOf(pid, c.dataDir) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// isPostmasterOf reports whether process pid is a postgres server started
// on dataDir (its command line names the binary and the directory).
func isPostmasterOf(pid int, dataDir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "postgres" {
		return false
	}
	return slices.Contains(args[1:], dataDir)
}

// startError is returned by startLocked when pg_ctl start fails.
type startError struct {
	msg       string
	portInUse bool
}

func (e *startError) Error() string { return e.msg }

// startLocked runs pg_ctl start -w on the configured port. c.mu must be held.
func (c *Cluster) startLocked(ctx context.Context) error {
	var logOffset int64
	if fi, err := os.Stat(c.logFile); err == nil {
		logOffset = fi.Size()
	}
	out, err := c.pgctl(ctx, "start", "-D", c.dataDir, "-l", c.logFile, "-w", "-t", "60")
	if err != nil {
		if _, serr := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); serr == nil {
			// pg_ctl gave up (timeout, cancelled context) but the server may
			// still be coming up; do not leave it running behind our back.
			stopCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if _, e := c.pgctl(stopCtx, "stop", "-D", c.dataDir, "-m", "immediate", "-w", "-t", "15"); e != nil {
				c.killPostmaster()
			}
			cancel()
		}
		logText := c.readLog(logOffset)
		inUse := strings.Contains(logText, "Address already in use") ||
			strings.Contains(logText, "could not bind IPv4 address") ||
			strings.Contains(logText, "could not create any TCP/IP sockets")
		return &startError{
			msg: fmt.Sprintf("pgcluster: pg_ctl start on port %d: %v: %s%s",
				c.port, err, bytes.TrimSpace(out), c.logTail(logOffset)),
			portInUse: inUse,
		}
	}
	c.running = true
	return nil
}

// pgctl runs the pg_ctl binary with args.
func (c *Cluster) pgctl(ctx context.Context, args ...string) ([]byte, error) {
	return c.run(ctx, filepath.Join(c.binDir, "pg_ctl"), args...)
}

// run runs a PostgreSQL binary, as the postgres user when running as root,
// and returns its combined output.
func (c *Cluster) run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	name := bin
	if c.asRoot {
		name = "runuser"
		args = append([]string{"-u", "postgres", "--", bin}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.dir // the caller's working directory may be unreadable for postgres
	cmd.Env = childEnv()
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// childEnv is the environment for PostgreSQL binaries: the current one
// without PG* variables (PGDATA, PGPORT, ... would override our choices)
// and with messages in English so that the server log can be parsed.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// readLog returns the server log from offset on (at most the last 64 KiB).
func (c *Cluster) readLog(offset int64) string {
	f, err := os.Open(c.logFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	const max = 64 << 10
	if fi.Size()-offset > max {
		offset = fi.Size() - max
	}
	buf := make([]byte, fi.Size()-offset)
	n, _ := f.ReadAt(buf, offset)
	return string(buf[:n])
}

// logTail formats the last lines of the server log written since offset,
// for inclusion in an error message. It returns "" if there is none.
func (c *Cluster) logTail(offset int64) string {
	text := strings.TrimSpace(c.readLog(offset))
	if text == "" {
		return ""
	}
	lines := strings.Split(text, "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\nserver log (" + c.logFile + ") tail:\n" + strings.Join(lines, "\n")
}

// confName is the configuration file, included from postgresql.conf, that
// holds the settings pgcluster manages.
const confName = "hv_pgcluster.conf"

// writeConf (re)writes the managed configuration file for port.
func (c *Cluster) writeConf(port int) error {
	var b strings.Builder
	b.WriteString("# Written by hv/internal/pgcluster; rewritten on every start.\n")
	fmt.Fprintf(&b, "listen_addresses = '127.0.0.1'\n")
	fmt.Fprintf(&b, "port = %d\n", port)
	fmt.Fprintf(&b, "unix_socket_directories = %s\n", confQuote(c.dir))
	keys := make([]string, 0, len(c.settings))
	for k := range c.settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, confQuote(c.settings[k]))
	}
	if err := os.WriteFile(c.confFile, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("pgcluster: writing %s: %w", c.confFile, err)
	}
	if c.asRoot {
		if err := os.Chown(c.confFile, c.uid, c.gid); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
	}
	return nil
}

// confQuote quotes a postgresql.conf value.
func confQuote(v string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", "''") + "'"
}

// validSettingName reports whether name looks like a configuration
// parameter name (letters, digits, '_' and '.' for extension settings).
func validSettingName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		if !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
