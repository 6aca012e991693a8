package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hypervault/hv"
	"github.com/hypervault/hv/migrate"
)

// migrateCmd runs hv migrate up|down|status|create.
func (c *cli) migrateCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", "migrations", "directory of the migration files")
	to := fs.Int64("to", -1, "up to (or down to) this version")
	shards := fs.String("shards", "", "shards to run on, e.g. 1-9,12 (half-open ranges); default all")
	conc := fs.Int("concurrency", 0, "shards at once per host (default pool_max)")
	seq := fs.Bool("seq", false, "create: number sequentially instead of by time")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return fmt.Errorf("%w: migrate needs up, down, status or create", errUsage)
	}
	sub, pos := pos[0], pos[1:]
	if sub == "create" {
		if len(pos) < 1 || len(pos) > 2 {
			return fmt.Errorf("%w: migrate create takes NAME [sql|go]", errUsage)
		}
		kind := "sql"
		if len(pos) == 2 {
			kind = pos[1]
		}
		path, err := migrate.Create(*dir, pos[0], kind, *seq)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "created %s\n", path)
		return nil
	}
	if sub != "up" && sub != "down" && sub != "status" {
		return fmt.Errorf("%w: unknown migrate command %q: use up, down, status or create", errUsage, sub)
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: migrate %s takes no arguments besides flags", errUsage, sub)
	}
	if fi, err := os.Stat(*dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: -dir %s is not a directory of migrations", errUsage, *dir)
	}
	opts := &migrate.Options{Concurrency: *conc}
	if *shards != "" {
		if opts.Shards, err = parseShardList(*shards); err != nil {
			return fmt.Errorf("%w: -shards: %v", errUsage, err)
		}
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
	conn, err := hv.NewConnector(cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	fsys := os.DirFS(*dir)
	var res *migrate.Result
	switch sub {
	case "up":
		opts.Progress = c.progressBar("migrating up")
		if *to >= 0 {
			res = migrate.UpTo(ctx, conn, fsys, *to, opts)
		} else {
			res = migrate.Up(ctx, conn, fsys, opts)
		}
	case "down":
		opts.Progress = c.progressBar("migrating down")
		if *to >= 0 {
			res = migrate.DownTo(ctx, conn, fsys, *to, opts)
		} else {
			res = migrate.Down(ctx, conn, fsys, opts)
		}
	case "status":
		res = migrate.Status(ctx, conn, fsys, opts)
	}
	if sub != "status" {
		applied := 0
		for _, s := range res.Shards {
			applied += len(s.Applied)
		}
		verb := map[string]string{"up": "applied", "down": "rolled back"}[sub]
		fmt.Fprintf(c.stdout, "%s %d migrations on %d shards in %v (at most %s shards at once per host)\n",
			verb, applied, len(res.Shards)-len(res.Failed()), res.Elapsed.Round(time.Millisecond), maxConcurrent(res))
	}
	var target int64 = -1
	if sub == "status" {
		for _, s := range res.Shards {
			target = max(target, s.Target)
		}
	}
	printVersions(c.stdout, res, target)
	if err := res.Err(); err != nil {
		return fmt.Errorf("%d of %d shards failed:\n%w", len(res.Failed()), len(res.Shards), err)
	}
	if sub == "status" && res.Skewed() {
		return errors.New("the shards are at different versions: run hv migrate up")
	}
	return nil
}

// maxConcurrent formats the most shards a run had in progress per host.
func maxConcurrent(res *migrate.Result) string {
	var ns []string
	for _, n := range res.MaxConcurrent {
		ns = append(ns, strconv.Itoa(n))
	}
	slices.Sort(ns)
	if len(ns) == 0 {
		return "0"
	}
	return strings.Join(ns, "/")
}

// printVersions prints which shards are at which version, highest first,
// and the target when known (>= 0).
func printVersions(w io.Writer, res *migrate.Result, target int64) {
	vs := res.Versions()
	keys := make([]int64, 0, len(vs))
	for v := range vs {
		keys = append(keys, v)
	}
	slices.Sort(keys)
	slices.Reverse(keys)
	for _, v := range keys {
		note := ""
		switch {
		case target >= 0 && v < target:
			note = fmt.Sprintf(" (behind: %d pending)", target-v)
		case len(keys) > 1 && v != keys[0]:
			note = " (behind the rest)"
		}
		fmt.Fprintf(w, "version %d: %d shards (%s)%s\n", v, len(vs[v]), migrate.Compact(vs[v]), note)
	}
	if target >= 0 {
		fmt.Fprintf(w, "target version %d\n", target)
	}
}

// parseShardList parses "1-9,12,20-22": single shards and half-open ranges.
func parseShardList(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		a, b, isRange := strings.Cut(part, "-")
		start, err := strconv.Atoi(a)
		if err != nil || start < 0 {
			return nil, fmt.Errorf("%q is not a shard or a range A-B", part)
		}
		end := start + 1
		if isRange {
			if end, err = strconv.Atoi(b); err != nil || end <= start {
				return nil, fmt.Errorf("%q is not a half-open range A-B with A < B", part)
			}
		}
		if end > hv.NumShards {
			return nil, fmt.Errorf("%q goes past shard %d", part, hv.MaxShard)
		}
		for n := start; n < end; n++ {
			out = append(out, n)
		}
	}
	return out, nil
}

// statusExtensions prints each host's extensions and returns its problems.
func (c *cli) statusExtensions(ctx context.Context, ds *hv.Datastore) []string {
	var problems []string
	for _, h := range ds.CheckExtensions(ctx) {
		var names []string
		for n, s := range h.Extensions {
			names = append(names, n+" in "+s)
		}
		slices.Sort(names)
		schema := h.Schema
		if schema == "" {
			schema = "none (search_path is the shard's schema alone)"
		}
		fmt.Fprintf(c.stdout, "host %s  extension schema %s; extensions: %s\n", h.Host, schema, orNone(names))
		for _, p := range h.Problems() {
			fmt.Fprintf(c.stdout, "  warning: %s\n", strings.TrimPrefix(p, "hv: "))
			problems = append(problems, "extension problems on host "+h.Host)
		}
	}
	return problems
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// statusMigrations prints the shards' migration versions when the fleet
// has version tables, and returns a problem when they are skewed.
func (c *cli) statusMigrations(ctx context.Context, ds *hv.Datastore) []string {
	res := migrate.Versions(ctx, ds.Connector(), nil)
	if !res.HasVersionTables() && res.Err() == nil {
		fmt.Fprintln(c.stdout, "migrations: none applied")
		return nil
	}
	var problems []string
	if res.Skewed() {
		fmt.Fprintln(c.stdout, "migrations: warning: the shards are at different versions")
		problems = append(problems, "migration versions skewed")
	} else {
		fmt.Fprintln(c.stdout, "migrations:")
	}
	printVersions(indent{c.stdout}, res, -1)
	if err := res.Err(); err != nil {
		fmt.Fprintf(c.stdout, "  warning: versions not read: %s\n", errorText(ctx, err))
		problems = append(problems, "migration versions not read")
	}
	return problems
}

// indent writes every write indented by two spaces (one line per write).
type indent struct{ w io.Writer }

func (i indent) Write(p []byte) (int, error) {
	if _, err := i.w.Write(append([]byte("  "), p...)); err != nil {
		return 0, err
	}
	return len(p), nil
}
