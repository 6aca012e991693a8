package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervault/hv"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Doc is a GORM model with an hstore column, written as GORM users write
// it: type:hstore, unqualified.
type Doc struct {
	ID    int64     `gorm:"primaryKey;autoIncrement:false"`
	Attrs hv.Hstore `gorm:"type:hstore;not null"`
}

// sqlLog records the statements GORM sends.
type sqlLog struct {
	logger.Interface
	mu   sync.Mutex
	stmt []string
}

func (l *sqlLog) Trace(_ context.Context, _ time.Time, fc func() (string, int64), _ error) {
	s, _ := fc()
	l.mu.Lock()
	l.stmt = append(l.stmt, s)
	l.mu.Unlock()
}

func (l *sqlLog) LogMode(logger.LogLevel) logger.Interface { return l }

// hstore in a GORM model resolves unqualified on every shard (it lives in
// hv_ext, on each shard's search_path), and a second AutoMigrate leaves the
// column alone instead of re-issuing ALTER COLUMN ... TYPE public.hstore.
func TestGORMHstore(t *testing.T) {
	for _, global := range []string{"", "driver=postgres"} {
		t.Run("driver="+map[string]string{"": "pgx", "driver=postgres": "postgres"}[global], func(t *testing.T) {
			f := newFleet(t, "", global)
			for i := range 2 {
				f.Exec(t, i, "CREATE SCHEMA hv_ext; CREATE EXTENSION hstore SCHEMA hv_ext")
			}
			log := &sqlLog{Interface: logger.Discard}
			db, connector := f.open(t, &gorm.Config{Logger: log})
			ctx := context.Background()
			shards := allShards()
			if err := migrate(ctx, db, connector, shards, &Doc{}); err != nil {
				t.Fatal(err)
			}
			log.mu.Lock()
			log.stmt = nil
			log.mu.Unlock()
			if err := migrate(ctx, db, connector, shards, &Doc{}); err != nil {
				t.Fatal(err)
			}
			for _, s := range log.stmt {
				if strings.Contains(strings.ToUpper(s), "ALTER") {
					t.Errorf("the second AutoMigrate altered: %s", s)
				}
			}
			v := "blue"
			for _, shard := range []int{2, 14} {
				sdb := db.WithContext(hv.WithShard(ctx, shard))
				if err := sdb.Create(&Doc{ID: int64(shard), Attrs: hv.Hstore{"colour": &v}}).Error; err != nil {
					t.Fatal(err)
				}
				var got Doc
				if err := sdb.Where("attrs -> 'colour' = ?", "blue").First(&got).Error; err != nil || got.ID != int64(shard) || *got.Attrs["colour"] != "blue" {
					t.Fatalf("shard %d: %+v, %v", shard, got, err)
				}
				var n int64
				if err := sdb.Model(&Doc{}).Where("attrs @> ?::hstore", "colour=>blue").Count(&n).Error; err != nil || n != 1 {
					t.Fatalf("shard %d: @> count %d, %v", shard, n, err)
				}
			}
			// The column's type is hv_ext.hstore on every shard.
			var typ string
			if err := f.Direct(t, 1).QueryRow(ctx, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'shard0014.docs'::regclass AND attname = 'attrs'").Scan(&typ); err != nil || typ != "hv_ext.hstore" {
				t.Errorf("column type %q, %v", typ, err)
			}
		})
	}
}
