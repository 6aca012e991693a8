package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hypervault/hv"
)

// moveCmd runs hv move: -shard N -to NAME, -abort -shard N, or -cleanup
// -older-than D.
func (c *cli) moveCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("move", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	shard := fs.Int("shard", -1, "the shard to move")
	to := fs.String("to", "", "the target host, as hv status names it (host:port/dbname)")
	maxPause := fs.Duration("max-pause", hv.DefaultMaxPause, "longest write pause at the cut-over; longer aborts the move")
	checksum := fs.Bool("checksum", false, "compare a checksum of every table at the fence, besides row counts")
	abort := fs.Bool("abort", false, "remove what an interrupted move of -shard left behind")
	cleanup := fs.Bool("cleanup", false, "drop the fenced copies that moves left on their sources")
	olderThan := fs.Duration("older-than", 7*24*time.Hour, "with -cleanup: only copies fenced longer ago than this")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: move takes only flags", errUsage)
	}
	ds, err := c.open()
	if err != nil {
		return err
	}
	defer ds.Close()
	conn := ds.Connector()
	switch {
	case *cleanup:
		dropped, err := hv.CleanupMoved(ctx, conn, *olderThan)
		for _, d := range dropped {
			fmt.Fprintf(c.stdout, "dropped %s\n", d)
		}
		if err == nil && len(dropped) == 0 {
			fmt.Fprintf(c.stdout, "no fenced copies older than %v\n", *olderThan)
		}
		return err
	case *shard < 0:
		return fmt.Errorf("%w: move needs -shard N (with -to NAME, or -abort)", errUsage)
	case *abort:
		if err := hv.AbortMove(ctx, conn, *shard); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "shard %d: leftovers of interrupted moves removed\n", *shard)
		return nil
	case *to == "":
		return fmt.Errorf("%w: move needs -to NAME, the target host", errUsage)
	}
	rep, err := hv.MoveShard(ctx, conn, *shard, *to, &hv.MoveOptions{MaxPause: *maxPause, Checksum: *checksum, Progress: c.moveProgress()})
	if err != nil {
		return err
	}
	c.printReport(rep)
	return nil
}

// moveProgress prints a move's phases, and on a terminal how far the copy
// is, redrawn in place.
func (c *cli) moveProgress() func(hv.MoveProgress) {
	term := isTerminal(c.stderr)
	last := ""
	return func(p hv.MoveProgress) {
		if p.Phase != last {
			if term && last != "" {
				fmt.Fprintln(c.stderr)
			}
			last = p.Phase
			if !term {
				fmt.Fprintf(c.stderr, "shard %d: %s\n", p.Shard, p.Phase)
				return
			}
		}
		if term {
			fmt.Fprintf(c.stderr, "\rshard %d: %-8s tables %d/%d, rows %d, %s copied, lag %s   ",
				p.Shard, p.Phase, p.TablesReady, p.Tables, p.Rows, bytesText(p.Bytes), bytesText(p.LagBytes))
		}
	}
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func (c *cli) printReport(rep *hv.MoveReport) {
	var phases []string
	for _, p := range rep.Phases {
		phases = append(phases, fmt.Sprintf("%s %v", p.Phase, p.Duration.Round(time.Millisecond)))
	}
	fmt.Fprintf(c.stdout, "shard %d moved from %s to %s: writes paused %v; %s\n", rep.Shard, rep.From, rep.To,
		rep.Pause.Round(time.Millisecond), strings.Join(phases, ", "))
	for _, t := range rep.Tables {
		fmt.Fprintf(c.stdout, "  %s: %d rows on both\n", t.Table, t.Source)
	}
	fmt.Fprintf(c.stdout, "  the source's copy is fenced as %s (hv move -cleanup drops it)\n", rep.FencedSchema)
}

// rebalanceCmd runs hv rebalance [-dry-run] [-drain NAME].
func (c *cli) rebalanceCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rebalance", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dry := fs.Bool("dry-run", false, "print the plan only")
	var drain []string
	fs.Func("drain", "a host to move every shard off (repeatable)", func(s string) error { drain = append(drain, s); return nil })
	maxPause := fs.Duration("max-pause", hv.DefaultMaxPause, "longest write pause of each move")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: rebalance takes only flags", errUsage)
	}
	ds, err := c.open()
	if err != nil {
		return err
	}
	defer ds.Close()
	plan, err := hv.RebalancePlan(ctx, ds.Connector(), drain)
	if err != nil {
		return err
	}
	if len(plan) == 0 {
		fmt.Fprintln(c.stdout, "balanced: nothing to move")
		return nil
	}
	for i, m := range plan {
		fmt.Fprintf(c.stdout, "%d/%d: shard %d from %s to %s\n", i+1, len(plan), m.Shard, m.From, m.To)
	}
	if *dry {
		return nil
	}
	start := time.Now()
	_, err = hv.Rebalance(ctx, ds.Connector(), drain, &hv.MoveOptions{MaxPause: *maxPause, Progress: c.moveProgress()},
		func(_ hv.PlannedMove, rep *hv.MoveReport) { c.printReport(rep) })
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "rebalanced: %d moves in %v\n", len(plan), time.Since(start).Round(time.Millisecond))
	return nil
}

// statusMoves prints where shards really live when that differs from the
// DSN, and moves in progress; it returns the problems found.
func (c *cli) statusMoves(ctx context.Context, conn *hv.Connector) []string {
	var problems []string
	loc, err := hv.Locate(ctx, conn)
	if err != nil {
		fmt.Fprintf(c.stdout, "moves: cannot locate shards: %v\n", err)
		return []string{"shards not located"}
	}
	cfg := conn.Config()
	for _, s := range sortedKeys(loc) {
		dsn := "no host"
		if i, ok := cfg.HostFor(s); ok {
			dsn = cfg.Hosts[i].Name()
		}
		fmt.Fprintf(c.stdout, "shard %d lives on %s (the DSN says %s)\n", s, loc[s], dsn)
	}
	moves, err := hv.MoveStatus(ctx, conn)
	if err != nil {
		fmt.Fprintf(c.stdout, "moves: %v\n", err)
		return []string{"move records unreadable"}
	}
	for _, m := range moves {
		if m.State == "copying" && m.Direction == "out" {
			fmt.Fprintf(c.stdout, "move in progress (or interrupted: hv move -abort -shard %d): shard %d from %s to %s since %s\n",
				m.Shard, m.Shard, m.Host, m.Peer, m.Started.Format(time.RFC3339))
			problems = append(problems, "move in progress")
		}
	}
	return problems
}

func sortedKeys(m map[int]string) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
