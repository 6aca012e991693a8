package hv

import (
	"errors"
	"strings"
	"testing"
)

func TestPoolModeConfig(t *testing.T) {
	c, err := ParseConfig("shards=1-9 host=pgb port=6432 dbname=app; pool_mode=transaction")
	if err != nil {
		t.Fatal(err)
	}
	if c.PoolMode != PoolModeTransaction {
		t.Fatalf("PoolMode = %q", c.PoolMode)
	}
	if !strings.Contains(c.String(), "pool_mode=transaction") {
		t.Errorf("String() = %q", c.String())
	}
	checkStringRoundTrip(t, c)
	c, err = ParseConfig("shards=1-9 host=a; pool_mode=session")
	if err != nil || c.PoolMode != PoolModeSession {
		t.Fatalf("session: %v, %v", c, err)
	}
	checkStringRoundTrip(t, c)
	if c, err := ParseConfig("shards=1-9 host=a"); err != nil || c.PoolMode != "" || strings.Contains(c.String(), "pool_mode") {
		t.Errorf("default: %v, %v", c, err)
	}
	for _, tc := range []struct{ dsn, want string }{
		{"shards=1-9 host=a; pool_mode=statement", "pool_mode \"statement\" is not supported"},
		{"shards=1-9 host=a; pool_mode=Transaction", "not supported"},
		{"shards=1-9 host=a; pool_mode=transaction; driver=postgres", "needs driver pgx"},
		{"shards=1-9 host=a default_query_exec_mode=cache_describe; pool_mode=transaction", "cannot work with pool_mode transaction"},
		{"shards=1-9 host=a pool_mode=transaction", "global option"},
		{"shards=1-9 host=a; pool_mode=session; pool_mode=transaction", "already set"},
	} {
		_, err := ParseConfig(tc.dsn)
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%q) = %v, want %q", tc.dsn, err, tc.want)
		}
	}
	for _, m := range []string{"exec", "simple_protocol", "describe_exec", "cache_statement"} {
		if _, err := ParseConfig("shards=1-9 host=a default_query_exec_mode=" + m + "; pool_mode=transaction"); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
	cfg := &Config{Hosts: []HostConfig{{Shards: ShardSet{{0, 1}}}}, PoolMode: "bogus"}
	if err := cfg.Validate(); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "Config.PoolMode") {
		t.Errorf("Validate: %v", err)
	}
}
