package pgcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// NoCacheEnv is the environment variable that, when set to a non-empty
// value, makes Start run initdb for every cluster instead of copying a
// cached, freshly initialised data directory.
const NoCacheEnv = "HV_PGCLUSTER_NO_CACHE"

// templateFormat changes whenever the cached template layout or the initdb
// arguments change, so that stale templates are not reused.
const templateFormat = "v1"

// postgresUser looks up the uid and gid of the postgres system user, which
// owns the cluster when the process runs as root.
func postgresUser() (uid, gid int, err error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return 0, 0, fmt.Errorf("pgcluster: running as root needs a \"postgres\" system user to run the server as: %w", err)
	}
	if uid, err = strconv.Atoi(u.Uid); err == nil {
		gid, err = strconv.Atoi(u.Gid)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("pgcluster: postgres user: %w", err)
	}
	return uid, gid, nil
}

// initDataDir fills c.dataDir with a new cluster: a copy of the cached
// template if there is one, otherwise the output of initdb (which then
// becomes the template for later clusters).
func (c *Cluster) initDataDir(ctx context.Context) error {
	tmpl := templateDir(c.binDir)
	if tmpl != "" {
		if _, err := os.Stat(filepath.Join(tmpl, "complete")); err == nil {
			if err := c.copyTree(filepath.Join(tmpl, "data"), c.dataDir, true); err == nil {
				return nil
			}
			_ = os.RemoveAll(c.dataDir) // fall back to initdb
		}
	}
	out, err := c.run(ctx, filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir,
		"--auth=trust", "-U", "postgres",
		"-E", "UTF8", "--locale=C",
		"--no-sync")
	if err != nil {
		return fmt.Errorf("pgcluster: initdb: %v: %s", err, strings.TrimSpace(string(out)))
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = fmt.Fprintf(f, "\n# Added by hv/internal/pgcluster.\ninclude_if_exists = '%s'\n", confName)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("pgcluster: editing postgresql.conf: %w", err)
	}
	if tmpl != "" {
		c.saveTemplate(tmpl)
	}
	return nil
}

// templateDir returns where the template for the binaries in binDir is
// cached, or "" if caching is disabled or there is no cache directory.
func templateDir(binDir string) string {
	if os.Getenv(NoCacheEnv) != "" {
		return ""
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	fi, err := os.Stat(filepath.Join(binDir, "initdb"))
	if err != nil {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%d\x00%d", templateFormat, binDir, fi.Size(), fi.ModTime().UnixNano(), os.Geteuid())
	return filepath.Join(cache, "hv-pgcluster", hex.EncodeToString(h.Sum(nil))[:16])
}

// saveTemplate copies the freshly initialised c.dataDir to tmpl, best
// effort: concurrent processes may race, the first complete copy wins.
func (c *Cluster) saveTemplate(tmpl string) {
	if _, err := os.Stat(filepath.Join(tmpl, "complete")); err == nil {
		return
	}
	parent := filepath.Dir(tmpl)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return
	}
	tmp, err := os.MkdirTemp(parent, "tmp-")
	if err != nil {
		return
	}
	defer os.RemoveAll(tmp) // no-op once renamed
	if err := c.copyTree(c.dataDir, filepath.Join(tmp, "data"), false); err != nil {
		return
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), nil, 0o600); err != nil {
		return
	}
	if err := os.Rename(tmp, tmpl); err != nil {
		// Another process may have won; if a broken directory is in the
		// way, replace it.
		if _, serr := os.Stat(filepath.Join(tmpl, "complete")); errors.Is(serr, fs.ErrNotExist) {
			if os.RemoveAll(tmpl) == nil {
				_ = os.Rename(tmp, tmpl)
			}
		}
	}
}

// copyTree copies the directory tree src to dst (which must not exist),
// keeping permission bits. With chown and when running as root, the copy
// is owned by the postgres user.
func (c *Cluster) copyTree(src, dst string, chown bool) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
			// Mkdir is subject to the umask; PostgreSQL checks the mode.
			if err := os.Chmod(target, info.Mode().Perm()); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			if chown && c.asRoot {
				return os.Lchown(target, c.uid, c.gid)
			}
			return nil
		case d.Type().IsRegular():
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected file type at %s", path)
		}
		if chown && c.asRoot {
			return os.Chown(target, c.uid, c.gid)
		}
		return nil
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, perm)
}
