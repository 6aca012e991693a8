package pgcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ownerFile, in a cluster directory, names the process that owns the
// cluster: its PID and its start time (from /proc), so that a recycled PID
// is not mistaken for the owner.
const ownerFile = "owner"

var reapOnce sync.Once

// processStart returns the start time of process pid, in clock ticks since
// boot, as recorded in /proc/<pid>/stat, or "" if it cannot be read.
func processStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may contain spaces; fields after it are
	// plain. starttime is field 22.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return ""
	}
	return fields[19]
}

// writeOwner records the current process as the owner of dir.
func writeOwner(dir string) error {
	pid := os.Getpid()
	content := fmt.Sprintf("%d %s\n", pid, processStart(pid))
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(content), 0o644); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// abandoned reports whether the cluster directory dir belongs to a process
// that no longer runs. Directories without a readable owner file (being
// created right now, or not ours) are never considered abandoned; neither
// is anything when /proc is unavailable.
func abandoned(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return false
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil || pid <= 0 {
		return false
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return false
	}
	return processStart(pid) != fields[1]
}

// reapAbandoned stops and removes the abandoned clusters under root (""
// meaning os.TempDir()). It is best effort and reports nothing.
func reapAbandoned(root string) {
	if root == "" {
		root = os.TempDir()
	}
	dirs, _ := filepath.Glob(filepath.Join(root, "hv-pgcluster-*"))
	if len(dirs) == 0 {
		return
	}
	bin, err := BinDir()
	if err != nil {
		return
	}
	asRoot := os.Geteuid() == 0
	for _, dir := range dirs {
		if !abandoned(dir) {
			continue
		}
		c := &Cluster{binDir: bin, dir: dir, dataDir: filepath.Join(dir, "data"),
			logFile: filepath.Join(dir, "postgres.log"), asRoot: asRoot}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = ctx
		_ = c.Destroy()
		cancel()
	}
}
