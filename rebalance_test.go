package hv

import (
	"fmt"
	"strings"
	"testing"
)

func planString(plan []PlannedMove) string {
	var parts []string
	for _, m := range plan {
		parts = append(parts, fmt.Sprintf("%d:%s>%s", m.Shard, m.From, m.To))
	}
	return strings.Join(parts, " ")
}

func TestPlanRebalance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts []HostShards
		drain []string
		want  string
	}{
		{"balanced", []HostShards{{"a", Shards(1, 5)}, {"b", Shards(5, 9)}}, nil, ""},
		{"new empty host", []HostShards{{"a", Shards(1, 5)}, {"b", Shards(5, 9)}, {"c", ShardSet{}}}, nil, "4:a>c 8:b>c"},
		{"new host, 2 to 3 of 16", []HostShards{{"a", Shards(0, 8)}, {"b", Shards(8, 16)}, {"c", ShardSet{}}}, nil, "6:a>c 7:a>c 13:b>c 14:b>c 15:b>c"},
		{"drain", []HostShards{{"a", Shards(1, 5)}, {"b", Shards(5, 9)}, {"c", Shards(9, 11)}}, []string{"c"}, "9:c>a 10:c>b"},
		{"uneven", []HostShards{{"a", Shards(0, 7)}, {"b", Shards(7, 8)}}, nil, "4:a>b 5:a>b 6:a>b"},
		{"ranges", []HostShards{{"a", ShardSet{{0, 2}, {5, 8}}}, {"b", Shards(2, 3)}}, nil, "6:a>b 7:a>b"},
	} {
		plan, err := PlanRebalance(tc.hosts, tc.drain...)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := planString(plan); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
		// Applying the plan balances the hosts.
		counts := map[string]int{}
		for _, h := range tc.hosts {
			counts[h.Host] = h.Shards.Len()
		}
		for _, m := range plan {
			counts[m.From]--
			counts[m.To]++
		}
		lo, hi := 1<<30, -1
		for _, h := range tc.hosts {
			if contains(tc.drain, h.Host) {
				if counts[h.Host] != 0 {
					t.Errorf("%s: drained %s keeps %d", tc.name, h.Host, counts[h.Host])
				}
				continue
			}
			lo, hi = min(lo, counts[h.Host]), max(hi, counts[h.Host])
		}
		if hi-lo > 1 {
			t.Errorf("%s: counts %v", tc.name, counts)
		}
	}
	if _, err := PlanRebalance([]HostShards{{"a", Shards(1, 2)}}, "a"); err == nil {
		t.Error("draining every host: no error")
	}
	if _, err := PlanRebalance([]HostShards{{"a", Shards(1, 2)}}, "zz"); err == nil || !strings.Contains(err.Error(), `"zz"`) {
		t.Errorf("draining an unknown host: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
