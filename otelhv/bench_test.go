package otelhv_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"

	"github.com/XSAM/otelsql"
	"github.com/hypervault/hv"
	"github.com/hypervault/hv/internal/pgtest"
	"github.com/hypervault/hv/otelhv"
	_ "github.com/jackc/pgx/v5/stdlib"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// BenchmarkOverhead is a point SELECT on one shard with and without
// OpenTelemetry: through hv without a Tracer and with otelhv's, and, on the
// same server, through plain pgx (database/sql, schema-qualified) without
// and with otelsql. Both instrumentations get the same providers: every
// span sampled and recorded (no exporter), metrics to a manual reader.
// Compare with benchstat -col /otel, per /via.
func BenchmarkOverhead(b *testing.B) {
	var segs, hosts []string
	for i, s := range pgtest.Servers(b, 2) {
		kw := s.CreateDatabase(b)
		hosts = append(hosts, kw)
		db, err := sql.Open("pgx", kw)
		if err != nil {
			b.Fatal(err)
		}
		r := pgtest.FleetRanges[i]
		var ddl strings.Builder
		for n := r[0]; n < r[1]; n++ {
			fmt.Fprintf(&ddl, "CREATE SCHEMA shard%04[1]d; CREATE TABLE shard%04[1]d.t (id int PRIMARY KEY, shard int); INSERT INTO shard%04[1]d.t VALUES (0, %[1]d);", n)
		}
		if _, err := db.Exec(ddl.String()); err != nil {
			b.Fatal(err)
		}
		db.Close()
		segs = append(segs, fmt.Sprintf("shards=%d-%d %s", r[0], r[1], kw))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	openHV := func(b *testing.B, t hv.Tracer) *sql.DB {
		cfg, err := hv.ParseConfig(strings.Join(segs, "; "))
		if err != nil {
			b.Fatal(err)
		}
		cfg.Tracer = t
		c, err := hv.NewConnector(cfg)
		if err != nil {
			b.Fatal(err)
		}
		return sql.OpenDB(c)
	}
	run := func(b *testing.B, db *sql.DB, ctx context.Context, query string) {
		defer db.Close()
		db.SetMaxIdleConns(10)
		var shard int
		for range 100 {
			if err := db.QueryRowContext(ctx, query, 0).Scan(&shard); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := db.QueryRowContext(ctx, query, 0).Scan(&shard); err != nil {
				b.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	const direct, routed = "SELECT shard FROM shard0005.t WHERE id = $1", "SELECT shard FROM t WHERE id = $1"
	b.Run("via=pgx/otel=off", func(b *testing.B) {
		db, err := sql.Open("pgx", hosts[0])
		if err != nil {
			b.Fatal(err)
		}
		run(b, db, ctx, direct)
	})
	b.Run("via=pgx/otel=otelsql", func(b *testing.B) {
		db, err := otelsql.Open("pgx", hosts[0], otelsql.WithTracerProvider(tp), otelsql.WithMeterProvider(mp),
			otelsql.WithAttributes(semconv.DBSystemNamePostgreSQL))
		if err != nil {
			b.Fatal(err)
		}
		run(b, db, ctx, direct)
	})
	b.Run("via=hv/otel=off", func(b *testing.B) {
		run(b, openHV(b, nil), hv.WithShard(ctx, 5), routed)
	})
	b.Run("via=hv/otel=otelhv", func(b *testing.B) {
		t, err := otelhv.New(otelhv.WithTracerProvider(tp), otelhv.WithMeterProvider(mp))
		if err != nil {
			b.Fatal(err)
		}
		run(b, openHV(b, t), hv.WithShard(ctx, 5), routed)
	})
}
