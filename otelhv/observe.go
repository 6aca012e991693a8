package otelhv

import (
	"context"
	"errors"

	"github.com/hypervault/hv"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// Observe registers observable instruments that read c.Stats() at each
// collection: per host (db.client.connection.pool.name and hv.host are the
// host's name) the connections in use and idle, the pool size, waits,
// wait time, timeouts, schema switches, statements and errors, and how
// many shards the host owns; with WithShardMetrics the statement, error,
// switch, wait and timeout counts are per shard instead (shards with none
// are left out). Unregister the returned Registration when c is closed.
// It returns an error when an instrument cannot be created.
func (t *Tracer) Observe(c *hv.Connector) (metric.Registration, error) {
	m := t.meter
	var errs []error
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		i, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return i
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableUpDownCounter {
		i, err := m.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return i
	}
	conns := gauge("db.client.connection.count", "{connection}", "The number of connections that are currently in the state described by the state attribute.")
	maxConns := gauge("db.client.connection.max", "{connection}", "The maximum number of open connections allowed (pool_max).")
	timeouts := counter("db.client.connection.timeouts", "{timeout}", "The number of waits for a connection that ended in the pool block timeout.")
	waits := counter("hv.pool.waits", "{wait}", "Statements that found no free connection and waited.")
	statements := counter("hv.statements", "{statement}", "Statements run (each shard of a fan-out counts one).")
	failed := counter("hv.statement.errors", "{statement}", "Statements that failed.")
	switches := counter("hv.schema.switches", "{switch}", "search_path switches sent: statements that found no connection on their shard's schema.")
	shards := gauge("hv.host.shards", "{shard}", "Logical shards the host owns.")
	waitTime, err := m.Float64ObservableCounter("hv.pool.wait_time", metric.WithUnit("s"),
		metric.WithDescription("Total time statements waited for a connection."))
	errs = append(errs, err)
	replicaReads := counter("hv.replica.reads", "{read}", "Reads the replica was chosen for.")
	replicaFallbacks := counter("hv.replica.fallbacks", "{read}", "Reads in the replica's turn that went to the primary: no replica was fit (down, lagging past max_replica_lag, or behind the unit's write).")
	replicaDown := gauge("hv.replica.down", "{replica}", "1 while the replica does not answer its monitor, else 0.")
	replicaLag, err := m.Float64ObservableGauge("hv.replica.lag", metric.WithUnit("s"),
		metric.WithDescription("How long ago the primary had WAL the replica had not replayed, at the last poll."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	used := []attribute.KeyValue{semconv.DBClientConnectionStateUsed}
	idle := []attribute.KeyValue{semconv.DBClientConnectionStateIdle}
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, h := range c.Stats() {
			host := []attribute.KeyValue{semconv.DBClientConnectionPoolName(h.Host), HostKey.String(h.Host)}
			with := func(extra ...attribute.KeyValue) metric.ObserveOption {
				return metric.WithAttributes(append(extra, host...)...)
			}
			o.ObserveInt64(conns, int64(h.DB.InUse), with(used...))
			o.ObserveInt64(conns, int64(h.DB.Idle), with(idle...))
			o.ObserveInt64(maxConns, int64(h.PoolMax), with())
			o.ObserveInt64(shards, int64(h.Shards.Len()), with())
			o.ObserveFloat64(waitTime, h.WaitDuration.Seconds(), with())
			for _, r := range h.Replicas {
				replica := with(ReplicaKey.String(r.Host))
				o.ObserveInt64(replicaReads, r.Reads, replica)
				o.ObserveInt64(replicaFallbacks, r.Fallbacks, replica)
				o.ObserveFloat64(replicaLag, r.Lag.Seconds(), replica)
				down := int64(0)
				if r.Down {
					down = 1
				}
				o.ObserveInt64(replicaDown, down, replica)
			}
			if !t.shardMetrics {
				var st hv.ShardStats
				for _, s := range h.ShardStats {
					st.Statements += s.Statements
					st.Errors += s.Errors
				}
				o.ObserveInt64(statements, st.Statements, with())
				o.ObserveInt64(failed, st.Errors, with())
				o.ObserveInt64(switches, h.SchemaSwitches, with())
				o.ObserveInt64(waits, h.WaitCount, with())
				o.ObserveInt64(timeouts, h.Timeouts, with())
				continue
			}
			for _, s := range h.ShardStats {
				if s == (hv.ShardStats{Shard: s.Shard}) {
					continue
				}
				shard := with(ShardKey.Int(s.Shard))
				o.ObserveInt64(statements, s.Statements, shard)
				o.ObserveInt64(failed, s.Errors, shard)
				o.ObserveInt64(switches, s.SchemaSwitches, shard)
				o.ObserveInt64(waits, s.WaitCount, shard)
				o.ObserveInt64(timeouts, s.Timeouts, shard)
			}
		}
		return nil
	}, conns, maxConns, timeouts, waits, statements, failed, switches, shards, waitTime,
		replicaReads, replicaFallbacks, replicaDown, replicaLag)
}
