package hv

import (
	"database/sql/driver"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// ErrHstoreSyntax is wrapped by every error ParseHstore and Hstore.Scan
// return for text that PostgreSQL's hstore input would reject. The message
// names the byte position, e.g.
// `hstore: syntax error at position 7: expected "=>"`.
var ErrHstoreSyntax error = &sentinel{"hstore: syntax error"}

// Hstore is a PostgreSQL hstore value: a map from keys to values where a nil
// value is SQL NULL. It implements sql.Scanner and driver.Valuer and works
// with both pgx (stdlib) and lib/pq. A nil Hstore is SQL NULL; an empty
// non-nil Hstore is the empty hstore.
type Hstore map[string]*string

// Scan implements sql.Scanner. It parses the hstore text form from a string
// (pgx) or []byte (lib/pq) with ParseHstore; SQL NULL sets *h to nil. It
// returns an error wrapping ErrHstoreSyntax for malformed text, or a plain
// error for any other source type, and leaves *h unchanged on error. The
// result shares no memory with a []byte source.
func (h *Hstore) Scan(src any) error {
	var s string
	switch v := src.(type) {
	case nil:
		*h = nil
		return nil
	case string:
		s = v
	case []byte:
		s = string(v) // one copy; parsed keys and values are substrings of it
	default:
		return fmt.Errorf("hv: hstore: cannot scan %T into hv.Hstore", src)
	}
	m, err := ParseHstore(s)
	if err != nil {
		return err
	}
	*h = m
	return nil
}

// Value implements driver.Valuer. It returns nil (SQL NULL) for a nil
// Hstore, and otherwise the canonical hstore text, keys in byte order:
// `"k"=>"v", "n"=>NULL`, with `"` and `\` escaped by a backslash. It returns
// an error when a key or value contains a NUL byte or invalid UTF-8, which
// PostgreSQL text cannot hold.
func (h Hstore) Value() (driver.Value, error) {
	if h == nil {
		return nil, nil
	}
	if len(h) == 0 {
		return "", nil
	}
	var kbuf [16]string
	keys := kbuf[:0]
	size := 0
	for k, v := range h {
		keys = append(keys, k)
		if err := checkHstoreText("key", k); err != nil {
			return nil, err
		}
		size += quotedLen(k) + 4 // "=>" and ", "
		if v == nil {
			size += 4
		} else {
			if err := checkHstoreText("value", *v); err != nil {
				return nil, err
			}
			size += quotedLen(*v)
		}
	}
	slices.Sort(keys)
	b := make([]byte, 0, size)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',', ' ')
		}
		b = appendQuoted(b, k)
		b = append(b, '=', '>')
		if v := h[k]; v == nil {
			b = append(b, "NULL"...)
		} else {
			b = appendQuoted(b, *v)
		}
	}
	return string(b), nil
}

// checkHstoreText reports an error when s cannot be PostgreSQL text.
func checkHstoreText(what, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("hv: hstore: %s %q contains a NUL byte", what, s)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("hv: hstore: %s %q is not valid UTF-8", what, s)
	}
	return nil
}

// quotedLen returns the length of s double-quoted with `"` and `\` escaped.
func quotedLen(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			n++
		}
	}
	return n
}

// appendQuoted appends s double-quoted with `"` and `\` escaped.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', c)
			start = i + 1
		}
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// hstoreSpace marks the bytes PostgreSQL 15 hstore input treats as whitespace
// (scanner_isspace: space, \t, \n, \r, \f; \v is not whitespace there).
var hstoreSpace = [256]bool{' ': true, '\t': true, '\n': true, '\r': true, '\f': true}

// ParseHstore parses the text form of a PostgreSQL hstore and returns its
// pairs; an empty or all-whitespace s gives an empty, non-nil map.
//
// It accepts exactly what PostgreSQL 15's hstore_in accepts and reads the
// same pairs: `key => value` pairs separated by commas, an optional trailing
// comma, whitespace (space, \t, \n, \r, \f; not \v) around tokens,
// double-quoted or unquoted tokens with backslash escapes in both, NULL
// (any case) as an unquoted value for SQL NULL, and, for duplicate keys,
// the first pair. An unquoted key ends at whitespace or "="; an unquoted
// value ends at whitespace or ",".
//
// On failure it returns nil and an error wrapping ErrHstoreSyntax that names
// the byte position. Text that PostgreSQL cannot hold (a NUL byte or invalid
// UTF-8) is rejected the same way.
func ParseHstore(s string) (Hstore, error) {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return nil, hstoreErr(i, "NUL byte")
	}
	if !utf8.ValidString(s) {
		return nil, hstoreErr(invalidUTF8At(s), "invalid UTF-8")
	}
	// Every pair needs its own "=>" in s, so the number of ">" bounds the
	// pair count (one vectorised pass; counting "=>" costs ten times more).
	n := strings.Count(s, ">")
	if n == 0 {
		// No pair is possible: valid only when s is blank; the parser finds
		// the first error otherwise.
		p := hstoreParser{s: s}
		if _, _, _, ok, err := p.next(); err != nil || ok {
			if err == nil { // unreachable: a pair without "=>"
				err = hstoreErr(0, "unexpected pair")
			}
			return nil, err
		}
		return Hstore{}, nil
	}

	// Pairs are collected in order and inserted into the map last to first,
	// so that the first of duplicate keys wins with one map write per pair.
	var (
		kbuf [16]string
		nbuf [16]bool
	)
	keys, nulls := kbuf[:0], nbuf[:0]
	if n > len(kbuf) {
		keys, nulls = make([]string, 0, n), make([]bool, 0, n)
	}
	vals := make([]string, n) // one allocation backs every *string
	p := hstoreParser{s: s}
	for {
		k, v, null, ok, err := p.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		vals[len(keys)] = v
		keys = append(keys, k)
		nulls = append(nulls, null)
	}
	m := make(Hstore, len(keys))
	for i := len(keys) - 1; i >= 0; i-- {
		if nulls[i] {
			m[keys[i]] = nil
		} else {
			m[keys[i]] = &vals[i]
		}
	}
	return m, nil
}

// invalidUTF8At returns the byte offset of the first invalid UTF-8 sequence.
func invalidUTF8At(s string) int {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return len(s)
}

func hstoreErr(pos int, msg string) error {
	return fmt.Errorf("%w at position %d: %s", ErrHstoreSyntax, pos, msg)
}

// hstoreParser is a one-pass lexer over hstore text. Tokens without escapes
// are substrings of s; only tokens with backslash escapes are copied.
type hstoreParser struct {
	s   string
	pos int
	buf []byte // scratch for escaped tokens
}

// next reads one `key => value` pair and the delimiter after it. ok is false
// at the end of the input.
func (p *hstoreParser) next() (key, val string, null, ok bool, err error) {
	if key, val, null, ok = p.canonical(); ok {
		return key, val, null, true, nil
	}
	key, _, ok, err = p.word(false)
	if !ok || err != nil {
		return "", "", false, false, err
	}
	s, i := p.s, p.pos
	for i < len(s) && hstoreSpace[s[i]] {
		i++
	}
	if i == len(s) {
		return "", "", false, false, hstoreErr(i, `unexpected end of input, expected "=>"`)
	}
	if s[i] != '=' {
		return "", "", false, false, hstoreErr(i, `expected "=>"`)
	}
	i++
	if i == len(s) {
		return "", "", false, false, hstoreErr(i, `unexpected end of input, expected ">" after "="`)
	}
	if s[i] != '>' {
		return "", "", false, false, hstoreErr(i, `expected ">" after "="`)
	}
	p.pos = i + 1
	val, quoted, ok, err := p.word(true)
	if err != nil {
		return "", "", false, false, err
	}
	if !ok {
		return "", "", false, false, hstoreErr(len(s), "unexpected end of input, expected a value")
	}
	if !quoted && len(val) == 4 && val[0]|0x20 == 'n' && val[1]|0x20 == 'u' && val[2]|0x20 == 'l' && val[3]|0x20 == 'l' {
		val, null = "", true
	}
	i = p.pos
	for i < len(s) && hstoreSpace[s[i]] {
		i++
	}
	switch {
	case i == len(s):
		p.pos = i
	case s[i] == ',':
		p.pos = i + 1
	default:
		return "", "", false, false, hstoreErr(i, `expected "," or end of input after a value`)
	}
	return key, val, null, true, nil
}

// canonical reads one pair in PostgreSQL's output form, `"key"=>"value"` or
// `"key"=>NULL` followed by ", " or the end, without escapes. ok is false,
// with nothing consumed, for anything else: the general path then reads it.
func (p *hstoreParser) canonical() (key, val string, null, ok bool) {
	s, i := p.s, p.pos
	if i >= len(s) || s[i] != '"' {
		return "", "", false, false
	}
	j := i + 1
	for j < len(s) && !hstoreQuoteStop[s[j]] {
		j++
	}
	if j+3 >= len(s) || s[j] != '"' || s[j+1] != '=' || s[j+2] != '>' {
		return "", "", false, false
	}
	key = s[i+1 : j]
	i = j + 3
	switch s[i] {
	case '"':
		j = i + 1
		for j < len(s) && !hstoreQuoteStop[s[j]] {
			j++
		}
		if j >= len(s) || s[j] != '"' {
			return "", "", false, false
		}
		val = s[i+1 : j]
		j++
	case 'N':
		if len(s)-i < 4 || s[i:i+4] != "NULL" {
			return "", "", false, false
		}
		null, j = true, i+4
	default:
		return "", "", false, false
	}
	switch {
	case j == len(s):
	case j+1 < len(s) && s[j] == ',' && s[j+1] == ' ':
		j += 2
	default:
		return "", "", false, false
	}
	p.pos = j
	return key, val, null, true
}

// hstoreQuoteStop marks the bytes that end the unescaped run of a quoted token.
var hstoreQuoteStop = [256]bool{'"': true, '\\': true}

// word reads a key (value false) or a value (value true) after optional
// whitespace. ok is false when only whitespace remains. It mirrors
// PostgreSQL's get_val: an unquoted key ends at whitespace or "=", an
// unquoted value at whitespace or ","; a key may not start with "=".
func (p *hstoreParser) word(value bool) (w string, quoted, ok bool, err error) {
	s, i := p.s, p.pos
	for i < len(s) && hstoreSpace[s[i]] {
		i++
	}
	if i == len(s) {
		p.pos = i
		return "", false, false, nil
	}
	switch c := s[i]; {
	case c == '"':
		start := i + 1
		j := start
		for j < len(s) && s[j] != '"' && s[j] != '\\' {
			j++
		}
		if j < len(s) && s[j] == '"' {
			p.pos = j + 1
			return s[start:j], true, true, nil
		}
		buf := append(p.buf[:0], s[start:j]...)
		for j < len(s) {
			switch c := s[j]; c {
			case '\\':
				j++
				if j == len(s) {
					return "", false, false, hstoreErr(j, `unexpected end of input after "\" in a quoted string`)
				}
				buf = append(buf, s[j])
			case '"':
				p.buf, p.pos = buf, j+1
				return string(buf), true, true, nil
			default:
				buf = append(buf, c)
			}
			j++
		}
		return "", false, false, hstoreErr(j, "unexpected end of input in a quoted string")
	case c == '=' && !value:
		return "", false, false, hstoreErr(i, `unexpected "=", expected a key`)
	case c == '\\':
		return p.unquotedEscaped(i, i, value)
	default:
		// The first byte is part of the token even when it is "," in a value.
		j := i + 1
		for j < len(s) {
			c := s[j]
			if hstoreSpace[c] || (c == '=' && !value) || (c == ',' && value) {
				break
			}
			if c == '\\' {
				return p.unquotedEscaped(i, j, value)
			}
			j++
		}
		p.pos = j
		return s[i:j], false, true, nil
	}
}

// unquotedEscaped finishes an unquoted token that started at start and has a
// backslash at j.
func (p *hstoreParser) unquotedEscaped(start, j int, value bool) (string, bool, bool, error) {
	s := p.s
	buf := append(p.buf[:0], s[start:j]...)
	for j < len(s) {
		c := s[j]
		if c == '\\' {
			j++
			if j == len(s) {
				return "", false, false, hstoreErr(j, `unexpected end of input after "\"`)
			}
			buf = append(buf, s[j])
			j++
			continue
		}
		if hstoreSpace[c] || (c == '=' && !value) || (c == ',' && value) {
			break
		}
		buf = append(buf, c)
		j++
	}
	p.buf, p.pos = buf, j
	return string(buf), false, true, nil
}
