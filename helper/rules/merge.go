package rules

import "slices"

// Override records that a later source replaced an app entry of an
// earlier one during Merge.
type Override struct {
	Path string
	UID  uint32
	// Source is the file whose entry is in force; Replaced is the file
	// whose entry it replaced.
	Source, Replaced string
}

// Merge returns the effective rule set: a copy of main with the apps of
// each drop-in applied in the order given. Settings come from main only
// (drop-ins hold none; see ParseDropIn). An app whose path and user are
// already present replaces the earlier entry in place, and the
// replacement is reported as an Override; new apps are appended. The
// inputs are not modified. A nil main counts as Default().
func Merge(main *Set, dropins ...*Set) (*Set, []Override) {
	if main == nil {
		main = Default()
	}
	out := main.Clone()
	type id struct {
		path string
		uid  uint32
	}
	index := make(map[id]int, len(out.Apps))
	for i, a := range out.Apps {
		index[id{a.Path, a.UID}] = i
	}
	var overrides []Override
	for _, d := range dropins {
		if d == nil {
			continue
		}
		for _, a := range d.Apps {
			a = a.clone()
			k := id{a.Path, a.UID}
			if i, ok := index[k]; ok {
				overrides = append(overrides, Override{Path: a.Path, UID: a.UID, Source: a.Source, Replaced: out.Apps[i].Source})
				out.Apps[i] = a
				continue
			}
			index[k] = len(out.Apps)
			out.Apps = append(out.Apps, a)
		}
	}
	return out, overrides
}

// Clone returns a deep copy of s.
func (s *Set) Clone() *Set {
	c := *s
	c.Apps = make([]App, len(s.Apps))
	for i, a := range s.Apps {
		c.Apps[i] = a.clone()
	}
	if len(s.Apps) == 0 {
		c.Apps = nil
	}
	return &c
}

func (a App) clone() App {
	a.Dests = slices.Clone(a.Dests)
	return a
}
