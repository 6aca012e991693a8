package hv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
)

// HostShards is one host's name (HostConfig.Name) and the shards it owns,
// the input of PlanRebalance.
type HostShards struct {
	Host   string
	Shards ShardSet
}

// PlannedMove is one move of a rebalance plan.
type PlannedMove struct {
	Shard    int
	From, To string
}

// PlanRebalance returns the moves, to run one at a time, after which every
// host of hosts not named in drain owns an equal share of all the shards
// (the counts differ by at most one; hosts that own more keep the odd
// ones, so that as few shards as possible move), and the drained hosts own
// none. Donors give up their highest shards first, keeping their ranges
// whole. It returns an error when every host is drained or drain names a
// host that is not in hosts.
func PlanRebalance(hosts []HostShards, drain ...string) ([]PlannedMove, error) {
	drained := map[string]bool{}
	for _, d := range drain {
		if !slices.ContainsFunc(hosts, func(h HostShards) bool { return h.Host == d }) {
			return nil, fmt.Errorf("hv: rebalance: host %q to drain is not in the configuration", d)
		}
		drained[d] = true
	}
	var eligible []int
	total := 0
	for i, h := range hosts {
		total += h.Shards.Len()
		if !drained[h.Host] {
			eligible = append(eligible, i)
		}
	}
	if len(eligible) == 0 {
		return nil, errors.New("hv: rebalance: every host is drained, none would own the shards")
	}
	want := make([]int, len(hosts))
	// The odd shards stay with the hosts that own the most already.
	order := slices.Clone(eligible)
	sort.SliceStable(order, func(a, b int) bool { return hosts[order[a]].Shards.Len() > hosts[order[b]].Shards.Len() })
	for k, i := range order {
		want[i] = total / len(eligible)
		if k < total%len(eligible) {
			want[i]++
		}
	}
	// What each donor gives, highest shards first.
	var give []PlannedMove
	for i, h := range hosts {
		list := h.Shards.List()
		for n := len(list) - want[i]; n > 0; n-- {
			give = append(give, PlannedMove{Shard: list[len(list)-n], From: h.Host})
		}
	}
	slices.SortStableFunc(give, func(a, b PlannedMove) int { return a.Shard - b.Shard })
	var plan []PlannedMove
	for i, h := range hosts {
		for n := want[i] - h.Shards.Len(); n > 0 && len(give) > 0; n-- {
			mv := give[0]
			give = give[1:]
			mv.To = h.Host
			plan = append(plan, mv)
		}
	}
	slices.SortStableFunc(plan, func(a, b PlannedMove) int { return a.Shard - b.Shard })
	return plan, nil
}

// Rebalance plans (PlanRebalance, after Locate has found where every
// shard lives) and runs the moves one at a time with opts, calling done
// after each. It stops at the first failure and returns the reports of
// the moves made and the error.
func Rebalance(ctx context.Context, c *Connector, drain []string, opts *MoveOptions, done func(PlannedMove, *MoveReport)) ([]*MoveReport, error) {
	plan, err := RebalancePlan(ctx, c, drain)
	if err != nil {
		return nil, err
	}
	var out []*MoveReport
	for _, mv := range plan {
		rep, err := MoveShard(ctx, c, mv.Shard, mv.To, opts)
		if err != nil {
			return out, err
		}
		out = append(out, rep)
		if done != nil {
			done(mv, rep)
		}
	}
	return out, nil
}

// RebalancePlan returns the plan Rebalance would run: where shards really
// live (Locate), balanced by PlanRebalance.
func RebalancePlan(ctx context.Context, c *Connector, drain []string) ([]PlannedMove, error) {
	if _, err := Locate(ctx, c); err != nil {
		return nil, err
	}
	var hosts []HostShards
	for _, h := range c.Stats() {
		hosts = append(hosts, HostShards{Host: h.Host, Shards: h.Shards})
	}
	return PlanRebalance(hosts, drain...)
}
