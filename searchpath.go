package hv

import (
	"fmt"
	"strings"
)

// Extension schema: the fleet's extensions (hstore, and whatever the
// application installs) live in a schema of their own that holds no tables,
// placed after the shard's schema on search_path:
//
//	SET search_path TO "shard0005", "hv_ext"
//
// so that extension types, functions and operators resolve unqualified
// (SELECT $1::hstore, body -> 'k', a GORM column type:hstore), while an
// unqualified table the shard lacks still fails: hv_ext holds none, and
// public is never on the path. PostgreSQL skips a schema on search_path
// that does not exist, so a database without hv_ext behaves as before.

const (
	// DefaultExtensionSchema is the schema of the fleet's extensions when
	// Config.ExtensionSchema is empty.
	DefaultExtensionSchema = "hv_ext"
	// NoExtensionSchema as Config.ExtensionSchema (DSN ext_schema=none)
	// keeps search_path on the shard's schema alone.
	NoExtensionSchema = "none"
)

// ExtSchema returns the schema of the fleet's extensions:
// c.ExtensionSchema, DefaultExtensionSchema when it is empty, or "" for
// NoExtensionSchema.
func (c *Config) ExtSchema() string {
	switch c.ExtensionSchema {
	case "":
		return DefaultExtensionSchema
	case NoExtensionSchema:
		return ""
	}
	return c.ExtensionSchema
}

// searchPathSQL returns the statement that puts a session on schema, with
// the extension schema ext after it when ext is not "": "SET search_path
// TO ...", or with local "SET LOCAL search_path TO ..." (the current
// transaction only). It is the only place hv builds that statement.
func searchPathSQL(local bool, schema, ext string) string {
	set := "SET search_path TO "
	if local {
		set = "SET LOCAL search_path TO "
	}
	if ext == "" {
		return set + quoteIdent(schema)
	}
	return set + quoteIdent(schema) + ", " + quoteIdent(ext)
}

// searchPathValue returns search_path's value for schema, with the
// extension schema ext after it when ext is not "", as set_config takes it
// (session_txmode.go) and as the server shows it after searchPathSQL's SET:
// names quoted only when they need it (current_setting('search_path') then
// reads the same in both pool modes).
func searchPathValue(schema, ext string) string {
	if ext == "" {
		return pathName(schema)
	}
	return pathName(schema) + ", " + pathName(ext)
}

// pathName quotes name in a search_path value unless it is a plain
// lowercase name, as PostgreSQL's quote_identifier does (keywords aside,
// which a value read back from set_config's list needs no quoting for).
func pathName(name string) string {
	for i := 0; i < len(name); i++ {
		b := name[i]
		if !(b == '_' || b >= 'a' && b <= 'z' || i > 0 && b >= '0' && b <= '9') {
			return quoteIdent(name)
		}
	}
	if name == "" {
		return quoteIdent(name)
	}
	return name
}

// checkExtensionSchema returns why ext cannot be the extension schema of a
// fleet whose shard schemas follow pattern, or "".
func checkExtensionSchema(ext, pattern string) string {
	switch ext {
	case "", NoExtensionSchema:
		return ""
	case "public":
		return "would put public on search_path, where a table a shard lacks would be read from public: " +
			"move the extensions to a schema of their own (ALTER EXTENSION hstore SET SCHEMA hv_ext) or use ext_schema=none"
	case "pg_catalog", "information_schema":
		return "is a system schema"
	}
	if strings.HasPrefix(ext, "pg_") {
		return "must not start with pg_ (reserved for system schemas)"
	}
	if len(ext) > 63 {
		return "is longer than 63 bytes"
	}
	for i := 0; i < len(ext); i++ {
		b := ext[i]
		if !(b == '_' || b >= 'a' && b <= 'z' || i > 0 && b >= '0' && b <= '9') {
			return "must be a lowercase name: a letter or '_', then letters, digits and '_'"
		}
	}
	if pattern == "" {
		pattern = DefaultSchemaPattern
	}
	var n int
	if _, err := fmt.Sscanf(ext, pattern, &n); err == nil && n >= 0 && n <= MaxShard && fmt.Sprintf(pattern, n) == ext {
		return fmt.Sprintf("is the schema of shard %d", n)
	}
	return ""
}
