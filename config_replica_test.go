package hv

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestParseConfigReplicas: replicas= and max_replica_lag parse, show and
// round-trip; a multi-host segment is accepted and named with each host's
// port.
func TestParseConfigReplicas(t *testing.T) {
	c, err := ParseConfig("shards=0-8 host=db1 port=5433 user=app password=" + testPassword +
		" dbname=app replicas=db1r:5433,10.0.0.7:6432,[::1]:5434; shards=8-16 host=db2; max_replica_lag=250ms")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"db1r:5433", "10.0.0.7:6432", "[::1]:5434"}; !reflect.DeepEqual(c.Hosts[0].Replicas, want) {
		t.Errorf("Replicas = %q, want %q", c.Hosts[0].Replicas, want)
	}
	if c.Hosts[1].Replicas != nil || c.MaxReplicaLag != 250*time.Millisecond {
		t.Errorf("second host replicas %q, max lag %v", c.Hosts[1].Replicas, c.MaxReplicaLag)
	}
	s := c.String()
	if !strings.Contains(s, "replicas=db1r:5433,10.0.0.7:6432,[::1]:5434") || !strings.Contains(s, "max_replica_lag=250ms") || strings.Contains(s, testPassword) {
		t.Errorf("String() = %q", s)
	}
	checkStringRoundTrip(t, c)
	rc := replicaHostConfig(&c.Hosts[0], "[::1]:5434")
	if rc.Params["host"] != "::1" || rc.Params["port"] != "5434" || rc.Params["user"] != "app" || rc.Name() != "::1:5434/app" {
		t.Errorf("replica config %v, name %q", rc.Params, rc.Name())
	}
	if d, _ := ParseConfig("shards=0-1 host=a"); d.MaxReplicaLag != 0 || d.maxReplicaLag() != DefaultMaxReplicaLag {
		t.Errorf("default max lag %v (%v)", d.MaxReplicaLag, d.maxReplicaLag())
	}

	m, err := ParseConfig("shards=0-8 host=a,b port=5432,5433 target_session_attrs=read-write dbname=app replicas=b:5433")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Hosts[0].Name(); got != "a:5432,b:5433/app" {
		t.Errorf("multi-host Name() = %q", got)
	}
	if got := (HostConfig{Params: map[string]string{"host": "a,b", "port": "6000"}}).Name(); got != "a:6000,b:6000" {
		t.Errorf("multi-host one port Name() = %q", got)
	}
	checkStringRoundTrip(t, m)
	if rc := replicaHostConfig(&m.Hosts[0], "b:5433"); rc.Params["target_session_attrs"] != "" || rc.Params["host"] != "b" {
		t.Errorf("replica of a multi-host segment: %v", rc.Params)
	}
}

func TestParseConfigReplicaErrors(t *testing.T) {
	const pw = testPassword
	for _, tc := range []struct {
		dsn  string
		want []string
	}{
		{"shards=0-1 password=" + pw + " replicas=db2", []string{`segment 1 "shards=0-1 password=xxxxx replicas=db2"`, `replica 1 "db2" is not HOST:PORT`}},
		{"shards=0-1 replicas=a:1,", []string{"segment 1", `replica 2 "" is not HOST:PORT`}},
		{"shards=0-1 replicas=a:0", []string{"segment 1", `replica 1 "a:0"`}},
		{"shards=0-1 replicas=a:70000", []string{"segment 1", "port 1..65535"}},
		{"shards=0-1 replicas=:5432", []string{"segment 1", "not HOST:PORT"}},
		{"shards=0-1 replicas=a:+5", []string{"segment 1", "not HOST:PORT"}},
		{"shards=0-1 replicas=a:1,a:1", []string{"segment 1", `replica "a:1" is listed twice`}},
		{"shards=0-1; shards=1-2 host=a,b port=1,2,3", []string{`segment 2 "shards=1-2 host=a,b port=1,2,3"`, "2 hosts but port names 3 ports"}},
		{"shards=0-1 host=a,,b", []string{"segment 1", "empty host name"}},
		{"shards=0-1 host=a,b; driver=postgres", []string{"segment 1", "needs driver pgx"}},
		{"shards=0-1; max_replica_lag=0", []string{`segment 2 "max_replica_lag=0"`, "positive"}},
		{"shards=0-1; max_replica_lag=soon", []string{"segment 2", "not a duration"}},
		{"shards=0-1; max_replica_lag=-1s", []string{"segment 2", "negative"}},
		{"shards=0-1; replicas=a:1", []string{"segment 2", `unknown global key "replicas"`}},
		{"shards=0-1 max_replica_lag=1s", []string{"segment 1", `"max_replica_lag" is a global option`}},
	} {
		_, err := ParseConfig(tc.dsn)
		if err == nil || !errors.Is(err, ErrBadConfig) {
			t.Errorf("%q: error %v, want ErrBadConfig", tc.dsn, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q lacks %q", tc.dsn, err, w)
			}
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("%q: error shows the password", tc.dsn)
		}
	}
	// Validate names the host by index.
	c := &Config{Hosts: []HostConfig{{Shards: Shards(0, 1), Params: map[string]string{"host": "a"}, Replicas: []string{"nope"}}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "Hosts[0] (a)") {
		t.Errorf("Validate: %v", err)
	}
	c = &Config{Hosts: []HostConfig{{Shards: Shards(0, 1)}}, MaxReplicaLag: -time.Second}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "Config.MaxReplicaLag") {
		t.Errorf("Validate: %v", err)
	}
}
