package hv

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// hv's errors carry one "hv: " prefix, however they are wrapped: a sentinel
// reads "hv: <text>", a *ShardError "hv: shard N on host H: <cause>", and
// an hv error inside another (a sentinel with details, a shard error inside
// a Datastore operation's) is written without its own prefix. The text
// without the prefix comes from the error's structure (the prefixed
// interface), never from cutting strings.

// prefixed is implemented by hv's own errors: bare returns the error's text
// without the "hv: " prefix, for an hv error that wraps it.
type prefixed interface {
	error
	bare() string
}

// bareText returns err's text without hv's prefix: an hv error's bare
// text, any other error's Error().
func bareText(err error) string {
	if p, ok := err.(prefixed); ok {
		return p.bare()
	}
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// sentinel is the type of hv's exported errors, for errors.Is.
type sentinel struct{ text string }

func (e *sentinel) Error() string { return "hv: " + e.text }
func (e *sentinel) bare() string  { return e.text }

// detailed is a sentinel with details of one occurrence: errors.Is matches
// the sentinel.
type detailed struct {
	sentinel *sentinel
	detail   string
}

func (e *detailed) Error() string { return "hv: " + e.bare() }
func (e *detailed) bare() string  { return e.sentinel.text + ": " + e.detail }
func (e *detailed) Unwrap() error { return e.sentinel }

// errorf returns an error matching of (one of hv's Err variables)
// whose text adds the formatted details.
func errorf(of error, format string, args ...any) error {
	return &detailed{sentinel: of.(*sentinel), detail: fmt.Sprintf(format, args...)}
}

var (
	// ErrNoShard is returned when a statement's context names no logical shard.
	ErrNoShard error = &sentinel{"no shard on the context: use hv.WithShard(ctx, n) or hv.WithKey(ctx, key)"}

	// ErrUnknownShard is returned when no configured host owns the shard a
	// statement is routed to, or the shard is outside 0..MaxShard.
	ErrUnknownShard error = &sentinel{"no host owns this shard"}

	// ErrPoolTimeout is returned when no connection of the shard's host became
	// free within the pool block timeout. It is never driver.ErrBadConn.
	ErrPoolTimeout error = &sentinel{"timed out waiting for a pooled connection"}

	// ErrShardMismatch is returned when a statement on a pinned connection
	// (a *sql.Conn or *sql.Tx) names a shard other than the one it is on.
	ErrShardMismatch error = &sentinel{"statement names a different shard than its connection or transaction"}

	// ErrBadConfig is wrapped by every error ParseConfig and NewConnector
	// return for invalid configuration.
	ErrBadConfig error = &sentinel{"invalid configuration"}

	// ErrConnBusy is returned when a statement runs on a *sql.Conn or *sql.Tx
	// whose rows from an earlier statement are still open: close them
	// first (PostgreSQL runs one statement at a time per connection).
	ErrConnBusy error = &sentinel{"connection busy: rows of an earlier statement are still open"}

	// ErrClosed is returned when a statement runs on a Connector that was
	// closed (Connector.Close, or the *sql.DB's Close while the statement
	// was getting its connection). A statement on a *sql.DB after its
	// Close gets database/sql's own "sql: database is closed" instead:
	// database/sql answers it without asking the driver.
	ErrClosed error = &sentinel{"connector is closed"}

	// ErrFanOutPinned is returned when a fan-out statement runs inside a
	// transaction or on a *sql.Conn pinned to one shard, and by BeginTx on
	// a fan-out context (a transaction lives on one shard).
	ErrFanOutPinned error = &sentinel{"fan-out is refused inside a transaction or on a pinned Conn; run it on the *sql.DB"}

	// ErrColumnMismatch is returned when the shards of a fan-out return
	// different columns.
	ErrColumnMismatch error = &sentinel{"fan-out shards returned different columns"}
)

// ShardError is the error of one logical shard: every failure of a
// statement, a pool wait, a fan-out's shard, EachShard, CreateShards and
// CheckLayout is one, naming the shard and the host that owns it. Unwrap
// returns the cause, so errors.Is finds hv's sentinels and the driver's
// errors (a *pgconn.PgError, say) through it.
type ShardError struct {
	// Shard is the logical shard that failed.
	Shard int
	// Host is the owning host's name ("host:port/dbname"), or "" when no
	// host owns the shard.
	Host string
	// Err is why the shard failed.
	Err error
}

// Error returns "hv: shard N on host H: <cause>" ("hv: shard N: <cause>"
// when no host owns the shard).
func (e *ShardError) Error() string { return "hv: " + e.bare() }

func (e *ShardError) bare() string {
	s := "shard " + strconv.Itoa(e.Shard)
	if e.Host != "" {
		s += " on host " + e.Host
	}
	return s + ": " + bareText(e.Err)
}

// Unwrap returns the underlying error.
func (e *ShardError) Unwrap() error { return e.Err }

// shardErr returns err as a *ShardError of shard on host, or nil for nil.
// An error that is already shard's ShardError is returned as it is, with
// the host filled in when it did not know it.
func shardErr(shard int, host string, err error) error {
	if err == nil {
		return nil
	}
	if se, ok := err.(*ShardError); ok && se.Shard == shard {
		if se.Host == "" && host != "" {
			return &ShardError{Shard: shard, Host: host, Err: se.Err}
		}
		return se
	}
	return &ShardError{Shard: shard, Host: host, Err: err}
}

// noted is an error with a note of what was being done when it happened.
type noted struct {
	note string
	err  error
}

func (e *noted) Error() string { return e.note + ": " + e.err.Error() }
func (e *noted) bare() string  { return e.note + ": " + bareText(e.err) }
func (e *noted) Unwrap() error { return e.err }

// note returns err with a note of what was being done ("commit"). A
// *ShardError keeps its shape, with the note inside it; nil stays nil.
func note(err error, what string) error {
	switch e := err.(type) {
	case nil:
		return nil
	case *ShardError:
		return &ShardError{Shard: e.Shard, Host: e.Host, Err: &noted{note: what, err: e.Err}}
	}
	return &noted{note: what, err: err}
}

// joinShardErrors joins per-shard errors in shard order, or returns nil
// when there are none: the Err of FanOutReport and EachShardResult.
func joinShardErrors(failed map[int]error) error {
	if len(failed) == 0 {
		return nil
	}
	shards := make([]int, 0, len(failed))
	for s := range failed {
		shards = append(shards, s)
	}
	slices.Sort(shards)
	errs := make([]error, len(shards))
	for i, s := range shards {
		errs[i] = failed[s]
	}
	return errors.Join(errs...)
}
