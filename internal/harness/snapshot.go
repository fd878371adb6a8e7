package harness

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Snapshot describes every file and folder under dir (its mode, size,
// modification time and, for files, a digest of its contents), by path
// relative to dir, so that two snapshots tell whether anything under dir
// changed. A missing dir is an empty snapshot.
func Snapshot(dir string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir && os.IsNotExist(err) {
				return filepath.SkipAll
			}
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v %d %s", info.Mode(), info.Size(), info.ModTime().UTC().Format("2006-01-02T15:04:05.000000000"))
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[rel] = desc
		return nil
	})
	return out, err
}

// Changes lists what differs between two snapshots of the same folder:
// paths added, removed or changed, sorted.
func Changes(before, after map[string]string) []string {
	var out []string
	for path, was := range before {
		switch now, ok := after[path]; {
		case !ok:
			out = append(out, "removed "+path)
		case now != was:
			out = append(out, "changed "+path)
		}
	}
	for path := range after {
		if _, ok := before[path]; !ok {
			out = append(out, "added "+path)
		}
	}
	slices.Sort(out)
	return out
}
