package hv

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hypervault/hv/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"
)

// hstoreCorpus holds tricky hstore inputs. TestHstoreDifferential feeds each
// to ParseHstore and to PostgreSQL's hstore input and checks they agree;
// FuzzHstore uses them as seeds.
var hstoreCorpus = []string{
	// Empty and blank.
	"", " ", "\t\n\r\f ",
	// Plain pairs, canonical output, whitespace around tokens.
	"a=>b", `"a"=>"b"`, `"a"=>"b", "c"=>NULL`, " a => b , c => d ", "\ta\n=>\rb\f,\nc=>d\n",
	"a=>b,c=>d,e=>f,g=>h,i=>j,k=>l,m=>n,o=>p,q=>r,s=>t,u=>v",
	// The cases the brief names.
	"a=>b c", "a=>", "a=> ", "=>1", "a b=>c", `"a"b=>c`, "a=>b,,", ",", " , ", `a\`, `a=>b\`, `"a\`, `"a`, "a=>b,c",
	`""=>x`, `""=>""`, `x=>""`,
	// Trailing comma and delimiters.
	"a=>b,", "a=>b , ", "a=>b ,, ", ",a=>b", "a=>b, ,c=>d", "a=>b,\n",
	// NULL handling: unquoted, any case, only as a value.
	"a=>NULL", "a=>null", "a=>NuLl", `a=>"NULL"`, "a=>nulls", "a=>nul", "NULL=>a", `a=>\null`, `a=>n\ull`, "a=>NULL,b=>null ",
	// Odd but valid unquoted tokens.
	",=>1", "a=>,", "a=>,b=>c", "a=>b=c", "a=>=", "a=>>", "a=>=>", "a>=>b", `a"b=>c`, `a=>b"c`, `a=>"b"`,
	// Unquoted tokens ending where PostgreSQL ends them.
	"a=>b,c=>d", "a=b", "a= >b", "a =>b", "a=> b", "a==>b", "a=>>b", "=a=>b", "a=>b=>c",
	// Backslash escapes, quoted and unquoted.
	`"a\"b"=>"c\\d"`, `a\ b=>c\,d`, `\=>x`, `\==>x`, `a\=b=>c`, `"\a\b\n"=>x`, `a=>\"`, `\"a=>b`, `"a\\"=>"b\\"`,
	`"a\`, `a=>"b\"`, `a=>"b\\"`, `"\""=>"\\"`, `\\=>\\`,
	// Quoted tokens followed by junk.
	`"a"=>"b"c`, `"a"=>"b""c"`, `"a" "b"=>c`, `"a"=>"b" , "c"=>"d"`, `"a"=>"b",`, `"a"=>"b",,`,
	// Whitespace PostgreSQL does not skip (\v, NBSP, other Unicode spaces).
	"a=>b\v", "\va=>b", "a=>b\vc=>d", "a\v=>b", "a=>b\u00a0", "\u00a0a=>b", "a=>b\u2003,c=>d", "a=>b\x01",
	// Unicode.
	"ключ=>значение", `"日本"=>"語"`, "emoji=>😀", `"é"=>NULL`,
	// Duplicate keys (first wins for PostgreSQL's small inputs).
	"a=>1,a=>2", "a=>1, a=>NULL", "a=>NULL, a=>1", `"a"=>1,a=>2,"a"=>3`,
	// Text PostgreSQL cannot hold.
	"a=>b\x00", "a\x00=>b", "a=>\xff", "\xc3=>b",
	// Long tokens.
	strings.Repeat("k", 300) + "=>" + strings.Repeat("v", 300),
	`"` + strings.Repeat(`\"`, 100) + `"=>x`,
}

// hstorePair is one pair as read, before duplicates are dropped.
type hstorePair struct {
	key  string
	val  *string
	null bool
}

// allHstorePairs returns every pair of s in input order, duplicates included.
func allHstorePairs(s string) ([]hstorePair, error) {
	var out []hstorePair
	p := hstoreParser{s: s}
	for {
		k, v, null, ok, err := p.next()
		if err != nil || !ok {
			return out, err
		}
		pr := hstorePair{key: k, null: null}
		if !null {
			pr.val = &v
		}
		out = append(out, pr)
	}
}

func strp(s string) *string { return &s }

func fmtHstore(h Hstore) string {
	if h == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString("{")
	for i, k := range sortedKeys(h) {
		if i > 0 {
			b.WriteString(", ")
		}
		if v := h[k]; v == nil {
			fmt.Fprintf(&b, "%q:NULL", k)
		} else {
			fmt.Fprintf(&b, "%q:%q", k, *v)
		}
	}
	b.WriteString("}")
	return b.String()
}

func sortedKeys(h Hstore) []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return slicesSorted(keys)
}

func slicesSorted(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

func hstoreEqual(a, b Hstore) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	return maps.EqualFunc(a, b, func(x, y *string) bool {
		if x == nil || y == nil {
			return x == y
		}
		return *x == *y
	})
}

func TestParseHstore(t *testing.T) {
	cases := []struct {
		in   string
		want Hstore
	}{
		{"", Hstore{}},
		{" \n", Hstore{}},
		{"a=>b", Hstore{"a": strp("b")}},
		{`"a"=>"b", "c"=>NULL`, Hstore{"a": strp("b"), "c": nil}},
		{" a => b , ", Hstore{"a": strp("b")}},
		{`a=>"NULL", b=>NuLl, c=>\null`, Hstore{"a": strp("NULL"), "b": nil, "c": nil}},
		{",=>1", Hstore{",": strp("1")}},
		{"a=>,b=>c", Hstore{"a": strp(",b=>c")}},
		{"a=>b=c", Hstore{"a": strp("b=c")}},
		{`a"b=>c`, Hstore{`a"b`: strp("c")}},
		{`a\ b=>c\,d`, Hstore{"a b": strp("c,d")}},
		{`"a\"b"=>"c\\d"`, Hstore{`a"b`: strp(`c\d`)}},
		{`""=>x`, Hstore{"": strp("x")}},
		{"a=>b\v", Hstore{"a": strp("b\v")}},
		{"a=>1,a=>2", Hstore{"a": strp("1")}},
		{"a=>NULL, a=>1", Hstore{"a": nil}},
		{"ключ=>значение", Hstore{"ключ": strp("значение")}},
	}
	for _, c := range cases {
		got, err := ParseHstore(c.in)
		if err != nil || !hstoreEqual(got, c.want) {
			t.Errorf("ParseHstore(%q) = %s, %v; want %s", c.in, fmtHstore(got), err, fmtHstore(c.want))
		}
	}
}

func TestParseHstoreErrors(t *testing.T) {
	cases := []struct {
		in, msg string
	}{
		{"a=>b c", `hv: hstore: syntax error at position 5: expected "," or end of input after a value`},
		{"a b=>c", `hv: hstore: syntax error at position 2: expected "=>"`},
		{"ab  cd=>x", `hv: hstore: syntax error at position 4: expected "=>"`},
		{`"a"b=>c`, `hv: hstore: syntax error at position 3: expected "=>"`},
		{"=>1", `hv: hstore: syntax error at position 0: unexpected "=", expected a key`},
		{"a= >b", `hv: hstore: syntax error at position 2: expected ">" after "="`},
		{"a=>", `hv: hstore: syntax error at position 3: unexpected end of input, expected a value`},
		{"a", `hv: hstore: syntax error at position 1: unexpected end of input, expected "=>"`},
		{"a=", `hv: hstore: syntax error at position 2: unexpected end of input, expected ">" after "="`},
		{`a\`, `hv: hstore: syntax error at position 2: unexpected end of input after "\"`},
		{`"a\`, `hv: hstore: syntax error at position 3: unexpected end of input after "\" in a quoted string`},
		{`"ab`, `hv: hstore: syntax error at position 3: unexpected end of input in a quoted string`},
		{"a=>b\x00", `hv: hstore: syntax error at position 4: NUL byte`},
		{"a=>\xff", `hv: hstore: syntax error at position 3: invalid UTF-8`},
	}
	for _, c := range cases {
		got, err := ParseHstore(c.in)
		if !errors.Is(err, ErrHstoreSyntax) || got != nil || err.Error() != c.msg {
			t.Errorf("ParseHstore(%q) = %v, %v;\nwant error %s", c.in, got, err, c.msg)
		}
	}
}

func TestHstoreValue(t *testing.T) {
	cases := []struct {
		in   Hstore
		want driver.Value
	}{
		{nil, nil},
		{Hstore{}, ""},
		{Hstore{"b": strp("2"), "a": strp("1"), "n": nil}, `"a"=>"1", "b"=>"2", "n"=>NULL`},
		{Hstore{`q"k\`: strp(`v"\"`), "": strp("")}, `""=>"", "q\"k\\"=>"v\"\\\""`},
	}
	for _, c := range cases {
		got, err := c.in.Value()
		if err != nil || got != c.want {
			t.Errorf("Value(%s) = %#v, %v; want %#v", fmtHstore(c.in), got, err, c.want)
		}
		if s, ok := got.(string); ok {
			back, err := ParseHstore(s)
			if err != nil || !hstoreEqual(back, c.in) {
				t.Errorf("ParseHstore(Value(%s)) = %s, %v", fmtHstore(c.in), fmtHstore(back), err)
			}
		}
	}
	for _, bad := range []Hstore{{"a\x00": nil}, {"a": strp("\x00")}, {"\xff": nil}, {"a": strp("b\xc3")}} {
		if v, err := bad.Value(); err == nil {
			t.Errorf("Value(%s) = %#v, want an error", fmtHstore(bad), v)
		}
	}
	// More keys than the stack buffer.
	big := Hstore{}
	for i := range 40 {
		big[fmt.Sprintf("k%02d", i)] = strp(strconv.Itoa(i))
	}
	v, err := big.Value()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseHstore(v.(string))
	if err != nil || !hstoreEqual(back, big) || !strings.HasPrefix(v.(string), `"k00"=>"0", "k01"=>"1"`) {
		t.Fatalf("40-key round trip: %v, %v", v, err)
	}
}

func TestHstoreScan(t *testing.T) {
	var _ sql.Scanner = (*Hstore)(nil)
	var _ driver.Valuer = Hstore(nil)

	src := []byte(`"a"=>"1", "b"=>NULL`)
	for _, in := range []any{string(src), src} {
		var h Hstore
		if err := h.Scan(in); err != nil || !hstoreEqual(h, Hstore{"a": strp("1"), "b": nil}) {
			t.Errorf("Scan(%T) = %s, %v", in, fmtHstore(h), err)
		}
	}
	// The result must not alias a []byte source the driver will reuse.
	var h Hstore
	if err := h.Scan(src); err != nil {
		t.Fatal(err)
	}
	copy(src, strings.Repeat("x", len(src)))
	if !hstoreEqual(h, Hstore{"a": strp("1"), "b": nil}) {
		t.Fatalf("Scan result aliases its []byte source: %s", fmtHstore(h))
	}
	h = Hstore{"x": nil}
	if err := h.Scan(nil); err != nil || h != nil {
		t.Errorf("Scan(nil) = %v, %v; want nil map", h, err)
	}
	h = Hstore{"x": nil}
	if err := h.Scan(42); err == nil || h == nil {
		t.Errorf("Scan(42) = %v, %v; want an error and h unchanged", h, err)
	}
	if err := h.Scan("a=>b c"); !errors.Is(err, ErrHstoreSyntax) || len(h) != 1 {
		t.Errorf("Scan(bad) = %v, %v; want ErrHstoreSyntax and h unchanged", h, err)
	}
}

// hstoreDSN returns libpq keywords for a fresh database with the hstore
// extension, dropped when tb finishes (skipping tb, or failing it when
// CI=true, if PostgreSQL cannot be had).
func hstoreDSN(tb testing.TB) string {
	tb.Helper()
	kw := pgtest.Default(tb).CreateDatabase(tb)
	db, err := sql.Open("pgx", kw)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE EXTENSION IF NOT EXISTS hstore"); err != nil {
		tb.Fatalf("create extension hstore: %v", err)
	}
	return kw
}

// openHstoreDB opens a pgx database/sql handle on a fresh hstore database,
// skipping the test when PostgreSQL is unreachable.
func openHstoreDB(t testing.TB, driverName string) (*sql.DB, string) {
	kw := hstoreDSN(t)
	db, err := sql.Open(driverName, kw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, kw
}

var pgPosition = regexp.MustCompile(`at position (\d+)`)

// pgHstore parses s with PostgreSQL's hstore input. It returns the pairs,
// or the server's error when PostgreSQL rejects s; any other failure
// (connection, driver) is fatal.
func pgHstore(t testing.TB, db *sql.DB, s string) (Hstore, *pgconn.PgError) {
	t.Helper()
	rows, err := db.Query(`SELECT key, value FROM each($1::text::hstore)`, s)
	h := Hstore{}
	if err == nil {
		for rows.Next() {
			var k string
			var v sql.NullString
			if err = rows.Scan(&k, &v); err != nil {
				break
			}
			if v.Valid {
				h[k] = strp(v.String)
			} else {
				h[k] = nil
			}
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil, pgErr
		}
		t.Fatalf("query PostgreSQL for %q: %v", s, err)
	}
	return h, nil
}

// checkAgainstPG reports whether ParseHstore and PostgreSQL agree on s: both
// reject it (at the same position when PostgreSQL names one), or both read
// the same pairs. For duplicate keys in inputs of 7 or more pairs,
// PostgreSQL's (unstable) sort keeps an unspecified one of them, so any of
// the duplicates' values is accepted there.
func checkAgainstPG(t testing.TB, db *sql.DB, s string) (accepted bool) {
	t.Helper()
	ours, oerr := ParseHstore(s)
	theirs, perr := pgHstore(t, db, s)
	switch {
	case oerr != nil && perr != nil:
		if m := pgPosition.FindStringSubmatch(perr.Message); m != nil {
			if !strings.Contains(oerr.Error(), "at position "+m[1]+":") {
				t.Errorf("%q: position differs: ours %v; PostgreSQL %s", s, oerr, perr.Message)
			}
		}
		return false
	case oerr != nil:
		t.Errorf("%q: ParseHstore rejects (%v) but PostgreSQL accepts: %s", s, oerr, fmtHstore(theirs))
		return false
	case perr != nil:
		t.Errorf("%q: ParseHstore accepts %s but PostgreSQL rejects: %s (%s)", s, fmtHstore(ours), perr.Message, perr.Code)
		return false
	}
	if hstoreEqual(ours, theirs) {
		return true
	}
	pairs, _ := allHstorePairs(s)
	if len(pairs) >= 7 && len(ours) == len(theirs) {
		ok := true
		for k, tv := range theirs {
			found := false
			for _, p := range pairs {
				if p.key == k && hstoreEqual(Hstore{k: p.val}, Hstore{k: tv}) {
					found = true
					break
				}
			}
			ok = ok && found
		}
		if ok {
			return true
		}
	}
	t.Errorf("%q: pairs differ:\n ours       %s\n PostgreSQL %s", s, fmtHstore(ours), fmtHstore(theirs))
	return true
}

func TestHstoreDifferential(t *testing.T) {
	db, _ := openHstoreDB(t, "pgx")
	db.SetMaxOpenConns(1)
	if len(hstoreCorpus) < 60 {
		t.Fatalf("corpus has %d inputs, want at least 60", len(hstoreCorpus))
	}
	accepted := 0
	for _, s := range hstoreCorpus {
		if checkAgainstPG(t, db, s) {
			accepted++
		}
	}
	t.Logf("%d inputs: %d accepted and %d rejected by both", len(hstoreCorpus), accepted, len(hstoreCorpus)-accepted)
}

// TestHstoreDuplicatesPG documents PostgreSQL's choice among duplicate keys:
// the first for small inputs, an unspecified one once it sorts 7 or more
// pairs with its unstable quicksort. ParseHstore always keeps the first.
func TestHstoreDuplicatesPG(t *testing.T) {
	db, _ := openHstoreDB(t, "pgx")
	s := "h=>1, g=>1, a=>1, a=>2, b=>1, c=>1, d=>1, e=>1, f=>1, g=>1, h=>2, a=>3, i=>3, j=>3"
	ours, err := ParseHstore(s)
	if err != nil || *ours["a"] != "1" {
		t.Fatalf("ParseHstore keeps %v, %v; want the first a", ours["a"], err)
	}
	theirs, perr := pgHstore(t, db, s)
	if perr != nil {
		t.Fatal(perr)
	}
	t.Logf("PostgreSQL keeps a=>%s of a=>1, a=>2, a=>3", *theirs["a"])
	checkAgainstPG(t, db, s)
}

func TestHstoreColumnRoundTrip(t *testing.T) {
	values := []Hstore{
		{},
		{"a": strp("1")},
		{"null": nil, "NULL": strp("NULL"), "empty": strp(""), "": strp("empty key")},
		{`quote"`: strp(`"quoted"`), `back\slash`: strp(`\`), `both\"`: strp(`\"\\"`)},
		{"space key": strp(" lead and trail "), "a=>b": strp("c, d"), "comma,": strp("=>")},
		{"ключ": strp("значение"), "日本": strp("語"), "emoji": strp("😀\u00a0\v\t\n")},
		nil,
	}
	for _, drv := range []string{"pgx", "postgres"} {
		t.Run(drv, func(t *testing.T) {
			db, _ := openHstoreDB(t, drv)
			if _, err := db.Exec(`CREATE TABLE hs (id int PRIMARY KEY, h hstore)`); err != nil {
				t.Fatal(err)
			}
			for i, h := range values {
				if _, err := db.Exec(`INSERT INTO hs (id, h) VALUES ($1, $2)`, i, h); err != nil {
					t.Fatalf("insert %s: %v", fmtHstore(h), err)
				}
			}
			for i, want := range values {
				got := Hstore{"stale": nil}
				if err := db.QueryRow(`SELECT h FROM hs WHERE id = $1`, i).Scan(&got); err != nil {
					t.Fatalf("scan %d: %v", i, err)
				}
				if !hstoreEqual(got, want) {
					t.Errorf("row %d: got %s, want %s", i, fmtHstore(got), fmtHstore(want))
				}
				// The server's own reading of what we sent.
				var n int
				if err := db.QueryRow(`SELECT count(*) FROM each((SELECT h FROM hs WHERE id = $1))`, i).Scan(&n); err != nil || n != len(want) {
					t.Errorf("row %d: server sees %d pairs (%v), want %d", i, n, err, len(want))
				}
			}
			// Values through a bound parameter compare equal server-side too.
			var eq bool
			if err := db.QueryRow(`SELECT h = $1::hstore FROM hs WHERE id = 5`, values[5]).Scan(&eq); err != nil || !eq {
				t.Errorf("server-side comparison: %v, %v", eq, err)
			}
		})
	}
}

func FuzzHstore(f *testing.F) {
	for _, s := range hstoreCorpus {
		f.Add(s)
	}
	db, err := sql.Open("pgx", hstoreDSN(f))
	if err != nil {
		f.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	f.Cleanup(func() { db.Close() })
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHstore(s)
		if err != nil {
			if h != nil || !errors.Is(err, ErrHstoreSyntax) {
				t.Fatalf("ParseHstore(%q) = %v, %v", s, h, err)
			}
		} else {
			v, err := h.Value()
			if err != nil {
				t.Fatalf("Value(ParseHstore(%q)): %v", s, err)
			}
			back, err := ParseHstore(v.(string))
			if err != nil || !hstoreEqual(back, h) {
				t.Fatalf("%q -> %s -> %q -> %s, %v", s, fmtHstore(h), v, fmtHstore(back), err)
			}
		}
		checkAgainstPG(t, db, s)
	})
}
