// Command hv is the command line of the hv library: it creates the shards of
// a fleet, stores and reads entities, decodes keys, shows the fleet's state
// and runs a demonstration.
//
// Usage:
//
//	hv [-dsn DSN] <command> [arguments]
//
// The DSN comes from -dsn, else from the environment variable HV_DSN. The
// commands are:
//
//	init                               create the shards (idempotent) and check their key layout
//	key <id>                           decode a key: created time, shard, added id (no database needed)
//	put -shard N -kind K key=value ... store an entity and print its key
//	get <key>                          print an entity: kind, updated time, body
//	status                             per host: shard range, reachability, extensions, pool, replicas
//	                                   statistics; shards no host owns; migration version skew
//	status -watch [-interval D] [-count N] [-top N]
//	                                   refresh per-host figures and the hottest shards every D (2s)
//	migrate up|down|status [-dir DIR] [-to V] [-shards LIST] [-concurrency N]
//	                                   versioned migrations (goose) on every shard
//	migrate create [-dir DIR] [-seq] NAME [sql|go]
//	                                   a new empty migration file (no database needed)
//	demo                               the tour: with no DSN it starts two throwaway PostgreSQL
//	                                   servers (shards 1-8 and 9-16) and removes them at the end
//
// Flags may come before or after a command's other arguments. Shard ranges
// are printed as in the DSN, half-open: 1-9 is shards 1 to 8. The exit
// status is 0 on success, 1 on error and 2 on a usage error; errors go to
// standard error and never show a password (hv's errors never hold one).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hypervault/hv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: hv [-dsn DSN] <command> [arguments]

The DSN comes from -dsn, else from $HV_DSN.

commands:
  init                                create the shards (idempotent) and check their key layout
  key <id>                            decode a key: created time, shard, added id (no database needed)
  put -shard N -kind K key=value ...  store an entity and print its key
  get <key>                           print an entity: kind, updated time and body
  status                              per host: shard range, reachability, extensions, pool statistics,
                                      replicas (up or down, lag, reads, fallbacks);
                                      unowned shards; migration version skew; moved shards, moves in progress
  status -watch [-interval D] [-count N] [-top N]
                                      refresh per-host figures and the N (5) hottest shards every D (2s),
                                      N times (0: until interrupted), from the servers' statistics
  migrate up|down|status [-dir DIR] [-to V] [-shards LIST] [-concurrency N]
                                      versioned migrations (goose) on every shard; -dir defaults to migrations
  migrate create [-dir DIR] [-seq] NAME [sql|go]
                                      a new empty migration file
  move -shard N -to HOST [-max-pause D] [-checksum]
                                      move a shard to another host online (HOST as status names it)
  move -abort -shard N                remove what an interrupted move of shard N left behind
  move -cleanup [-older-than D]       drop the fenced copies moves left on their sources (default 168h)
  rebalance [-dry-run] [-drain HOST]  move shards, one at a time, until every host owns an equal share
  demo                                the tour; with no DSN it starts two throwaway PostgreSQL servers

Flags may come before or after the other arguments. Shard ranges are half-open, as in the DSN
(1-9 is shards 1 to 8).
`

// errUsage marks errors whose exit status is 2.
var errUsage = errors.New("usage")

// cli is one invocation's state.
type cli struct {
	dsn            string
	stdout, stderr io.Writer
}

// run runs the command line args (without the program name) and returns
// the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("hv", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.dsn, "dsn", "", "hv DSN (default $HV_DSN)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "hv: %v\n%s", err, usage)
		return 2
	}
	if c.dsn == "" {
		c.dsn = os.Getenv("HV_DSN")
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var err error
	switch cmd {
	case "init":
		err = c.initCmd(ctx, rest)
	case "key":
		err = c.keyCmd(rest)
	case "put":
		err = c.putCmd(ctx, rest)
	case "get":
		err = c.getCmd(ctx, rest)
	case "status":
		err = c.statusCmd(ctx, rest)
	case "migrate":
		err = c.migrateCmd(ctx, rest)
	case "move":
		err = c.moveCmd(ctx, rest)
	case "rebalance":
		err = c.rebalanceCmd(ctx, rest)
	case "demo":
		err = c.demoCmd(ctx, rest)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, errUsage) {
		fmt.Fprintf(stderr, "hv %s: %s\n%s", cmd, strings.TrimPrefix(err.Error(), "usage: "), usage)
		return 2
	}
	fmt.Fprintf(stderr, "hv %s: %s\n", cmd, errorText(ctx, err))
	return 1
}

// errorText returns err for the command line, after "hv CMD: ": each
// line without hv's own "hv: " prefix, which the command's name replaces,
// further lines indented. When ctx was cancelled (Ctrl-C) it is one line:
// every shard's "context canceled" says the same. Passwords need no
// redaction here: hv's errors never hold one (they are redacted by
// structure where they are made), and text replacement would garble the
// message, and reveal the password by what it replaced.
func errorText(ctx context.Context, err error) string {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		l = strings.TrimPrefix(l, "hv: ")
		lines[i] = strings.ReplaceAll(l, ": hv: ", ": ")
	}
	if ctx.Err() != nil {
		msg := "interrupted: " + lines[0]
		if len(lines) > 1 {
			msg += fmt.Sprintf(" (and %d more errors)", len(lines)-1)
		}
		return msg
	}
	return strings.Join(lines, "\n  ")
}

// config parses the DSN, which must be set.
func (c *cli) config() (*hv.Config, error) {
	if c.dsn == "" {
		return nil, fmt.Errorf("%w: no DSN: pass -dsn or set HV_DSN", errUsage)
	}
	return hv.ParseConfig(c.dsn)
}

// open opens a Datastore on the DSN.
func (c *cli) open() (*hv.Datastore, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	conn, err := hv.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	return hv.NewDatastore(conn), nil
}

// noArgs parses a command's flags and refuses arguments.
func noArgs(name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: %s takes no arguments", errUsage, name)
	}
	return nil
}

// parseArgs parses fs's flags anywhere among args (hv put a=b -shard 5),
// not only before the first other argument as flag.Parse does, and
// returns the other arguments in order. A negative number (hv key -5) is
// an argument, not a flag; after "--" everything is.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if a := args[0]; a == "--" {
			return append(pos, args[1:]...), nil
		} else if len(a) > 1 && a[0] == '-' && strings.Trim(a[1:], "0123456789") == "" {
			pos = append(pos, a)
			args = args[1:]
			continue
		}
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, nil
}

func (c *cli) initCmd(ctx context.Context, args []string) error {
	if err := noArgs("init", args); err != nil {
		return err
	}
	ds, err := c.open()
	if err != nil {
		return err
	}
	defer ds.Close()
	cfg := ds.Connector().Config()
	if hint := cfg.UnownedHint(); hint != "" {
		fmt.Fprintf(c.stderr, "hv init: warning: %s\n", hint)
	}
	if err := ds.CreateShardsProgress(ctx, c.progressBar("creating shards")); err != nil {
		return err
	}
	if err := ds.CheckLayout(ctx); err != nil {
		return err
	}
	n := 0
	for _, h := range ds.Connector().Stats() {
		fmt.Fprintf(c.stdout, "host %s: shards %s ready\n", h.Host, shardSpan(h.Shards))
		n += h.Shards.Len()
	}
	ext := cfg.ExtSchema()
	if ext == "" {
		ext = "public (ext_schema=none)"
	}
	fmt.Fprintf(c.stdout, "%d shards ready; key epoch %s; extensions in %s\n", n, ds.Layout().Epoch().Format(time.RFC3339Nano), ext)
	return nil
}

// progressBar returns a progress callback that draws a bar labelled label
// when standard output is a terminal, else nil.
func (c *cli) progressBar(label string) func(done, total, shard int, err error) {
	if !isTerminal(c.stdout) {
		return nil
	}
	return func(done, total, _ int, _ error) {
		const width = 30
		bar := strings.Repeat("#", done*width/total) + strings.Repeat(".", width-done*width/total)
		fmt.Fprintf(c.stdout, "\r%s [%s] %d/%d", label, bar, done, total)
		if done == total {
			fmt.Fprintln(c.stdout)
		}
	}
}

// isTerminal reports whether w is a terminal (a character device), where
// a progress bar can redraw itself.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// oneArg returns a command's single argument.
func oneArg(name, what string, args []string) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("%w: %s takes one argument, %s", errUsage, name, what)
	}
	return pos[0], nil
}

func (c *cli) keyCmd(args []string) error {
	arg, err := oneArg("key", "the key", args)
	if err != nil {
		return err
	}
	k, err := hv.ParseKey(arg)
	if err != nil {
		return err
	}
	layout := hv.DefaultLayout()
	if c.dsn != "" { // the fleet's epoch, when one is configured; no connection
		cfg, err := c.config()
		if err != nil {
			return err
		}
		if layout, err = hv.NewLayout(cfg.Epoch); err != nil {
			return err
		}
	}
	printKey(c.stdout, k, layout)
	return nil
}

func printKey(w io.Writer, k hv.Key, layout hv.Layout) {
	fmt.Fprintf(w, "key       %s\n", k)
	fmt.Fprintf(w, "created   %s\n", layout.Created(k).Format(time.RFC3339Nano))
	fmt.Fprintf(w, "shard     %d\n", k.ShardID())
	fmt.Fprintf(w, "added id  %d\n", k.AddedID())
}

func (c *cli) putCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("put", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	shard := fs.Int("shard", -1, "logical shard")
	kind := fs.Int("kind", math.MinInt, "entity kind (smallint)")
	pairs, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *shard < 0 {
		return fmt.Errorf("%w: put needs -shard N", errUsage)
	}
	if *kind == math.MinInt {
		return fmt.Errorf("%w: put needs -kind K, the entity's kind (a number of your application's, -32768..32767)", errUsage)
	}
	data := map[string]string{}
	for _, kv := range pairs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("%w: put: %q is not key=value", errUsage, kv)
		}
		if _, dup := data[k]; dup {
			return fmt.Errorf("%w: put: key %q given twice", errUsage, k)
		}
		data[k] = v
	}
	ds, err := c.open()
	if err != nil {
		return err
	}
	defer ds.Close()
	k, err := ds.Put(ctx, *shard, *kind, data)
	if err != nil {
		return hintInit(err)
	}
	fmt.Fprintln(c.stdout, k)
	return nil
}

func (c *cli) getCmd(ctx context.Context, args []string) error {
	arg, err := oneArg("get", "the key", args)
	if err != nil {
		return err
	}
	k, err := hv.ParseKey(arg)
	if err != nil {
		return err
	}
	ds, err := c.open()
	if err != nil {
		return err
	}
	defer ds.Close()
	e, err := ds.Get(ctx, k)
	if err != nil {
		return hintInit(err)
	}
	fmt.Fprintf(c.stdout, "key       %s\n", e.Key)
	fmt.Fprintf(c.stdout, "shard     %d\n", e.Key.ShardID())
	fmt.Fprintf(c.stdout, "kind      %d\n", e.Kind)
	fmt.Fprintf(c.stdout, "updated   %s\n", formatTime(e.Updated))
	fmt.Fprintf(c.stdout, "body      %s\n", hstoreText(e.Data))
	return nil
}

// hintInit adds a hint to run hv init to an error saying the entities
// table (or the hstore type) does not exist.
func hintInit(err error) error {
	var se interface{ SQLState() string }
	if errors.As(err, &se) && (se.SQLState() == "42P01" || se.SQLState() == "42704") {
		return fmt.Errorf("%w (the shard is not set up for entities: run hv init first)", err)
	}
	return err
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// hstoreText returns h in hstore's text form.
func hstoreText(h hv.Hstore) string {
	v, err := h.Value()
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if v == nil {
		return "NULL"
	}
	return v.(string)
}

func (c *cli) statusCmd(ctx context.Context, args []string) error {
	w, watch, err := statusFlags(args)
	if err != nil {
		return err
	}
	ds, err := c.open()
	if err != nil {
		return err
	}
	defer ds.Close()
	if watch {
		return c.watch(ctx, ds, w) // watch.go
	}
	cfg := ds.Connector().Config()
	var down int
	for _, h := range ds.Connector().Stats() {
		first, ok := h.Shards.First()
		if !ok {
			fmt.Fprintf(c.stdout, "host %s  no shards\n", h.Host)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		start := time.Now()
		err := ds.DB().PingContext(hv.WithShard(pctx, first))
		took := time.Since(start)
		cancel()
		state := fmt.Sprintf("up, ping %v", took.Round(10*time.Microsecond))
		if err != nil {
			state = "DOWN: " + err.Error()
			down++
		}
		fmt.Fprintf(c.stdout, "host %s  shards %s (%d)  %s\n", h.Host, shardSpan(h.Shards), h.Shards.Len(), state)
	}
	fmt.Fprintf(c.stdout, "driver %s, schema pattern %s, key epoch %s\n", cfg.Driver, cfg.SchemaPattern, ds.Layout().Epoch().Format(time.RFC3339Nano))
	var problems []string
	if hint := cfg.UnownedHint(); hint != "" {
		fmt.Fprintf(c.stdout, "warning: %s\n", hint)
		problems = append(problems, "shards unowned")
	}
	if down == 0 {
		problems = append(problems, c.statusExtensions(ctx, ds)...)
		problems = append(problems, c.statusMigrations(ctx, ds)...)
		problems = append(problems, c.statusMoves(ctx, ds.Connector())...) // move.go
	}
	printStats(c.stdout, ds.Connector().Stats(), "")
	problems = append(problems, statusReplicas(ctx, c.stdout, ds.Connector())...) // replicas.go
	if down > 0 {
		return fmt.Errorf("%d of %d hosts are down", down, len(cfg.Hosts))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// printStats prints one line of pool statistics per host.
func printStats(w io.Writer, stats []hv.HostStats, indent string) {
	for _, h := range stats {
		fmt.Fprintf(w, "%spool %s (shards %s): max %d, open %d, in use %d, idle %d, waits %d (%v), timeouts %d\n",
			indent, h.Host, shardSpan(h.Shards), h.PoolMax, h.DB.OpenConnections, h.DB.InUse, h.DB.Idle,
			h.WaitCount, h.WaitDuration.Round(time.Millisecond), h.Timeouts)
	}
}

// shardSpan returns a host's shards as the DSN writes them, half-open:
// "1-9" for shards 1 to 8, "”" for none.
func shardSpan(r hv.ShardSet) string {
	if r.Len() == 0 {
		return "''"
	}
	return r.String()
}

// sortedShards returns the keys of m in order.
func sortedShards(m map[int]int) []int {
	out := make([]int, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	sort.Ints(out)
	return out
}
