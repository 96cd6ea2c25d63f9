package apps

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Default locations of dpkg's database.
const (
	DefaultDpkgInfoDir = "/var/lib/dpkg/info"
	DefaultDpkgStatus  = "/var/lib/dpkg/status"
)

// OriginVerdict says how a file's content relates to what the package
// manager recorded for it.
type OriginVerdict int

// Origin verdicts.
const (
	// NotPackaged: no installed package lists the file.
	NotPackaged OriginVerdict = iota
	// PackageMatch: the owning package's recorded MD5 equals the file's.
	PackageMatch
	// PackageMismatch: a package owns the file but recorded another MD5,
	// so the file was modified outside the package manager.
	PackageMismatch
	// PackageNoChecksum: a package owns the file but recorded no checksum
	// for it (no md5sums file or no line for the path).
	PackageNoChecksum
)

func (v OriginVerdict) String() string {
	switch v {
	case NotPackaged:
		return "not-packaged"
	case PackageMatch:
		return "package-match"
	case PackageMismatch:
		return "package-mismatch"
	case PackageNoChecksum:
		return "package-no-checksum"
	}
	return fmt.Sprintf("OriginVerdict(%d)", int(v))
}

// Origin is what dpkg knows about a file.
type Origin struct {
	// Package is the owning package as dpkg -S names it, with an ":arch"
	// suffix for multi-arch packages ("libc6:amd64"); empty when
	// NotPackaged.
	Package string
	// Version is the package's installed version from dpkg's status file;
	// empty when unknown.
	Version string
	Verdict OriginVerdict
}

// String renders o for people: "updated by package coreutils (9.1-1)".
func (o Origin) String() string {
	switch o.Verdict {
	case NotPackaged:
		return "not from any package"
	case PackageMatch:
		return fmt.Sprintf("updated by package %s (%s)", o.Package, o.Version)
	case PackageMismatch:
		return fmt.Sprintf("differs from the checksum of package %s (%s)", o.Package, o.Version)
	case PackageNoChecksum:
		return fmt.Sprintf("owned by package %s (%s), which recorded no checksum", o.Package, o.Version)
	}
	return o.Verdict.String()
}

// dpkgDB reads dpkg's database files directly: the owning package from
// <info>/<pkg>.list (what dpkg -S searches), the checksum from
// <info>/<pkg>.md5sums and the version from the status file. Diversions
// (dpkg-divert) are not followed: a diverted file reports the package of
// the path it now occupies, if any.
type dpkgDB struct {
	infoDir string
	status  string
}

// pkgFile is dpkg's record of one file.
type pkgFile struct {
	pkg     string // "coreutils" or "libc6:amd64"
	listed  string // the path as the .list file spells it
	md5     [16]byte
	hasMD5  bool
	version string
}

// origin compares the file's MD5 with the record.
func (p *pkgFile) origin(sum [16]byte) Origin {
	if p == nil {
		return Origin{Verdict: NotPackaged}
	}
	o := Origin{Package: p.pkg, Version: p.version, Verdict: PackageMismatch}
	switch {
	case !p.hasMD5:
		o.Verdict = PackageNoChecksum
	case p.md5 == sum:
		o.Verdict = PackageMatch
	}
	return o
}

// aliases returns the names under which dpkg may list path: the path,
// its resolved form, and the other side of the /usr merge (/bin/ls for
// /usr/bin/ls and back) when both names reach the same file.
func aliases(path string) []string {
	names := []string{path}
	if r, err := filepath.EvalSymlinks(path); err == nil && r != path {
		names = append(names, r)
	}
	st, err := os.Stat(path)
	if err != nil {
		return names
	}
	for _, n := range slices.Clone(names) {
		var alt string
		for _, d := range []string{"/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"} {
			if strings.HasPrefix(n, "/usr"+d) {
				alt = strings.TrimPrefix(n, "/usr")
			} else if strings.HasPrefix(n, d) {
				alt = "/usr" + n
			}
			if alt != "" {
				break
			}
		}
		if alt == "" || slices.Contains(names, alt) {
			continue
		}
		if ast, err := os.Stat(alt); err == nil && os.SameFile(st, ast) {
			names = append(names, alt)
		}
	}
	return names
}

// lookup returns dpkg's record for each of paths that an installed
// package lists. It reads every .list file once, then only the md5sums
// files of the owning packages and the status file, keeping nothing but
// the records of paths, so memory is bounded by len(paths). A missing
// info directory means nothing is packaged.
func (d dpkgDB) lookup(paths []string) (map[string]*pkgFile, error) {
	found := make(map[string]*pkgFile)
	if len(paths) == 0 {
		return found, nil
	}
	want := make(map[string][]string) // listed name -> requested paths
	for _, p := range paths {
		for _, a := range aliases(p) {
			want[a] = append(want[a], p)
		}
	}
	entries, err := os.ReadDir(d.infoDir)
	if errors.Is(err, fs.ErrNotExist) {
		return found, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read dpkg info: %w", err)
	}
	pkgs := make(map[string][]*pkgFile)
	for _, e := range entries {
		pkg, ok := strings.CutSuffix(e.Name(), ".list")
		if !ok || e.IsDir() {
			continue
		}
		err := scanLines(filepath.Join(d.infoDir, e.Name()), func(line string) {
			for _, p := range want[line] {
				if _, dup := found[p]; dup {
					continue
				}
				r := &pkgFile{pkg: pkg, listed: line}
				found[p] = r
				pkgs[pkg] = append(pkgs[pkg], r)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("read dpkg file list: %w", err)
		}
	}
	for pkg, recs := range pkgs {
		if err := d.readMD5Sums(pkg, recs); err != nil {
			return nil, err
		}
	}
	if len(pkgs) > 0 {
		if err := d.readVersions(pkgs); err != nil {
			return nil, err
		}
	}
	return found, nil
}

// readMD5Sums fills in the recorded MD5 of recs from <pkg>.md5sums, whose
// lines are "<32 hex>  <path without leading slash>". Malformed lines are
// skipped; a missing file leaves the records without a checksum.
func (d dpkgDB) readMD5Sums(pkg string, recs []*pkgFile) error {
	byRel := make(map[string][]*pkgFile, len(recs))
	for _, r := range recs {
		rel := strings.TrimPrefix(r.listed, "/")
		byRel[rel] = append(byRel[rel], r)
	}
	err := scanLines(filepath.Join(d.infoDir, pkg+".md5sums"), func(line string) {
		sum, rel, ok := strings.Cut(line, " ")
		if !ok || len(sum) != 32 {
			return
		}
		rel = strings.TrimLeft(rel, " ")
		rel = strings.TrimPrefix(rel, "*") // md5sum's binary-mode marker
		rs := byRel[rel]
		if len(rs) == 0 {
			return
		}
		var md [16]byte
		if n, err := hex.Decode(md[:], []byte(sum)); err != nil || n != 16 {
			return
		}
		for _, r := range rs {
			r.md5, r.hasMD5 = md, true
		}
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read dpkg checksums: %w", err)
	}
	return nil
}

// readVersions sets the version of each package from dpkg's status file.
// Stanzas of packages that are not installed ("not-installed",
// "config-files") are ignored. A missing status file leaves versions
// empty.
func (d dpkgDB) readVersions(pkgs map[string][]*pkgFile) error {
	var name, arch, version, status string
	flush := func() {
		defer func() { name, arch, version, status = "", "", "", "" }()
		if name == "" || version == "" {
			return
		}
		if f := strings.Fields(status); len(f) == 3 && (f[2] == "not-installed" || f[2] == "config-files") {
			return
		}
		for _, key := range []string{name, name + ":" + arch} {
			for _, r := range pkgs[key] {
				if r.version == "" {
					r.version = version
				}
			}
		}
	}
	err := scanLines(d.status, func(line string) {
		if line == "" {
			flush()
			return
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
			return
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			name = v
		case "Architecture":
			arch = v
		case "Version":
			version = v
		case "Status":
			status = v
		}
	})
	flush()
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read dpkg status: %w", err)
	}
	return nil
}

// scanLines calls fn for each line of the file at path.
func scanLines(path string, fn func(string)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		fn(s.Text())
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
