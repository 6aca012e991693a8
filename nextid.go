package hv

// PROVISIONAL: a simple stand-in for the real nextid.go, with the same
// signatures, so that the Datastore compiles and its tests run. It will be
// replaced.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// ErrLayoutMismatch is wrapped by errors reporting that a shard's key
// generator (its hv_layout()) was created for another epoch or shard number
// than the client's Layout expects.
var ErrLayoutMismatch = errors.New("hv: shard key layout mismatch")

// shardDDL returns idempotent statements that create, in the existing
// schema, the sequence and the functions next_id() (a bigint Key for shard
// and layout), lease_ids(n int) and hv_layout() (one row: epoch_ms bigint,
// shard int). Every name is schema-qualified.
func shardDDL(schema string, shard int, layout Layout) []string {
	s := quoteIdent(schema)
	epoch := strconv.FormatInt(layout.epochMillis(), 10)
	sh := strconv.Itoa(shard)
	seqLit := "'" + s + ".hv_id_seq'" // schema names hold no single quote (Config.Validate)
	return []string{
		"CREATE SEQUENCE IF NOT EXISTS " + s + ".hv_id_seq",
		"CREATE OR REPLACE FUNCTION " + s + `.next_id(OUT result bigint) LANGUAGE plpgsql AS $hv$
DECLARE
	seq_id bigint;
	now_millis bigint;
BEGIN
	seq_id := pg_catalog.nextval(` + seqLit + `::pg_catalog.regclass) % 1024;
	now_millis := pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000);
	result := ((now_millis - ` + epoch + `) << 23) | (` + sh + `::bigint << 10) | seq_id;
END
$hv$`,
		"CREATE OR REPLACE FUNCTION " + s + `.lease_ids(n int) RETURNS SETOF bigint LANGUAGE sql AS $hv$
SELECT ` + s + `.next_id() FROM pg_catalog.generate_series(1, n)
$hv$`,
		"CREATE OR REPLACE FUNCTION " + s + `.hv_layout(OUT epoch_ms bigint, OUT shard int) LANGUAGE sql IMMUTABLE AS $hv$
SELECT ` + epoch + `::bigint, ` + sh + `
$hv$`,
	}
}

// checkShardLayout reads the schema's hv_layout() through q and returns nil
// when it matches shard and layout, else an error wrapping ErrLayoutMismatch
// naming the shard and both values. Query errors are returned wrapped.
func checkShardLayout(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, schema string, shard int, layout Layout) error {
	var epochMS int64
	var got int
	err := q.QueryRowContext(ctx, "SELECT epoch_ms, shard FROM "+quoteIdent(schema)+".hv_layout()").Scan(&epochMS, &got)
	if err != nil {
		return fmt.Errorf("hv: shard %d: reading %s.hv_layout(): %w", shard, schema, err)
	}
	if epochMS != layout.epochMillis() || got != shard {
		return fmt.Errorf("%w: shard %d: schema %s has epoch %d ms and shard %d, the client expects epoch %d ms and shard %d",
			ErrLayoutMismatch, shard, schema, epochMS, got, layout.epochMillis(), shard)
	}
	return nil
}
