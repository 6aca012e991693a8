package hv

import (
	"errors"
	"strings"
	"testing"
)

func TestMisspeltKeyword(t *testing.T) {
	for _, tc := range []struct{ dsn, bad, want string }{
		{"shards=0-8 host=h passwrd=s3cr3tval", "passwrd", "password"},
		{"shards=0-8 host=h; shards=8-9 hostt=h2", "hostt", "host"},
		{"shards=0-8 host=h dbnme=app", "dbnme", "dbname"},
		{"shards=0-8 host=h sslmod=disable", "sslmod", "sslmode"},
		{"shards=0-8 host=h uesr=app", "uesr", "user"},
		{"shards=0-8 host=h conect_timeout=3", "conect_timeout", "connect_timeout"},
	} {
		_, err := ParseConfig(tc.dsn)
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), `"`+tc.bad+`"`) || !strings.Contains(err.Error(), "did you mean "+tc.want+"?") || !strings.Contains(err.Error(), "segment ") {
			t.Errorf("%q: %v", tc.dsn, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3tval") {
			t.Errorf("%q: the misspelt password's value shows: %v", tc.dsn, err)
		}
	}
	// Settings and pgx keywords pass through.
	for _, dsn := range []string{
		"shards=0-8 host=h statement_timeout=5s timezone=UTC work_mem=4MB",
		"shards=0-8 host=h default_query_exec_mode=exec statement_cache_capacity=8 pg_stat_statements.track=all",
		"shards=0-8 host=h search_pth=x application_name=a",
	} {
		if _, err := ParseConfig(dsn); err != nil && !strings.Contains(dsn, "search_pth") {
			t.Errorf("%q: %v", dsn, err)
		}
	}
	// A Config built in Go is checked too.
	cfg := &Config{Hosts: []HostConfig{hostCfg(0, 1, "passwrd", "x")}}
	if err := cfg.Validate(); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "Hosts[0]") || !strings.Contains(err.Error(), "password") {
		t.Errorf("Validate: %v", err)
	}
}

func TestSyntaxErrorNoPlaceholder(t *testing.T) {
	_, err := ParseConfig("garbage")
	if err == nil || strings.Contains(err.Error(), `"..."`) || !strings.Contains(err.Error(), `segment 1: missing "=" after the key at position 1`) {
		t.Errorf("garbage: %v", err)
	}
}

func TestUnowned(t *testing.T) {
	cfg, err := ParseConfig("shards=1-8 host=a; shards=9-16 host=b")
	if err != nil {
		t.Fatal(err)
	}
	if g := cfg.Unowned(); len(g) != 1 || g[0] != (ShardRange{8, 9}) {
		t.Errorf("Unowned = %v", g)
	}
	hint := cfg.UnownedHint()
	for _, want := range []string{"no host owns shard(s) 8", "half-open", "shard 16 is unowned too", "shards=1-9; shards=9-17"} {
		if !strings.Contains(hint, want) {
			t.Errorf("hint lacks %q: %s", want, hint)
		}
	}
	cfg, _ = ParseConfig("shards=0-4 host=a; shards=10-16 host=b; shards=4-8 host=c")
	if g := cfg.Unowned(); len(g) != 1 || g[0] != (ShardRange{8, 10}) || !strings.Contains(cfg.UnownedHint(), "8 to 9") || strings.Contains(cfg.UnownedHint(), "half-open") {
		t.Errorf("Unowned = %v, %s", g, cfg.UnownedHint())
	}
	cfg, _ = ParseConfig("shards=1-9 host=a; shards=9-17 host=b")
	if g := cfg.Unowned(); len(g) != 0 || cfg.UnownedHint() != "" {
		t.Errorf("contiguous: %v %q", g, cfg.UnownedHint())
	}
}
