// Package ci tells test helpers whether they run where every test must run.
package ci

import (
	"os"
	"strconv"
)

// Required reports whether a test must fail, not skip, when what it needs
// is missing: on CI (the environment variable CI parses as true, as
// strconv.ParseBool reads it: "true", "1", "TRUE", ...).
func Required() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}
