package hv

import (
	"bytes"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// ErrInvalidKey is wrapped by every error that NewKey, ParseKey, Layout.NewKey,
// Key.Scan, Key.UnmarshalJSON, Key.MarshalJSON and Key.Value return for an
// out-of-range part, a malformed text or a negative key.
var ErrInvalidKey error = &sentinel{"invalid key"}

// DefaultEpochMillis is the default Key epoch in Unix milliseconds:
// 2013-09-16T21:05:31.352Z.
const DefaultEpochMillis int64 = 1379365531352

// Bit layout of a Key, most significant first: milliseconds since the epoch,
// logical shard, added id.
const (
	keyAddedBits = 10
	keyShardBits = 13
	keyTimeBits  = 41
	keyTimeShift = keyAddedBits + keyShardBits

	// MaxAddedID is the highest "added id" (sequence mod 1024) a Key carries.
	MaxAddedID = 1<<keyAddedBits - 1

	// keyMaxMillis is the last millisecond offset whose Key is non-negative.
	// The time field is 41 bits wide, but its top bit is the int64 sign bit:
	// a Key with it set would be negative, and negative Keys are invalid
	// (bigint columns, ParseKey and sorting all assume positive ids). So the
	// usable range is 2^40 ms, about 34.8 years after the epoch.
	keyMaxMillis = 1<<(keyTimeBits-1) - 1
)

// DefaultEpoch returns the default Key epoch, 2013-09-16T21:05:31.352Z, in UTC.
func DefaultEpoch() time.Time { return time.UnixMilli(DefaultEpochMillis).UTC() }

// Layout decodes and builds Keys for one epoch. The zero Layout uses
// DefaultEpoch; NewLayout makes one for a custom epoch (Config.Epoch). A
// Layout is a small immutable value, safe for concurrent use.
type Layout struct {
	// delta is the epoch in Unix milliseconds minus DefaultEpochMillis, so
	// that the zero value is the default layout.
	delta int64
}

// Bounds of the epochs NewLayout accepts: from the Unix epoch to a date that
// leaves the whole key range within year 9999.
var (
	minEpochMillis int64 = 0
	maxEpochMillis       = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli() - keyMaxMillis
)

// NewLayout returns the Layout for Keys counted from epoch, truncated to the
// millisecond. A zero epoch means DefaultEpoch. It returns an error wrapping
// ErrBadConfig when epoch is before 1970-01-01T00:00:00Z or so late that the
// key range would pass the year 9999.
func NewLayout(epoch time.Time) (Layout, error) {
	if epoch.IsZero() {
		return Layout{}, nil
	}
	if epoch.Year() < 1970 || epoch.Year() > 9999 {
		return Layout{}, fmt.Errorf("%w: key epoch %s outside 1970..%s", ErrBadConfig,
			epoch.UTC().Format(time.RFC3339Nano), time.UnixMilli(maxEpochMillis).UTC().Format(time.RFC3339Nano))
	}
	ms := epoch.UnixMilli()
	if ms < minEpochMillis || ms > maxEpochMillis {
		return Layout{}, fmt.Errorf("%w: key epoch %s outside 1970..%s", ErrBadConfig,
			epoch.UTC().Format(time.RFC3339Nano), time.UnixMilli(maxEpochMillis).UTC().Format(time.RFC3339Nano))
	}
	return Layout{delta: ms - DefaultEpochMillis}, nil
}

// DefaultLayout returns the Layout of DefaultEpoch (equal to the zero Layout).
func DefaultLayout() Layout { return Layout{} }

func (l Layout) epochMillis() int64 { return DefaultEpochMillis + l.delta }

// Epoch returns the layout's epoch in UTC, at millisecond precision.
func (l Layout) Epoch() time.Time { return time.UnixMilli(l.epochMillis()).UTC() }

// MaxTime returns the last millisecond, in UTC, that a Key of this layout can
// carry: the epoch plus 2^40-1 ms (the 41st bit would make the Key negative).
func (l Layout) MaxTime() time.Time { return time.UnixMilli(l.epochMillis() + keyMaxMillis).UTC() }

// Created returns the creation time carried in k, in UTC at millisecond
// precision. It never fails; for a negative (invalid) k the result is
// meaningless but well defined.
func (l Layout) Created(k Key) time.Time {
	ms := int64(uint64(k) >> keyTimeShift)
	return time.UnixMilli(l.epochMillis() + ms).UTC()
}

// NewKey builds the Key for created (truncated to the millisecond), logical
// shard 0..MaxShard and added id 0..MaxAddedID. It returns 0 and an error
// wrapping ErrInvalidKey that names the bad part when shard or added is out of
// range, or when created is before the epoch or after MaxTime.
func (l Layout) NewKey(created time.Time, shard, added int) (Key, error) {
	if shard < 0 || shard > MaxShard {
		return 0, fmt.Errorf("%w: shard %d outside 0..%d", ErrInvalidKey, shard, MaxShard)
	}
	if added < 0 || added > MaxAddedID {
		return 0, fmt.Errorf("%w: added id %d outside 0..%d", ErrInvalidKey, added, MaxAddedID)
	}
	// Compare as times first: UnixMilli is undefined far outside ±292 million years.
	if created.Before(l.Epoch()) {
		return 0, fmt.Errorf("%w: created time %s is before the epoch %s", ErrInvalidKey,
			created.UTC().Format(time.RFC3339Nano), l.Epoch().Format(time.RFC3339Nano))
	}
	if last := l.MaxTime(); created.Sub(last) >= time.Millisecond {
		return 0, fmt.Errorf("%w: created time %s is after the last representable time %s", ErrInvalidKey,
			created.UTC().Format(time.RFC3339Nano), last.Format(time.RFC3339Nano))
	}
	ms := created.UnixMilli() - l.epochMillis()
	if ms < 0 || ms > keyMaxMillis { // unreachable after the checks above; kept as a guard
		return 0, fmt.Errorf("%w: created time %s outside the key range", ErrInvalidKey,
			created.UTC().Format(time.RFC3339Nano))
	}
	return Key(ms<<keyTimeShift | int64(shard)<<keyAddedBits | int64(added)), nil
}

// Key is a 64-bit identifier that carries its own logical shard:
// 41 bits of milliseconds since the epoch, 13 bits of shard, 10 bits of sequence.
//
// The top bit of the time field is the int64 sign bit and valid Keys are
// never negative, so every non-negative int64 is a valid Key and the time
// range is 2^40 ms (until 2048-07-20T16:59:19.127Z with DefaultEpoch). Key's own methods
// use DefaultLayout; use a Layout for a custom epoch.
type Key int64

// NewKey builds a Key with DefaultLayout; see Layout.NewKey. It returns 0 and
// an error wrapping ErrInvalidKey for an out-of-range part.
func NewKey(created time.Time, shard, added int) (Key, error) {
	return DefaultLayout().NewKey(created, shard, added)
}

// ShardID returns the logical shard encoded in k.
func (k Key) ShardID() int { return int(uint64(k)>>10) & (NumShards - 1) }

// AddedID returns the "added id" (sequence mod 1024) encoded in k.
func (k Key) AddedID() int { return int(k & MaxAddedID) }

// Created returns the creation time encoded in k, counted from DefaultEpoch,
// in UTC at millisecond precision. For a custom epoch use Layout.Created.
func (k Key) Created() time.Time { return DefaultLayout().Created(k) }

// String returns k in decimal.
func (k Key) String() string { return strconv.FormatInt(int64(k), 10) }

// ParseKey parses a decimal Key: one to nineteen ASCII digits (no sign, no
// spaces) whose value fits in an int64. It returns 0 and an error wrapping
// ErrInvalidKey for anything else, including negative numbers.
func ParseKey(s string) (Key, error) {
	if s == "" {
		return 0, fmt.Errorf("%w: empty string", ErrInvalidKey)
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			if c == '-' && i == 0 {
				return 0, fmt.Errorf("%w: %q is negative", ErrInvalidKey, s)
			}
			return 0, fmt.Errorf("%w: %q: unexpected character %q at position %d, want a decimal digit", ErrInvalidKey, s, c, i)
		}
		v = v*10 + uint64(c-'0')
		if v > 1<<63-1 {
			return 0, fmt.Errorf("%w: %q is out of the int64 range", ErrInvalidKey, s)
		}
	}
	return Key(v), nil
}

// MarshalJSON encodes k as a JSON string holding its decimal form ("123"),
// which JavaScript reads without losing precision. It returns an error
// wrapping ErrInvalidKey when k is negative.
func (k Key) MarshalJSON() ([]byte, error) {
	if k < 0 {
		return nil, fmt.Errorf("%w: %d is negative", ErrInvalidKey, int64(k))
	}
	b := make([]byte, 0, 22)
	b = append(b, '"')
	b = strconv.AppendInt(b, int64(k), 10)
	return append(b, '"'), nil
}

// UnmarshalJSON decodes a Key from a JSON string holding a decimal ("123") or
// from a JSON integer (123). JSON null leaves k unchanged. It returns an error
// wrapping ErrInvalidKey, and leaves k unchanged, for anything else.
func (k *Key) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case string(data) == "null":
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("%w: JSON %s: %v", ErrInvalidKey, data, err)
		}
		v, err := ParseKey(s)
		if err != nil {
			return err
		}
		*k = v
		return nil
	default:
		v, err := ParseKey(string(data))
		if err != nil {
			return fmt.Errorf("%w: JSON %s is not a string or non-negative integer", ErrInvalidKey, data)
		}
		*k = v
		return nil
	}
}

// Scan implements sql.Scanner. It accepts an int64 (bigint) and a decimal
// string or []byte. It returns an error wrapping ErrInvalidKey, and leaves k
// unchanged, for SQL NULL (Key is not nullable: scan into sql.Null[hv.Key]),
// a negative number, malformed text, or any other type.
func (k *Key) Scan(src any) error {
	switch v := src.(type) {
	case int64:
		if v < 0 {
			return fmt.Errorf("%w: %d is negative", ErrInvalidKey, v)
		}
		*k = Key(v)
		return nil
	case []byte:
		p, err := ParseKey(string(v))
		if err != nil {
			return err
		}
		*k = p
		return nil
	case string:
		p, err := ParseKey(v)
		if err != nil {
			return err
		}
		*k = p
		return nil
	case nil:
		return fmt.Errorf("%w: cannot scan SQL NULL into hv.Key (use sql.Null[hv.Key])", ErrInvalidKey)
	default:
		return fmt.Errorf("%w: cannot scan %T into hv.Key", ErrInvalidKey, src)
	}
}

// Value implements driver.Valuer: it returns k as an int64 (bigint). It
// returns an error wrapping ErrInvalidKey when k is negative.
func (k Key) Value() (driver.Value, error) {
	if k < 0 {
		return nil, fmt.Errorf("%w: %d is negative", ErrInvalidKey, int64(k))
	}
	return int64(k), nil
}
