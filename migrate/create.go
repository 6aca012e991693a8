package migrate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// migrationName is what a migration's name may hold.
var migrationName = regexp.MustCompile(`^[a-zA-Z0-9_]+$`)

// versionPrefix is the version of a goose migration file name.
var versionPrefix = regexp.MustCompile(`^(\d+)_.*\.(sql|go)$`)

const sqlTemplate = `-- +goose Up
-- +goose StatementBegin
SELECT 'up SQL query';
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
SELECT 'down SQL query';
-- +goose StatementEnd
`

const goTemplate = `package migrations

import (
	"context"
	"database/sql"

	"github.com/pressly/goose/v3"
)

func init() {
	goose.AddMigrationContext(up%[1]s, down%[1]s)
}

// up%[1]s runs in a transaction on the shard's schema.
func up%[1]s(ctx context.Context, tx *sql.Tx) error {
	return nil
}

func down%[1]s(ctx context.Context, tx *sql.Tx) error {
	return nil
}
`

// Create writes a new, empty migration into dir (created when missing)
// and returns its path: kind "sql" (the default when empty) or "go";
// version the time in UTC (20060102150405) or, with sequential, one more
// than the highest version in dir (00001, 00002, ...). It returns an error
// for a name other than letters, digits and '_', an unknown kind, or a
// file that exists already.
func Create(dir, name, kind string, sequential bool) (string, error) {
	if !migrationName.MatchString(name) {
		return "", fmt.Errorf("hv: migrate create: name %q: use letters, digits and '_'", name)
	}
	if kind == "" {
		kind = "sql"
	}
	if kind != "sql" && kind != "go" {
		return "", fmt.Errorf("hv: migrate create: kind %q: use sql or go", kind)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("hv: migrate create: %w", err)
	}
	version := time.Now().UTC().Format("20060102150405")
	if sequential {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return "", fmt.Errorf("hv: migrate create: %w", err)
		}
		var top int64
		for _, e := range entries {
			if m := versionPrefix.FindStringSubmatch(e.Name()); m != nil {
				if v, err := strconv.ParseInt(m[1], 10, 64); err == nil && v > top && len(m[1]) < 14 {
					top = v
				}
			}
		}
		version = fmt.Sprintf("%05d", top+1)
	}
	path := filepath.Join(dir, version+"_"+strings.ToLower(name)+"."+kind)
	body := sqlTemplate
	if kind == "go" {
		camel := strings.ReplaceAll(strings.Title(strings.ReplaceAll(name, "_", " ")), " ", "") //nolint:staticcheck // ASCII names
		body = fmt.Sprintf(goTemplate, camel)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("hv: migrate create: %s exists already", path)
		}
		return "", fmt.Errorf("hv: migrate create: %w", err)
	}
	if _, err := f.WriteString(body); err != nil {
		f.Close()
		return "", fmt.Errorf("hv: migrate create: %w", err)
	}
	return path, f.Close()
}
