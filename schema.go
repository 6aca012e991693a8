package hv

import "strings"

// quoteIdent quotes name as a PostgreSQL identifier.
func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// quoteLiteral quotes s as a PostgreSQL string literal (with
// standard_conforming_strings on, PostgreSQL's default).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// changesSearchPath reports whether a statement may change the session's
// search_path, so that hv must forget which schema the connection is on:
// SET, RESET and DISCARD commands, and anything that mentions search_path or
// set_config. It errs on the side of forgetting, which only costs one SET.
func changesSearchPath(query string) bool {
	switch firstKeyword(query) {
	case "set", "reset", "discard":
		return true
	}
	return containsFold(query, "search_path") || containsFold(query, "set_config")
}

// leadingKeywords are the first words of a statement hv acts on.
var leadingKeywords = [...]string{
	"set", "reset", "discard", "deallocate", // change session state
	"select", "insert", "update", "delete", "with", "values", "table", "merge", // data
}

// firstKeyword returns the first word of query, skipping white space and
// comments, in lower case when it is one of leadingKeywords, else "". It
// does not allocate.
func firstKeyword(q string) string {
	i := 0
	for i < len(q) {
		switch {
		case q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r' || q[i] == '\f' || q[i] == '(':
			i++
		case strings.HasPrefix(q[i:], "--"):
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				return ""
			}
			i += j + 1
		case strings.HasPrefix(q[i:], "/*"):
			j := strings.Index(q[i+2:], "*/")
			if j < 0 {
				return ""
			}
			i += j + 4
		default:
			j := i
			for j < len(q) && isWordByte(q[j]) {
				j++
			}
			for _, k := range leadingKeywords {
				if len(k) == j-i && strings.EqualFold(k, q[i:j]) {
					return k
				}
			}
			return ""
		}
	}
	return ""
}

func isWordByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b == '_'
}

// containsFold reports whether s contains the lower-case ASCII word sub,
// ignoring ASCII case, without allocating.
func containsFold(s, sub string) bool {
	n := len(sub)
	for i := 0; i+n <= len(s); i++ {
		if s[i]|0x20 != sub[0] {
			continue
		}
		j := 1
		for j < n && (s[i+j]|0x20 == sub[j] || sub[j] == '_' && s[i+j] == '_') {
			j++
		}
		if j == n {
			return true
		}
	}
	return false
}
