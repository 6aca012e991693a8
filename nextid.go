package hv

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

// ErrLayoutMismatch is wrapped by errors reporting that a shard's key
// generator (its hv_layout()) was created for another epoch or shard number
// than the client's Layout expects.
var ErrLayoutMismatch error = &sentinel{"shard key layout mismatch"}

// How next_id() makes keys that cannot repeat
//
// Instagram's next_id() takes nextval() % 1024 and then reads the clock; a
// backend descheduled between the two, or more than 1024 calls in one
// millisecond, repeats a key. hv's makes the time and the sequence bits of a
// key together from one value of one sequence, hv_id_seq, whose values C
// are read as C>>10 milliseconds since the epoch and C&1023 added id. Values
// of a sequence never repeat, so neither do keys, whatever the timing, as
// long as the sequence only ever moves forward past every value it handed
// out.
//
// Keeping C in step with the clock needs a jump: when the sequence lags the
// clock (fewer than 1024 calls a millisecond), C is set forward with setval.
// A setval can move the sequence below values that concurrent nextval calls
// handed out meanwhile, so jumps are fenced by a second sequence used as a
// seqlock generation counter, hv_id_gen: a jumper (one at a time, holding a
// session-level advisory lock for the jump only) makes it odd, reads cur = nextval, sets
// the sequence to max(clock*1024, cur), and makes it even again. A caller
// reads the generation, calls nextval, reads the generation again, and keeps
// its value only when both readings are the same even number: then its
// nextval happened entirely outside any jump, so its value is below every
// value handed out after the jump (cur <= the new start) or itself after the
// jump. Values taken during a jump are thrown away (gaps, never repeats). A
// jumper cancelled half-way gives the lock back but leaves the generation
// odd; the next caller to take the lock finishes the jump. Sequence operations are not
// transactional, so none of this is undone by a rollback.
//
// A key's time is the clock's within 2 ms at the call (unless more than
// 1024 keys a millisecond are asked for: then the time runs ahead). Past the
// end of the 41-bit time range next_id() raises an error instead of
// wrapping.

// lagMillis is how far behind the clock a sequence value may be and still
// be handed out.
const lagMillis = 2

// shardDDL returns idempotent statements that create, in the existing
// schema, the sequences and the functions next_id() (a bigint Key for shard
// and layout), lease_ids(n int) (a block of n consecutive sequence values for
// a client-side Generator) and hv_layout() (one row: epoch_ms bigint, shard
// int). Every name is schema-qualified, so the statements work whatever the
// search_path.
func shardDDL(schema string, shard int, layout Layout) []string {
	s := quoteIdent(schema)
	r := strings.NewReplacer( // longer names first: at one position the first match wins
		"$SEQ", "'"+s+".hv_id_seq'::pg_catalog.regclass", // schema names hold no single quote (Config.Validate)
		"$GEN", "'"+s+".hv_id_gen'::pg_catalog.regclass",
		"$EPOCH", strconv.FormatInt(layout.epochMillis(), 10),
		"$SHARD", strconv.Itoa(shard),
		"$MAXMS", strconv.FormatInt(keyMaxMillis, 10),
		"$LAG", strconv.Itoa(lagMillis),
		"$LOCK", strconv.Itoa(lockNextIDJump),
		"$S", s,
	)
	return []string{
		r.Replace(`CREATE SEQUENCE IF NOT EXISTS $S.hv_id_seq MINVALUE 0 START 0 CACHE 1`),
		r.Replace(`CREATE SEQUENCE IF NOT EXISTS $S.hv_id_gen MINVALUE 0 START 0 CACHE 1`),
		// hv_now_ms: milliseconds since the epoch, by the server's clock.
		r.Replace(`CREATE OR REPLACE FUNCTION $S.hv_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS $hv$
SELECT pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint - $EPOCH
$hv$`),
		// hv_jump: move hv_id_seq to the clock (and past every value it
		// handed out), fenced by the generation counter, and reserve the n
		// values after the new start; returns the start, or NULL when
		// another session is jumping and wait is false. The lock is the
		// session's and is given back at the end, also on an error or a
		// cancel half-way (the next jumper then finishes the jump).
		r.Replace(`CREATE OR REPLACE FUNCTION $S.hv_jump(n bigint, wait boolean) RETURNS bigint LANGUAGE plpgsql AS $hv$
DECLARE
	g bigint;
	cur bigint;
	target bigint;
BEGIN
	IF wait THEN
		PERFORM pg_catalog.pg_advisory_lock($LOCK, $SHARD);
	ELSIF NOT pg_catalog.pg_try_advisory_lock($LOCK, $SHARD) THEN
		RETURN NULL;
	END IF;
	BEGIN
		g := coalesce(pg_catalog.pg_sequence_last_value($GEN), 0);
		IF g % 2 = 0 THEN
			PERFORM pg_catalog.nextval($GEN); -- odd: a jump is under way
		END IF;
		cur := pg_catalog.nextval($SEQ);
		target := greatest($S.hv_now_ms() * 1024, cur);
		PERFORM pg_catalog.setval($SEQ, target + n);
		PERFORM pg_catalog.nextval($GEN); -- even again
	EXCEPTION WHEN query_canceled OR others THEN
		PERFORM pg_catalog.pg_advisory_unlock($LOCK, $SHARD);
		RAISE;
	END;
	PERFORM pg_catalog.pg_advisory_unlock($LOCK, $SHARD);
	RETURN target;
END
$hv$`),
		// next_id: the fast path is one pass, four PL/pgSQL expressions.
		r.Replace(`CREATE OR REPLACE FUNCTION $S.next_id() RETURNS bigint LANGUAGE plpgsql AS $hv$
DECLARE
	g1 bigint;
	v bigint;
BEGIN
	LOOP
		g1 := pg_catalog.pg_sequence_last_value($GEN);
		v := pg_catalog.nextval($SEQ);
		IF g1 IS NOT DISTINCT FROM pg_catalog.pg_sequence_last_value($GEN) AND coalesce(g1, 0) % 2 = 0
			AND v >> 10 BETWEEN $S.hv_now_ms() - $LAG AND $MAXMS THEN
			RETURN ((v >> 10) << 23) | ($SHARD::bigint << 10) | (v & 1023);
		END IF;
		IF v >> 10 > $MAXMS THEN
			RAISE EXCEPTION 'hv: next_id() on shard %: the key time range ends at % ms after the epoch', $SHARD, $MAXMS
				USING ERRCODE = 'numeric_value_out_of_range';
		END IF;
		-- Behind the clock, or a jump under way (or abandoned): jump, or
		-- let the session that is jumping finish, and try again.
		PERFORM $S.hv_jump(0, false);
	END LOOP;
END
$hv$`),
		r.Replace(`CREATE OR REPLACE FUNCTION $S.lease_ids(n int, OUT first_seq bigint, OUT count int, OUT server_ms bigint) LANGUAGE plpgsql AS $hv$
BEGIN
	IF n < 1 OR n > 1048576 THEN
		RAISE EXCEPTION 'hv: lease_ids(%) on shard %: n must be in 1..1048576', n, $SHARD USING ERRCODE = 'invalid_parameter_value';
	END IF;
	first_seq := $S.hv_jump(n::bigint, true) + 1;
	count := n;
	server_ms := $S.hv_now_ms();
	IF (first_seq + n - 1) >> 10 > $MAXMS THEN
		RAISE EXCEPTION 'hv: lease_ids() on shard %: the key time range ends at % ms after the epoch', $SHARD, $MAXMS
			USING ERRCODE = 'numeric_value_out_of_range';
	END IF;
END
$hv$`),
		r.Replace(`CREATE OR REPLACE FUNCTION $S.hv_layout(OUT epoch_ms bigint, OUT shard int) LANGUAGE sql IMMUTABLE AS $hv$
SELECT $EPOCH::bigint, $SHARD
$hv$`),
	}
}

// checkShardLayout reads the schema's hv_layout() through q and returns nil
// when it matches shard and layout, else an error wrapping ErrLayoutMismatch
// naming the shard and both values. Query errors are returned wrapped with
// the shard.
func checkShardLayout(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, schema string, shard int, layout Layout) error {
	var epochMS int64
	var got int
	err := q.QueryRowContext(ctx, "SELECT epoch_ms, shard FROM "+quoteIdent(schema)+".hv_layout()").Scan(&epochMS, &got)
	if err != nil {
		return note(shardErr(shard, "", err), "reading "+schema+".hv_layout()")
	}
	if epochMS != layout.epochMillis() || got != shard {
		return &ShardError{Shard: shard, Err: errorf(ErrLayoutMismatch, "schema %s has epoch %d ms and shard %d, the client expects epoch %d ms and shard %d",
			schema, epochMS, got, layout.epochMillis(), shard)}
	}
	return nil
}
