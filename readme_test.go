package hv_test

import (
	"bytes"
	"context"
	"github.com/hypervault/hv/internal/ci"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeQuickStart returns the README's first Go code block: the quick
// start, which must be a complete program.
func readmeQuickStart(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```go\n")
	if !ok {
		t.Fatal("README.md has no ```go code block")
	}
	code, _, ok := strings.Cut(rest, "\n```")
	if !ok {
		t.Fatal("README.md: the first ```go code block does not end")
	}
	if !strings.HasPrefix(code, "package main\n") {
		t.Fatalf("README.md: the quick start must be a complete program starting with \"package main\":\n%s", code)
	}
	return code + "\n"
}

// TestReadmeQuickStart builds the README's quick start as it stands, in a
// module of its own that uses this checkout of hv, runs it against the
// example fleet (HV_DSN, set up by TestMain) and checks that it prints what
// its own comment says it prints.
func TestReadmeQuickStart(t *testing.T) {
	code := readmeQuickStart(t)
	if os.Getenv("HV_DSN") == "" {
		if ci.Required() {
			t.Fatal("HV_DSN is not set: the example fleet could not be set up (CI=true)")
		}
		t.Skip("HV_DSN is not set: no example fleet")
	}
	// The program announces its output in a comment: fmt.Println(...) // output
	m := regexp.MustCompile(`(?m)^\s*fmt\.Println\(.*\) // (.+)$`).FindStringSubmatch(code)
	if m == nil {
		t.Fatal("README.md: the quick start's fmt.Println line has no \"// expected output\" comment")
	}
	want := m[1] + "\n"

	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	goMod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(goMod)
	if goVersion == nil {
		t.Fatal("go.mod has no go directive")
	}
	goSum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	mod := "module readmequickstart\n\ngo " + string(goVersion[1]) + "\n\n" +
		"require github.com/hypervault/hv v0.0.0-00010101000000-000000000000\n\n" +
		"replace github.com/hypervault/hv => " + root + "\n"
	for name, data := range map[string][]byte{"go.mod": []byte(mod), "go.sum": goSum, "main.go": []byte(code)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "run", "-mod=mod", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod -buildvcs=false")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go run of the README quick start: %v\nstdout:\n%s\nstderr:\n%s\nprogram:\n%s", err, stdout.String(), stderr.String(), code)
	}
	if got := stdout.String(); got != want {
		t.Fatalf("README quick start printed %q, its comment says %q", got, want)
	}
}
