package otelhv

import (
	"context"
	"database/sql/driver"
	"errors"
	"strings"

	"github.com/hypervault/hv"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// hv's own attributes, next to the database semantic conventions'.
const (
	// ShardKey is the logical shard a statement ran on.
	ShardKey = attribute.Key("hv.shard")
	// SchemaKey is the shard's schema.
	SchemaKey = attribute.Key("hv.schema")
	// HostKey is the host as hv names it in errors and Stats
	// ("host:port/dbname").
	HostKey = attribute.Key("hv.host")
	// ReplicaKey is a streaming replica of the host, as hv names it in
	// Stats ("host:port/dbname"), on the replica metrics.
	ReplicaKey = attribute.Key("hv.replica")
	// OperationKey is hv's operation: query, exec, begin, commit or
	// rollback.
	OperationKey = attribute.Key("hv.operation")
	// FanOutShardsKey is how many shards a fan-out ran on.
	FanOutShardsKey = attribute.Key("hv.fanout.shards")
	// PoolWaitKey is how long a statement waited for a connection, in
	// seconds (on the hv.pool.wait event).
	PoolWaitKey = attribute.Key("hv.pool.wait.duration")
)

// namespace returns db.namespace for PostgreSQL: the database, qualified
// by the schema ("app|shard0005") when schema is not "".
func namespace(database, schema string) string {
	switch {
	case schema == "":
		return database
	case database == "":
		return schema
	}
	return database + "|" + schema
}

// appendTarget appends the attributes of where st runs, when it is routed.
func appendTarget(attrs []attribute.KeyValue, st *hv.Statement) []attribute.KeyValue {
	if st.Shard < 0 || st.Host == nil {
		return attrs
	}
	attrs = append(attrs,
		semconv.DBNamespace(namespace(st.Host.Database, st.Schema)),
		ShardKey.Int(st.Shard), SchemaKey.String(st.Schema), HostKey.String(st.Host.Name),
		semconv.ServerAddress(st.Host.Address))
	if st.Host.Port != 0 {
		attrs = append(attrs, semconv.ServerPort(st.Host.Port))
	}
	return attrs
}

// keywords are the SQL commands whose name becomes db.operation.name.
var keywords = []string{
	"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES", "TABLE",
	"COPY", "CALL", "DO", "CREATE", "ALTER", "DROP", "TRUNCATE", "GRANT", "REVOKE",
	"SET", "SHOW", "RESET", "EXPLAIN", "ANALYZE", "VACUUM", "LOCK", "LISTEN", "NOTIFY",
	"BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PREPARE", "EXECUTE",
	"DEALLOCATE", "DECLARE", "FETCH", "CLOSE", "REFRESH", "COMMENT", "REINDEX", "CLUSTER",
}

// operationName returns the SQL command of sql: its first keyword, upper
// case, when it is one of keywords, else "". It skips white space,
// comments and opening parentheses, and does not allocate.
func operationName(sql string) string {
	for {
		sql = strings.TrimLeft(sql, " \t\r\n(")
		switch {
		case strings.HasPrefix(sql, "--"):
			i := strings.IndexByte(sql, '\n')
			if i < 0 {
				return ""
			}
			sql = sql[i+1:]
			continue
		case strings.HasPrefix(sql, "/*"):
			i := strings.Index(sql, "*/")
			if i < 0 {
				return ""
			}
			sql = sql[i+2:]
			continue
		}
		break
	}
	n := 0
	for n < len(sql) && (sql[n]|0x20 >= 'a' && sql[n]|0x20 <= 'z') {
		n++
	}
	word := sql[:n]
	for _, k := range keywords {
		if strings.EqualFold(word, k) {
			return k
		}
	}
	return ""
}

// errorType returns error.type for err: the SQLSTATE of a server error
// (also db.response.status_code), else a name for hv's and the
// context's errors, else "_OTHER".
func errorType(err error) (typ, sqlState string) {
	var pgErr *pgconn.PgError
	var pqErr *pq.Error
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Code, pgErr.Code
	case errors.As(err, &pqErr):
		return string(pqErr.Code), string(pqErr.Code)
	}
	for _, e := range knownErrors {
		if errors.Is(err, e.err) {
			return e.name, ""
		}
	}
	return semconv.ErrorTypeOther.Value.AsString(), ""
}

var knownErrors = []struct {
	err  error
	name string
}{
	{hv.ErrPoolTimeout, "hv.pool_timeout"},
	{hv.ErrNoShard, "hv.no_shard"},
	{hv.ErrUnknownShard, "hv.unknown_shard"},
	{hv.ErrShardMismatch, "hv.shard_mismatch"},
	{hv.ErrColumnMismatch, "hv.column_mismatch"},
	{hv.ErrClosed, "hv.closed"},
	{context.DeadlineExceeded, "context.deadline_exceeded"},
	{context.Canceled, "context.canceled"},
	{driver.ErrBadConn, "driver.bad_conn"},
}
