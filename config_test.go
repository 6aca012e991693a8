package hv

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lib/pq"
)

// cfgDefaults returns a Config with the ParseConfig defaults and hosts.
func cfgDefaults(hosts ...HostConfig) *Config {
	return &Config{
		Hosts:            hosts,
		PoolMax:          DefaultPoolMax,
		PoolBlockTimeout: DefaultPoolBlockTimeout,
		Driver:           DefaultDriver,
		SchemaPattern:    DefaultSchemaPattern,
	}
}

func hostCfg(start, end int, kv ...string) HostConfig {
	h := HostConfig{Shards: ShardSet{{start, end}}, Params: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Params[kv[i]] = kv[i+1]
	}
	return h
}

// cfgEqual compares configs, epochs by instant.
func cfgEqual(a, b *Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !a.Epoch.Equal(b.Epoch) {
		return false
	}
	x, y := *a, *b
	x.Epoch, y.Epoch = time.Time{}, time.Time{}
	return reflect.DeepEqual(x, y)
}

// withRedactedPasswords returns a copy of c with secret params replaced by
// what String shows.
func withRedactedPasswords(c *Config) *Config {
	d := *c
	d.Hosts = nil
	for _, h := range c.Hosts {
		h.Params = maps.Clone(h.Params)
		for k := range h.Params {
			if secretParams[k] {
				h.Params[k] = redactedSecret
			}
		}
		d.Hosts = append(d.Hosts, h)
	}
	return &d
}

func TestParseConfigAccepted(t *testing.T) {
	epoch := time.Date(2020, 1, 2, 3, 4, 5, 6e6, time.UTC)
	for _, tc := range []struct {
		name, dsn string
		want      *Config
	}{
		{"seed example",
			"shards=1-9 host=db1 user=app dbname=app; shards=9-17 host=db2 user=app dbname=app; pool_max=10",
			cfgDefaults(
				hostCfg(1, 9, "host", "db1", "user", "app", "dbname", "app"),
				hostCfg(9, 17, "host", "db2", "user", "app", "dbname", "app"))},
		{"shard keys and per-shard cap",
			"shards=0-16 host=db1; num_shards=16 shard_max=3",
			func() *Config {
				c := cfgDefaults(hostCfg(0, 16, "host", "db1"))
				c.KeyShards, c.ShardMax = 16, 3
				return c
			}()},
		{"whole range, trailing and empty segments",
			";shards=0-8192 host=db1;; ;",
			cfgDefaults(hostCfg(0, 8192, "host", "db1"))},
		{"spaces around =",
			"shards = 0-2  host =db1\tport= 5433\n user\t=\tapp",
			cfgDefaults(hostCfg(0, 2, "host", "db1", "port", "5433", "user", "app"))},
		{"quoted values with ; and spaces",
			`shards=0-2 host='db 1' password='a;b c' application_name='it\'s \\ ok'`,
			cfgDefaults(hostCfg(0, 2, "host", "db 1", "password", "a;b c", "application_name", `it's \ ok`))},
		{"unquoted escapes",
			`shards=0-2 password=a\;b\ c\\d\'e user=x'y`,
			cfgDefaults(hostCfg(0, 2, "password", `a;b c\d'e`, "user", "x'y"))},
		{"empty values",
			"shards=0-2 host='' sslmode=;",
			cfgDefaults(hostCfg(0, 2, "host", "", "sslmode", ""))},
		{"quoted value then ; without space",
			"shards=0-2 host='a';shards=2-3 host=b",
			cfgDefaults(hostCfg(0, 2, "host", "a"), hostCfg(2, 3, "host", "b"))},
		{"database stored as dbname, unknown keywords passed through",
			"shards=0-2 database=app statement_timeout=5s pg_stat_statements.track=all",
			cfgDefaults(hostCfg(0, 2, "dbname", "app", "statement_timeout", "5s", "pg_stat_statements.track", "all"))},
		{"per-host pool_max",
			"shards=0-2 host=a pool_max=3; shards=2-4 host=b; pool_max=7",
			func() *Config {
				c := cfgDefaults(hostCfg(0, 2, "host", "a"), hostCfg(2, 4, "host", "b"))
				c.Hosts[0].PoolMax = 3
				c.PoolMax = 7
				return c
			}()},
		{"globals first, in two segments, value with =",
			"driver=postgres; schema=s_%d pool_block_timeout=300ms; shards=4-5 options=-cstatement_timeout=5s",
			func() *Config {
				c := cfgDefaults(hostCfg(4, 5, "options", "-cstatement_timeout=5s"))
				c.Driver, c.SchemaPattern, c.PoolBlockTimeout = "postgres", "s_%d", 300*time.Millisecond
				return c
			}()},
		{"bare seconds", "shards=0-1; pool_block_timeout=0.5",
			func() *Config { c := cfgDefaults(hostCfg(0, 1)); c.PoolBlockTimeout = 500 * time.Millisecond; return c }()},
		{"integer seconds", "shards=0-1; pool_block_timeout=7",
			func() *Config { c := cfgDefaults(hostCfg(0, 1)); c.PoolBlockTimeout = 7 * time.Second; return c }()},
		{"zero timeout", "shards=0-1; pool_block_timeout=0",
			func() *Config { c := cfgDefaults(hostCfg(0, 1)); c.PoolBlockTimeout = 0; return c }()},
		{"Go duration", "shards=0-1; pool_block_timeout=1m30s",
			func() *Config { c := cfgDefaults(hostCfg(0, 1)); c.PoolBlockTimeout = 90 * time.Second; return c }()},
		{"epoch millis", fmt.Sprintf("shards=0-1; epoch=%d", epoch.UnixMilli()),
			func() *Config { c := cfgDefaults(hostCfg(0, 1)); c.Epoch = epoch; return c }()},
		{"epoch RFC 3339", "shards=0-1; epoch=2020-01-02T04:04:05.006+01:00",
			func() *Config { c := cfgDefaults(hostCfg(0, 1)); c.Epoch = epoch; return c }()},
		{"schema patterns", "shards=0-1; schema=_%09d",
			func() *Config { c := cfgDefaults(hostCfg(0, 1)); c.SchemaPattern = "_%09d"; return c }()},
		{"sslpassword",
			"shards=0-1 sslpassword='k;ey'",
			cfgDefaults(hostCfg(0, 1, "sslpassword", "k;ey"))},
		{"unquoted password, ';' then a space",
			"shards=0-1 password=abc; shards=1-2",
			cfgDefaults(hostCfg(0, 1, "password", "abc"), hostCfg(1, 2))},
		{"unquoted password, ';' then a known keyword",
			"shards=0-1 password=abc;shards=1-2",
			cfgDefaults(hostCfg(0, 1, "password", "abc"), hostCfg(1, 2))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig(tc.dsn)
			if err != nil {
				t.Fatalf("ParseConfig(%q): %v", tc.dsn, err)
			}
			if !cfgEqual(got, tc.want) {
				t.Fatalf("ParseConfig(%q)\n got %#v\nwant %#v", tc.dsn, got, tc.want)
			}
			checkStringRoundTrip(t, got)
		})
	}
}

// checkStringRoundTrip checks that c.String() parses to c but for
// passwords, and that it is stable.
func checkStringRoundTrip(t testing.TB, c *Config) {
	t.Helper()
	s := c.String()
	c2, err := ParseConfig(s)
	if err != nil {
		t.Fatalf("ParseConfig(String() = %q): %v", s, err)
	}
	if want := withRedactedPasswords(c); !cfgEqual(c2, want) {
		t.Fatalf("String() = %q parses to\n%#v\nwant\n%#v", s, c2, want)
	}
	if s2 := c2.String(); s2 != s {
		t.Fatalf("String() not stable:\n%q\n%q", s, s2)
	}
}

const testPassword = "Sekr1t-Pw"

func TestParseConfigErrors(t *testing.T) {
	const pw = testPassword
	for _, tc := range []struct {
		dsn  string
		want []string // substrings of the message
	}{
		{"shards=0-8 host=db1; shards=9-1 host=db2 password=" + pw,
			[]string{`segment 2 "shards=9-1 host=db2 password=xxxxx": empty or reversed shard range 9-1`}},
		{"shards=5-5 password=" + pw, []string{`segment 1 "shards=5-5 password=xxxxx"`, "empty or reversed"}},
		{"shards=1-9 host=a password=" + pw + "; shards=9-17 host=b; shards=8-12 host=c password=" + pw,
			[]string{`segment 3 "shards=8-12 host=c password=xxxxx": shard range 8-12 overlaps segment 1 "shards=1-9 host=a password=xxxxx"`}},
		{"shards=0-9000 password=" + pw, []string{"segment 1", "outside 0-8192"}},
		{"shards=8192-8193 password=" + pw, []string{"segment 1", "outside"}},
		{"shards=a-b password=" + pw, []string{`segment 1 "shards=a-b password=xxxxx"`, "not a shard range"}},
		{"shards=5 password=" + pw, []string{"segment 1", "not a shard range"}},
		{"shards=-1-5 password=" + pw, []string{"segment 1", "not a shard range"}},
		{"shards= password=" + pw, []string{"segment 1", "looks like key=value"}},
		{"shards=0-1 host= password=" + pw, []string{"segment 1", "looks like key=value"}},
		{"shards=0-1 password= a=" + pw, []string{"segment 1", "looks like key=value"}},
		{"shards=0-1; pool_max=", []string{"segment 2", "not an integer"}},
		{"shards=0-1 password=" + pw + "; pool_max=0", []string{`segment 2 "pool_max=0"`, "at least 1"}},
		{"shards=0-1 password=" + pw + "; pool_max=-3", []string{`segment 2`, "at least 1"}},
		{"shards=0-1 password=" + pw + "; pool_max=ten", []string{`segment 2`, "not an integer"}},
		{"shards=0-1 password=" + pw + "; num_shards=0", []string{`segment 2 "num_shards=0"`, "1..8192"}},
		{"shards=0-1 password=" + pw + "; num_shards=9000", []string{`segment 2`, "num_shards=9000", "1..8192"}},
		{"shards=0-1 password=" + pw + "; shard_max=-1", []string{`segment 2`, "shard_max=-1"}},
		{"shards=0-1 password=" + pw + " pool_max=0", []string{`segment 1 "shards=0-1 password=xxxxx pool_max=0"`, "at least 1"}},
		{"shards=0-1 password=" + pw + "; pool_block_timeout=-1", []string{"segment 2", "negative"}},
		{"shards=0-1 password=" + pw + "; pool_block_timeout=-2s", []string{"segment 2", "negative"}},
		{"shards=0-1 password=" + pw + "; pool_block_timeout=soon", []string{"segment 2", "not a duration"}},
		{"shards=0-1 password=" + pw + "; pool_block_timeout=1.2.3", []string{"segment 2", "not a duration"}},
		{"shards=0-1 password=" + pw + "; pool_block_timeout=", []string{"segment 2", "not a duration"}},
		{"shards=0-1 host='db1 password=" + pw, []string{`segment 1 "shards=0-1 ..."`, "unterminated quoted value starting at position 17"}},
		{"shards=0-1 password='" + pw, []string{`segment 1 "shards=0-1 ..."`, "unterminated quoted value starting at position 21"}},
		{"shards=0-1 password='" + pw + `\'`, []string{"unterminated quoted value"}},
		{"shards=0-1 password='" + pw + "'x", []string{"segment 1", "after the closing quote at position"}},
		{"shards=0-1 host db1 password=" + pw, []string{`segment 1 "shards=0-1 ..."`, `missing "=" after the key at position 12`}},
		{"shards=0-1 password=" + pw + " host", []string{`segment 1 "shards=0-1 password=xxxxx ..."`, `missing "="`}},
		{"shards=0-1 password=" + pw + "; =x", []string{`segment 2: `, "empty key"}},
		{"shards=0-1 password=" + pw + " password=" + pw, []string{`duplicate key "password"`}},
		{"shards=0-1 host=a host=b password=" + pw, []string{`segment 1`, `duplicate key "host"`}},
		{"shards=0-1 shards=1-2", []string{`duplicate key "shards"`}},
		{"shards=0-1 database=a dbname=b password=" + pw, []string{"segment 1", "both database and dbname"}},
		{"shards=0-1 password=" + pw + "; pool_max=1; pool_max=2", []string{`segment 3 "pool_max=2": pool_max is already set in segment 2 "pool_max=1"`}},
		{"shards=0-1 password=" + pw + "; colour=blue", []string{`segment 2 "colour=blue"`, `unknown global key "colour"`, "pool_max, pool_block_timeout, driver, schema, epoch"}},
		{"host=db1 password=" + pw, []string{`segment 1 "host=db1 password=xxxxx"`, "no shards=A-B"}},
		{"shards=0-1 Host=x password=" + pw, []string{"segment 1", "key 2 of the segment is invalid"}},
		{"shards=0-1 password=" + pw + "; driver=mysql", []string{`segment 2 "driver=mysql"`, `driver "mysql" is not supported`}},
		{"shards=0-1 password=" + pw + "; driver=", []string{`segment 2 "driver=''"`, "not supported"}},
		{"shards=0-1 driver=pgx password=" + pw, []string{"segment 1", `"driver" is a global option`}},
		{"shards=0-1 password=" + pw + "; schema=Shard%d", []string{`segment 2`, "lowercase"}},
		{"shards=0-1 password=" + pw + "; schema=shard%s", []string{`segment 2`, "bad verb"}},
		{"shards=0-1 password=" + pw + "; schema=s%d_%d", []string{`segment 2`, "2 verbs"}},
		{"shards=0-1 password=" + pw + "; schema=shard", []string{`segment 2`, "0 verbs"}},
		{"shards=0-1 password=" + pw + "; schema='shard %d'", []string{`segment 2`, "lowercase"}},
		{"shards=0-1 password=" + pw + `; schema=sh"ard%d`, []string{`segment 2`, "lowercase"}},
		{"shards=0-1 password=" + pw + "; schema=%04d", []string{`segment 2`, "start with"}},
		{"shards=0-1 password=" + pw + "; schema=1s%d", []string{`segment 2`, "start with"}},
		{"shards=0-1 password=" + pw + "; schema=pg_%d", []string{`segment 2`, "pg_"}},
		{"shards=0-1 password=" + pw + "; schema=s%010d", []string{`segment 2`, "bad verb"}},
		{"shards=0-1 password=" + pw + "; schema=s%5d", []string{`segment 2`, "bad verb"}},
		{"shards=0-1 password=" + pw + "; schema=" + strings.Repeat("s", 60) + "%04d", []string{`segment 2`, "longer than 63"}},
		{"shards=0-1 password=" + pw + "; epoch=yesterday", []string{`segment 2 "epoch=yesterday"`, "RFC 3339"}},
		{"shards=0-1 password=" + pw + "; epoch=99999999999999999999", []string{`segment 2`, "out of range"}},
		{"shards=0-1 password=" + pw + "; epoch=4102444800000", []string{`segment 2`, "in the future"}},
		{"shards=0-1 password=" + pw + "; epoch=2999-01-01T00:00:00Z", []string{`segment 2`, "in the future"}},
		{"shards=0-1 password=" + pw + "; epoch=1960-01-01T00:00:00Z", []string{`segment 2`, "before 1970"}},
		{"shards=0-1 password=" + pw + " search_path=public", []string{`segment 1 "shards=0-1 password=xxxxx search_path=public"`, "search_path may not be set"}},
		{"shards=0-1 password=" + pw + " options='-c search_path=x'", []string{`segment 1`, "options may not set search_path"}},
		{"shards=0-1 password=" + pw + " options=--Search-Path=x", []string{`segment 1`, "options may not set search_path"}},
		{"shards=0-1 password=" + pw + " host=a\x00b", []string{`segment 1`, "NUL byte at position"}},
		{"pool_max=10", []string{"no hosts"}},
		{"", []string{"no hosts"}},
		{" ; ;", []string{"no hosts"}},
		{"shards=0-1 host=x" + `\`, []string{"backslash at the end"}},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			c, err := ParseConfig(tc.dsn)
			if err == nil {
				t.Fatalf("ParseConfig(%q) = %v, want an error", tc.dsn, c)
			}
			if c != nil {
				t.Errorf("ParseConfig(%q) returned a Config with its error", tc.dsn)
			}
			if !errors.Is(err, ErrBadConfig) {
				t.Errorf("error %q does not wrap ErrBadConfig", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if strings.Contains(msg, pw) {
				t.Errorf("error %q shows the password", msg)
			}
			if len(tc.want) > 0 && !strings.HasPrefix(tc.want[0], "no hosts") && !strings.Contains(msg, "segment ") {
				t.Errorf("error %q names no segment", msg)
			}
		})
	}
}

// weirdPasswords are passwords that need quoting or look like syntax.
var weirdPasswords = []string{
	"s3cr3t", "pass;word", "s3cr3t'x", `back\slash`, "sp ace", "'quoted'",
	"a=b", "semi;colon;s", `\'`, "tab\there", "new\nline", "pct%d%s",
	`"dq"`, "-c search_path=evil", "ünïcödé", "shards=77-99", "x;pool_max=0",
	"trailing\\", "  lead", "=;=", "pa ss;wo=rd", "p'w;d x=y",
}

func TestConfigPasswordNeverShown(t *testing.T) {
	templates := []string{
		"shards=0-10 host=h password=%s",
		"shards=0-10 host=h password=%s; pool_max=0",
		"shards=9-1 host=h password=%s",
		"shards=0-10 host=a password=%[1]s; shards=5-20 host=b password=%[1]s",
		"shards=0-1 password=%s search_path=x",
		"shards=0-1 password=%[1]s password=%[1]s",
		"password=%s; shards=0-1",
		"shards=0-1 password=%s; driver=mysql",
		"shards=0-1 password=%s host='x",
		"shards=0-1 password=%s host",
		"shards=0-1 password=%s; schema=X%%d",
		"shards=0-1 sslpassword=%s; epoch=never",
		"shards=a-b sslpassword=%s",
		"shards=0-1 password = %s ;;",
	}
	quotings := map[string]func(string) string{
		"quoted": func(pw string) string { return dsnQuote(pw, true) },
		"escaped": func(pw string) string {
			var b strings.Builder
			for _, r := range pw {
				if strings.ContainsRune(" \t\n;'\\", r) {
					b.WriteByte('\\')
				}
				b.WriteRune(r)
			}
			return b.String()
		},
		"raw": func(pw string) string { return pw },
	}
	for _, tpl := range templates {
		for qname, quote := range quotings {
			for _, pw := range weirdPasswords {
				dsn := fmt.Sprintf(tpl, quote(pw))
				c, err := ParseConfig(dsn)
				var out string
				if err != nil {
					if !errors.Is(err, ErrBadConfig) {
						t.Errorf("%s %q: error %q does not wrap ErrBadConfig", qname, dsn, err)
					}
					out = err.Error()
				} else {
					out = c.String()
					for _, h := range c.Hosts {
						out += "\n" + h.String() + "\n" + h.Name()
					}
				}
				if strings.Contains(out, pw) {
					t.Errorf("%s %q: output shows the password %q:\n%s", qname, dsn, pw, out)
				}
			}
		}
	}
}

// TestConfigPasswordWithSemicolon covers unquoted passwords cut by ';': the
// rest of the password must not be shown either.
func TestConfigPasswordWithSemicolon(t *testing.T) {
	for _, tc := range []struct{ dsn, tail string }{
		{"shards=0-1 host=h password=pass;zq9x", "zq9x"},
		{"shards=0-1 host=h password=pass;zq9x=1", "zq9x"},
		{"shards=0-1 host=h password=pass;zq9x=kk7y", "kk7y"},
		{"shards=0-1 host=h password=pass;zq9x=1 shards=1-2", "zq9x"},
		{"shards=0-1 host=h password=pass;zq9x shards=1-2", "zq9x"},
		{"shards=0-1 host=h password=pass;zq9x'", "zq9x"},
		{"shards=0-1 host=h password=pass;=zq9x", "zq9x"},
		{"shards=0-1 host=h password=pass;zq9x=1;zz8w=2", "zq9x"},
		{"shards=0-1 host=h password=pass;zq9x=kk7y;kk7y=2", "kk7y"},
	} {
		_, err := ParseConfig(tc.dsn)
		if err == nil {
			t.Errorf("ParseConfig(%q) succeeded", tc.dsn)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, tc.tail) {
			t.Errorf("ParseConfig(%q): error shows %q: %s", tc.dsn, tc.tail, msg)
		}
	}
}

func TestConfigConnStringRoundTrip(t *testing.T) {
	for _, pw := range weirdPasswords {
		for _, pgxTest := range []bool{true, false} {
			dsn := "shards=0-1 host=db.example port=5433 user='app user' dbname=\"d'b\" password=" + dsnQuote(pw, true)
			c, err := ParseConfig(dsn)
			if err != nil {
				t.Fatalf("ParseConfig(%q): %v", dsn, err)
			}
			h := c.Hosts[0]
			if h.Params["password"] != pw {
				t.Fatalf("password %q parsed as %q", pw, h.Params["password"])
			}
			cs := h.ConnString()
			var host, user, password, dbname string
			var port uint16
			if pgxTest {
				pc, err := pgx.ParseConfig(cs)
				if err != nil {
					t.Fatalf("pgx.ParseConfig(ConnString() of password %q): %v", pw, err)
				}
				host, port, user, password, dbname = pc.Host, pc.Port, pc.User, pc.Password, pc.Database
			} else {
				pc, err := pq.NewConfig(cs)
				if err != nil {
					t.Fatalf("pq.NewConfig(ConnString() of password %q): %v", pw, err)
				}
				host, port, user, password, dbname = pc.Host, pc.Port, pc.User, pc.Password, pc.Database
			}
			if host != "db.example" || port != 5433 || user != "app user" || password != pw || dbname != `"d'b"` {
				t.Errorf("pgx=%v: ConnString %q gives host %q port %d user %q password %q dbname %q",
					pgxTest, cs, host, port, user, password, dbname)
			}
		}
	}
}

func TestConfigConnStringFormat(t *testing.T) {
	h := hostCfg(0, 1, "user", "a", "host", `h'\`, "password", "")
	if got, want := h.ConnString(), `host='h\'\\' password='' user='a'`; got != want {
		t.Errorf("ConnString() = %q, want %q", got, want)
	}
	if got := (HostConfig{}).ConnString(); got != "" {
		t.Errorf("empty ConnString() = %q", got)
	}
}

func TestConfigStringRoundTrip(t *testing.T) {
	c := cfgDefaults(
		hostCfg(0, 100, "host", "db1", "port", "5432", "password", "pa ss;'\\", "dbname", "app", "sslmode", "require"),
		hostCfg(100, 8192, "host", "db2", "application_name", "", "options", "-c statement_timeout=5s"),
	)
	c.Hosts[1].PoolMax = 4
	c.PoolMax = 3
	c.PoolBlockTimeout = 1500 * time.Millisecond
	c.Driver = "postgres"
	c.SchemaPattern = "tenant_%05d"
	c.Epoch = time.Date(2021, 5, 6, 7, 8, 9, 123456789, time.UTC)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	checkStringRoundTrip(t, c)
	c.Epoch = time.UnixMilli(1600000000123).UTC()
	checkStringRoundTrip(t, c)
	s := c.String()
	if strings.Contains(s, "pa ss") || !strings.Contains(s, "password=xxxxx") {
		t.Errorf("String() = %q", s)
	}
	want := "shards=0-100 host=db1 port=5432 password=xxxxx dbname=app sslmode=require; " +
		"shards=100-8192 host=db2 application_name='' options='-c statement_timeout=5s' pool_max=4; " +
		"pool_max=3 pool_block_timeout=1.5s driver=postgres schema=tenant_%05d epoch=1600000000123"
	if s != want {
		t.Errorf("String() =\n%s\nwant\n%s", s, want)
	}
	if got := (*Config)(nil).String(); got != "<nil>" {
		t.Errorf("nil String() = %q", got)
	}
}

func TestConfigValidateHandBuilt(t *testing.T) {
	c := &Config{Hosts: []HostConfig{{Shards: ShardSet{{0, NumShards}}}}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.PoolMax != DefaultPoolMax || c.Driver != DefaultDriver || c.SchemaPattern != DefaultSchemaPattern || c.PoolBlockTimeout != 0 {
		t.Errorf("defaults not filled: %+v", c)
	}
	const pw = testPassword
	for _, tc := range []struct {
		name string
		cfg  *Config
		want []string
	}{
		{"nil", nil, []string{"nil Config"}},
		{"no hosts", &Config{}, []string{"no hosts"}},
		{"negative pool", &Config{Hosts: []HostConfig{hostCfg(0, 1)}, PoolMax: -1}, []string{"Config.PoolMax", "less than 1"}},
		{"negative host pool", &Config{Hosts: []HostConfig{{Shards: ShardSet{{0, 1}}, PoolMax: -1}}}, []string{"Hosts[0]", "negative"}},
		{"negative timeout", &Config{Hosts: []HostConfig{hostCfg(0, 1)}, PoolBlockTimeout: -time.Second}, []string{"Config.PoolBlockTimeout", "negative"}},
		{"driver", &Config{Hosts: []HostConfig{hostCfg(0, 1)}, Driver: "mysql"}, []string{"Config.Driver"}},
		{"schema", &Config{Hosts: []HostConfig{hostCfg(0, 1)}, SchemaPattern: "s%s"}, []string{"Config.SchemaPattern"}},
		{"future epoch", &Config{Hosts: []HostConfig{hostCfg(0, 1)}, Epoch: time.Now().Add(time.Hour)}, []string{"Config.Epoch", "future"}},
		{"reversed", &Config{Hosts: []HostConfig{hostCfg(3, 2, "host", "db1", "port", "6432", "dbname", "x", "password", pw)}},
			[]string{"Hosts[0] (db1:6432/x)", "empty or reversed"}},
		{"outside", &Config{Hosts: []HostConfig{hostCfg(-1, 2)}}, []string{"Hosts[0] (localhost)", "outside"}},
		{"overlap", &Config{Hosts: []HostConfig{hostCfg(10, 20, "host", "b"), hostCfg(0, 11, "host", "a", "password", pw)}},
			[]string{"Hosts[1] (a): shard range 0-11 overlaps Hosts[0] (b) (shards 10-20)"}},
		{"search_path", &Config{Hosts: []HostConfig{hostCfg(0, 1, "search_path", "x", "password", pw)}}, []string{"Hosts[0]", "search_path"}},
		{"options", &Config{Hosts: []HostConfig{hostCfg(0, 1, "options", "-c SEARCH_PATH=x")}}, []string{"Hosts[0]", "search_path"}},
		{"database", &Config{Hosts: []HostConfig{hostCfg(0, 1, "database", "x")}}, []string{"Hosts[0] (localhost/x)", "dbname"}},
		{"shards param", &Config{Hosts: []HostConfig{hostCfg(0, 1, "shards", "0-1")}}, []string{"Hosts[0]", "hv option"}},
		{"bad key", &Config{Hosts: []HostConfig{hostCfg(0, 1, "a b", "x")}}, []string{"Hosts[0]", "invalid"}},
		{"NUL password", &Config{Hosts: []HostConfig{hostCfg(0, 1, "password", pw+"\x00")}}, []string{"Hosts[0]", "NUL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if err == nil {
				t.Fatal("Validate() = nil")
			}
			if !errors.Is(err, ErrBadConfig) {
				t.Errorf("error %q does not wrap ErrBadConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), pw) {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func TestConfigHelpers(t *testing.T) {
	c, err := ParseConfig("shards=0-10 host=a port=1 dbname=d password=" + testPassword + "; shards=20-30 hostaddr=10.0.0.1; shards=10-20; schema=t_%d")
	if err != nil {
		t.Fatal(err)
	}
	for shard, want := range map[int]int{0: 0, 9: 0, 10: 2, 19: 2, 20: 1, 29: 1, 30: -1, -1: -1, 8192: -1} {
		got, ok := c.HostFor(shard)
		if got != want || ok != (want >= 0) {
			t.Errorf("HostFor(%d) = %d, %v; want %d", shard, got, ok, want)
		}
	}
	for i, want := range []string{"a:1/d", "10.0.0.1", "localhost"} {
		if got := c.Hosts[i].Name(); got != want {
			t.Errorf("Hosts[%d].Name() = %q, want %q", i, got, want)
		}
	}
	if got := c.SchemaName(42); got != "t_42" {
		t.Errorf("SchemaName(42) = %q", got)
	}
	if got := (&Config{}).SchemaName(7); got != "shard0007" {
		t.Errorf("default SchemaName(7) = %q", got)
	}
	if got := cfgDefaults().SchemaName(MaxShard); got != "shard8191" {
		t.Errorf("SchemaName(MaxShard) = %q", got)
	}
}

// FuzzParseConfig checks that ParseConfig never panics, that what it parses
// prints (String) to a DSN that parses to the same Config, and that a
// password has no influence on errors or String output: the DSN is parsed
// after a host segment holding password, and again with a placeholder
// password of the same length, and the outputs must be the same.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []struct{ dsn, pw string }{
		{"shards=1-9 host=db1 user=app dbname=app; shards=9-17 host=db2 user=app dbname=app; pool_max=10", "s3cr3t"},
		{"shards=0-8192 host='a b' password='x\\'y;z'; pool_block_timeout=0.5; driver=postgres; schema=s%04d", "pass;word"},
		{"shards=9-1 password=pass;word", "s3cr3t'x"},
		{"shards=8000-8100 host=a; epoch=1600000000000", "p w"},
		{"shards=0-1 password='unterminated", "\\"},
		{"shards=0-1 search_path=x; pool_max=-1", "search_path"},
		{"shards = 0-1 host = a\\ b ; ; epoch=2020-01-01T00:00:00Z", "xx"},
	} {
		f.Add(s.dsn, s.pw)
	}
	f.Fuzz(func(t *testing.T, dsn, pw string) {
		c, err := ParseConfig(dsn)
		if err != nil {
			if !errors.Is(err, ErrBadConfig) {
				t.Fatalf("error %q does not wrap ErrBadConfig", err)
			}
		} else {
			checkStringRoundTrip(t, c)
			for _, h := range c.Hosts {
				segs, err := tokenizeDSN(h.ConnString())
				if err != nil {
					t.Fatalf("ConnString %q does not parse: %v", h.ConnString(), err)
				}
				got := map[string]string{}
				for _, s := range segs {
					for _, p := range s.pairs {
						got[p.key] = p.val
					}
				}
				if !maps.Equal(got, h.Params) {
					t.Fatalf("ConnString %q parses to %q, want %q", h.ConnString(), got, h.Params)
				}
			}
		}

		if strings.IndexByte(pw, 0) >= 0 {
			return // refused as such: the placeholder would not be
		}
		quoted := dsnQuote(pw, true)
		placeholder := strings.Repeat("Q", len(quoted)-2)
		out := func(pw string) string {
			c, err := ParseConfig("shards=8100-8192 host=fz password=" + dsnQuote(pw, true) + "; " + dsn)
			if err != nil {
				return "error: " + err.Error()
			}
			if c.Hosts[0].Params["password"] != pw {
				t.Fatalf("password %q parsed as %q", pw, c.Hosts[0].Params["password"])
			}
			return c.String()
		}
		got, want := out(pw), out(placeholder)
		if got != want {
			t.Fatalf("the password changes the output:\n%s\n%s", got, want)
		}
	})
}
