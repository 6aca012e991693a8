package hv

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestShardSetDSN(t *testing.T) {
	cfg, err := ParseConfig("shards=1-5,6-9 host=a; shards='' host=b; shards=5-6,9-17 host=c")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Hosts[0].Shards; got.String() != "1-5,6-9" || got.Len() != 7 || got.Contains(5) || !got.Contains(6) {
		t.Fatalf("host a: %v (len %d)", got, got.Len())
	}
	if got := cfg.Hosts[1].Shards; got.Len() != 0 || got == nil {
		t.Fatalf("host b: %#v", got)
	}
	if _, ok := cfg.Hosts[1].Shards.First(); ok {
		t.Fatal("empty set has a first shard")
	}
	if i, ok := cfg.HostFor(5); !ok || i != 2 {
		t.Fatalf("HostFor(5) = %d %v", i, ok)
	}
	s := cfg.String()
	if !strings.Contains(s, "shards=1-5,6-9 host=a") || !strings.Contains(s, "shards='' host=b") {
		t.Fatalf("String() = %s", s)
	}
	back, err := ParseConfig(s)
	if err != nil {
		t.Fatalf("ParseConfig(String()): %v", err)
	}
	if !cfgEqual(cfg, back) {
		t.Fatalf("round trip:\n%#v\n%#v", cfg, back)
	}
	if gaps := cfg.Unowned(); len(gaps) != 0 {
		t.Fatalf("Unowned = %v", gaps)
	}
}

func TestShardSetDSNErrors(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"shards=1-5,4-9 host=a", `segment 1 "shards=1-5,4-9 host=a": shard range 4-9 overlaps range 1-5 of the same host`},
		{"shards=1-5 host=a; shards=7-9,3-4 host=b", `segment 2 "shards=7-9,3-4 host=b": shard range 3-4 overlaps segment 1`},
		{"shards=1-5,5-5 host=a", "empty or reversed shard range 5-5"},
		{"shards=1-5, host=a", "is not a shard range"},
		{"shards=1-5,,6-7 host=a", "is not a shard range"},
		{"shards=1-5,6-9000 host=a", "outside"},
	} {
		_, err := ParseConfig(tc.dsn)
		if err == nil || !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.dsn, err, tc.want)
		}
	}
}

func TestShardSetOps(t *testing.T) {
	s := ShardSet{{1, 5}, {8, 10}}
	if got := s.Without(3).String(); got != "1-3,4-5,8-10" {
		t.Errorf("Without(3) = %s", got)
	}
	if got := s.Without(1).Without(4).String(); got != "2-4,8-10" {
		t.Errorf("Without(1,4) = %s", got)
	}
	if got := s.With(5).String(); got != "1-6,8-10" {
		t.Errorf("With(5) = %s", got)
	}
	if got := s.With(7).String(); got != "1-5,7-10" {
		t.Errorf("With(7) = %s", got)
	}
	if got := (ShardSet{}).With(3).String(); got != "3-4" {
		t.Errorf("empty.With(3) = %s", got)
	}
	if s.String() != "1-5,8-10" {
		t.Errorf("s changed: %s", s)
	}
	if got := slices.Collect(ShardSet{{8, 10}, {1, 3}}.All()); !slices.Equal(got, []int{1, 2, 8, 9}) {
		t.Errorf("All = %v", got)
	}
	if f, _ := (ShardSet{{8, 10}, {1, 3}}).First(); f != 1 {
		t.Errorf("First = %d", f)
	}
}

// A shard moved within a fleet: moves.apply takes it from its configured
// host to the learnt one, and forgets the move when the configuration
// agrees.
func TestShardMovesApply(t *testing.T) {
	cfg, err := ParseConfig("shards=1-9 host=a; shards=9-17 host=b; shards='' host=c")
	if err != nil {
		t.Fatal(err)
	}
	m := shardMoves{to: map[int]string{5: "c", 9: "a", 3: "nowhere"}}
	owns, _ := m.apply(cfg)
	if got := []string{owns[0].String(), owns[1].String(), owns[2].String()}; !slices.Equal(got, []string{"1-5,6-10", "10-17", "5-6"}) {
		t.Fatalf("owns = %v", got)
	}
	cfg.Hosts[2].Shards = ShardSet{{5, 6}}
	cfg.Hosts[0].Shards = ShardSet{{1, 5}, {6, 9}}
	owns, _ = m.apply(cfg)
	if _, ok := m.to[5]; ok || owns[2].String() != "5-6" {
		t.Fatalf("after the DSN caught up: %v %v", m.to, owns)
	}
}
