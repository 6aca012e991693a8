package hv

import (
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestKeyDefaultEpoch(t *testing.T) {
	want := time.Date(2013, 9, 16, 21, 5, 31, 352e6, time.UTC)
	if got := DefaultEpoch(); !got.Equal(want) || got.Location() != time.UTC {
		t.Fatalf("DefaultEpoch() = %v, want %v", got, want)
	}
	if got := DefaultLayout().Epoch(); !got.Equal(want) {
		t.Fatalf("DefaultLayout().Epoch() = %v, want %v", got, want)
	}
	var zero Layout
	if zero != DefaultLayout() {
		t.Fatalf("zero Layout %+v != DefaultLayout() %+v", zero, DefaultLayout())
	}
	l, err := NewLayout(time.Time{})
	if err != nil || l != DefaultLayout() {
		t.Fatalf("NewLayout(zero) = %+v, %v; want the default layout", l, err)
	}
	wantMax := time.Date(2048, 7, 20, 16, 59, 19, 127e6, time.UTC)
	if got := DefaultLayout().MaxTime(); !got.Equal(wantMax) {
		t.Fatalf("MaxTime() = %v, want %v", got, wantMax)
	}
}

func TestKeyRoundTrip(t *testing.T) {
	epoch := DefaultEpoch()
	last := DefaultLayout().MaxTime()
	times := []time.Time{
		epoch,
		epoch.Add(time.Millisecond),
		epoch.Add(999 * time.Microsecond), // truncated to the epoch
		time.Date(2024, 2, 29, 12, 34, 56, 789e6, time.UTC),
		time.Date(2024, 2, 29, 13, 34, 56, 789e6, time.FixedZone("CET", 3600)),
		last.Add(-time.Millisecond),
		last,
		last.Add(999 * time.Microsecond), // same millisecond as last
	}
	for _, created := range times {
		for _, shard := range []int{0, 1, 4096, MaxShard} {
			for _, added := range []int{0, 1, 512, MaxAddedID} {
				k, err := NewKey(created, shard, added)
				if err != nil {
					t.Fatalf("NewKey(%v, %d, %d): %v", created, shard, added, err)
				}
				if k < 0 {
					t.Fatalf("NewKey(%v, %d, %d) = %d, negative", created, shard, added, k)
				}
				wantCreated := created.Truncate(time.Millisecond).UTC()
				if got := k.Created(); !got.Equal(wantCreated) || got.Location() != time.UTC {
					t.Errorf("Created() = %v, want %v", got, wantCreated)
				}
				if k.ShardID() != shard || k.AddedID() != added {
					t.Errorf("key %d: shard %d added %d, want %d %d", k, k.ShardID(), k.AddedID(), shard, added)
				}
				p, err := ParseKey(k.String())
				if err != nil || p != k {
					t.Errorf("ParseKey(%q) = %d, %v; want %d", k.String(), p, err, k)
				}
			}
		}
	}
	// The extremes are the extremes of non-negative int64.
	if k, _ := NewKey(epoch, 0, 0); k != 0 {
		t.Errorf("first key = %d, want 0", k)
	}
	if k, _ := NewKey(last, MaxShard, MaxAddedID); k != math.MaxInt64 {
		t.Errorf("last key = %d, want MaxInt64", k)
	}
}

func TestKeyLayout(t *testing.T) {
	epoch := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	l, err := NewLayout(epoch.Add(123456 * time.Nanosecond)) // sub-ms part dropped
	if err != nil {
		t.Fatal(err)
	}
	if !l.Epoch().Equal(epoch) {
		t.Fatalf("Epoch() = %v, want %v", l.Epoch(), epoch)
	}
	if got, want := l.MaxTime(), epoch.Add((1<<40-1)*time.Millisecond); !got.Equal(want) {
		t.Fatalf("MaxTime() = %v, want %v", got, want)
	}
	created := time.Date(2025, 6, 1, 8, 0, 0, 5e6, time.UTC)
	k, err := l.NewKey(created, 77, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Created(k).Equal(created) || k.ShardID() != 77 || k.AddedID() != 3 {
		t.Fatalf("layout round trip: %v %d %d", l.Created(k), k.ShardID(), k.AddedID())
	}
	// The same key read with the default layout is off by the epoch difference.
	if got, want := k.Created().Sub(l.Created(k)), DefaultEpoch().Sub(epoch); got != want {
		t.Fatalf("default-layout offset %v, want %v", got, want)
	}
	if _, err := l.NewKey(epoch.Add(-time.Millisecond), 0, 0); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("before custom epoch: %v", err)
	}
	for _, bad := range []time.Time{
		time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		if _, err := NewLayout(bad); !errors.Is(err, ErrBadConfig) {
			t.Errorf("NewLayout(%v) error = %v, want ErrBadConfig", bad, err)
		}
	}
	if _, err := NewLayout(time.Unix(0, 0)); err != nil {
		t.Errorf("NewLayout(Unix epoch): %v", err)
	}
}

func TestKeyNewKeyErrors(t *testing.T) {
	ok := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	last := DefaultLayout().MaxTime()
	cases := []struct {
		created      time.Time
		shard, added int
		part         string
	}{
		{ok, -1, 0, "shard -1"},
		{ok, NumShards, 0, "shard 8192"},
		{ok, 0, -1, "added id -1"},
		{ok, 0, 1024, "added id 1024"},
		{DefaultEpoch().Add(-time.Millisecond), 0, 0, "before the epoch"},
		{DefaultEpoch().Add(-time.Nanosecond), 0, 0, "before the epoch"},
		{time.Time{}, 0, 0, "before the epoch"},
		{last.Add(time.Millisecond), 0, 0, "after the last representable time"},
		{time.Date(2084, 1, 1, 0, 0, 0, 0, time.UTC), 0, 0, "after the last representable time"},
		{time.Date(292277026, 1, 1, 0, 0, 0, 0, time.UTC), 0, 0, "after the last representable time"},
	}
	for _, c := range cases {
		k, err := NewKey(c.created, c.shard, c.added)
		if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), c.part) || k != 0 {
			t.Errorf("NewKey(%v, %d, %d) = %d, %v; want ErrInvalidKey naming %q", c.created, c.shard, c.added, k, err, c.part)
		}
	}
}

func TestKeyParseErrors(t *testing.T) {
	for _, s := range []string{
		"", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "abc", "12a",
		"9223372036854775808", "99999999999999999999", "-9223372036854775808", "١٢٣",
	} {
		if k, err := ParseKey(s); !errors.Is(err, ErrInvalidKey) || k != 0 {
			t.Errorf("ParseKey(%q) = %d, %v; want ErrInvalidKey", s, k, err)
		}
	}
	for _, s := range []string{"0", "007", "9223372036854775807"} {
		k, err := ParseKey(s)
		want, _ := strconv.ParseInt(s, 10, 64)
		if err != nil || int64(k) != want {
			t.Errorf("ParseKey(%q) = %d, %v; want %d", s, k, err, want)
		}
	}
}

func TestKeyJSON(t *testing.T) {
	k := Key(1234567890123456789)
	b, err := json.Marshal(k)
	if err != nil || string(b) != `"1234567890123456789"` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	type doc struct {
		ID  Key  `json:"id"`
		Ref *Key `json:"ref,omitempty"`
	}
	b, err = json.Marshal(doc{ID: k})
	if err != nil || string(b) != `{"id":"1234567890123456789"}` {
		t.Fatalf("Marshal(doc) = %s, %v", b, err)
	}
	for in, want := range map[string]Key{
		`{"id":"1234567890123456789"}`: k,
		`{"id":1234567890123456789}`:   k,
		`{"id": "0"}`:                  0,
		`{"id":"\u0031\u0032"}`:        12,
		`{"id":9223372036854775807}`:   math.MaxInt64,
	} {
		var d doc
		if err := json.Unmarshal([]byte(in), &d); err != nil || d.ID != want {
			t.Errorf("Unmarshal(%s) = %d, %v; want %d", in, d.ID, err, want)
		}
	}
	d := doc{ID: 42}
	if err := json.Unmarshal([]byte(`{"id":null}`), &d); err != nil || d.ID != 42 {
		t.Errorf("null: ID = %d, %v; want unchanged 42", d.ID, err)
	}
	for _, in := range []string{
		`{"id":-1}`, `{"id":"-1"}`, `{"id":1.5}`, `{"id":1e3}`, `{"id":""}`, `{"id":"x"}`,
		`{"id":true}`, `{"id":[1]}`, `{"id":{}}`, `{"id":9223372036854775808}`, `{"id":" 1"}`,
	} {
		d := doc{ID: 7}
		err := json.Unmarshal([]byte(in), &d)
		if !errors.Is(err, ErrInvalidKey) || d.ID != 7 {
			t.Errorf("Unmarshal(%s) = %d, %v; want ErrInvalidKey and ID unchanged", in, d.ID, err)
		}
	}
	if _, err := json.Marshal(Key(-1)); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("Marshal(-1) error = %v", err)
	}
}

func TestKeySQL(t *testing.T) {
	var _ sql.Scanner = (*Key)(nil)
	var _ driver.Valuer = Key(0)

	for _, src := range []any{int64(99), []byte("99"), "99"} {
		var k Key
		if err := k.Scan(src); err != nil || k != 99 {
			t.Errorf("Scan(%#v) = %d, %v", src, k, err)
		}
	}
	for _, src := range []any{nil, int64(-1), []byte("-1"), "x", 1.5, true, int32(1)} {
		k := Key(5)
		err := k.Scan(src)
		if !errors.Is(err, ErrInvalidKey) || k != 5 {
			t.Errorf("Scan(%#v) = %d, %v; want ErrInvalidKey, unchanged", src, k, err)
		}
		if src == nil && !strings.Contains(err.Error(), "NULL") {
			t.Errorf("Scan(nil) error %q does not name NULL", err)
		}
	}
	var n sql.Null[Key]
	if err := n.Scan(nil); err != nil || n.Valid {
		t.Errorf("sql.Null[Key].Scan(nil) = %+v, %v", n, err)
	}
	v, err := Key(123).Value()
	if err != nil || v != int64(123) {
		t.Errorf("Value() = %#v, %v", v, err)
	}
	if _, err := Key(-1).Value(); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("Value(-1) error = %v", err)
	}
}

func TestKeyNegativeNoPanic(t *testing.T) {
	for _, k := range []Key{-1, math.MinInt64, -1 << 23} {
		_ = k.Created()
		_ = k.ShardID()
		_ = k.AddedID()
		_ = k.String()
		if s := k.ShardID(); s < 0 || s > MaxShard {
			t.Errorf("ShardID(%d) = %d out of range", k, s)
		}
		if a := k.AddedID(); a < 0 && a > MaxAddedID {
			t.Errorf("AddedID(%d) = %d", k, a)
		}
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"0", "1", "9223372036854775807", "9223372036854775808", "-1", "+1", "", "007", "1e3", " 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) || k != 0 {
				t.Fatalf("ParseKey(%q) = %d, %v", s, k, err)
			}
			return
		}
		if k < 0 {
			t.Fatalf("ParseKey(%q) = %d, negative", s, k)
		}
		if want, err := strconv.ParseInt(s, 10, 64); err != nil || want != int64(k) {
			t.Fatalf("ParseKey(%q) = %d, strconv says %d, %v", s, k, want, err)
		}
		if p, err := ParseKey(k.String()); err != nil || p != k {
			t.Fatalf("round trip %q -> %d -> %q -> %d, %v", s, k, k.String(), p, err)
		}
		// Rebuilding the key from its parts gives it back.
		r, err := NewKey(k.Created(), k.ShardID(), k.AddedID())
		if err != nil || r != k {
			t.Fatalf("NewKey(parts of %d) = %d, %v", k, r, err)
		}
		var j Key
		b, err := json.Marshal(k)
		if err != nil || json.Unmarshal(b, &j) != nil || j != k {
			t.Fatalf("JSON round trip of %d: %s, %v -> %d", k, b, err, j)
		}
	})
}
