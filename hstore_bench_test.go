package hv

import (
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// benchHstoreText is 10 pairs in PostgreSQL's canonical output form (keys in
// hstore order: by length, then bytes), as pgx hands it to Scan.
const benchHstoreText = `"id"=>"8812", "ip"=>"192.168.10.1", "lang"=>"en-GB", "name"=>"Ada Lovelace", "plan"=>"pro", ` +
	`"email"=>"ada@example.com", "phone"=>NULL, "theme"=>"dark", "country"=>"United Kingdom", "timezone"=>"Europe/London"`

// benchHstoreEscaped is the same size with escapes in every other token.
const benchHstoreEscaped = `"id"=>"88\"12", "ip"=>"192.168.10.1", "lang"=>"en\\GB", "name"=>"Ada \"Lovelace\"", "plan"=>"pro", ` +
	`"em\"ail"=>"ada@example.com", "phone"=>NULL, "the\\me"=>"dark", "country"=>"United Kingdom", "time\"zone"=>"Europe/London"`

func BenchmarkHstoreScan(b *testing.B) {
	b.Run("hv/string", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var h Hstore
			if err := h.Scan(benchHstoreText); err != nil || len(h) != 10 {
				b.Fatal(err, len(h))
			}
		}
	})
	b.Run("hv/bytes", func(b *testing.B) {
		src := []byte(benchHstoreText)
		b.ReportAllocs()
		for b.Loop() {
			var h Hstore
			if err := h.Scan(src); err != nil || len(h) != 10 {
				b.Fatal(err, len(h))
			}
		}
	})
	b.Run("hv/escaped", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var h Hstore
			if err := h.Scan(benchHstoreEscaped); err != nil || len(h) != 10 {
				b.Fatal(err, len(h))
			}
		}
	})
	b.Run("pgtype/string", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var h pgtype.Hstore
			if err := h.Scan(benchHstoreText); err != nil || len(h) != 10 {
				b.Fatal(err, len(h))
			}
		}
	})
	b.Run("pgtype/escaped", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var h pgtype.Hstore
			if err := h.Scan(benchHstoreEscaped); err != nil || len(h) != 10 {
				b.Fatal(err, len(h))
			}
		}
	})
}

func BenchmarkHstoreValue(b *testing.B) {
	h, err := ParseHstore(benchHstoreText)
	if err != nil {
		b.Fatal(err)
	}
	p := pgtype.Hstore(h)
	b.Run("hv", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := h.Value(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pgtype", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.Value(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
