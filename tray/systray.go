package tray

import (
	"sync"

	"fyne.io/systray"

	"github.com/aegisfw/aegis/icons"
)

// markSize is the side of an app's mark in the menu, in pixels.
const markSize = 16

// sysMenu mirrors a menu built by BuildMenu onto fyne.io/systray's
// process-wide menu. Items are matched by key: an item whose key and kind
// are unchanged is updated in place; from the first difference among
// siblings on, the old items are removed and new ones appended, so an item
// never changes what it does. Clicks arrive on the clicks channel. It is
// safe for concurrent use.
type sysMenu struct {
	mu     sync.Mutex
	top    []*slot
	clicks chan<- Action
	done   <-chan struct{}
	marks  map[Mark][]byte
}

// slot is one systray item and what it shows.
type slot struct {
	key       string
	checkable bool
	item      *systray.MenuItem // nil for a separator
	children  []*slot

	mu       sync.Mutex
	action   Action
	disabled bool

	label   string
	checked bool
	mark    Mark
	fresh   bool
}

func newSysMenu(clicks chan<- Action, done <-chan struct{}) *sysMenu {
	return &sysMenu{clicks: clicks, done: done, marks: map[Mark][]byte{
		NoMark: nil,
		Green:  icons.MarkPNG(true, markSize),
		Red:    icons.MarkPNG(false, markSize),
	}}
}

// apply shows items. The top level must have the same keys every time.
func (m *sysMenu) apply(items []Item) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.top == nil {
		for _, it := range items {
			if it.Separator {
				systray.AddSeparator()
				m.top = append(m.top, &slot{key: it.Key})
				continue
			}
			var mi *systray.MenuItem
			if it.Checkable {
				mi = systray.AddMenuItemCheckbox(it.Label, "", it.Checked)
			} else {
				mi = systray.AddMenuItem(it.Label, "")
			}
			m.top = append(m.top, m.newSlot(it, mi))
		}
	}
	for i, it := range items {
		if i < len(m.top) && m.top[i].item != nil {
			m.update(m.top[i], it)
		}
	}
}

func (m *sysMenu) newSlot(it Item, mi *systray.MenuItem) *slot {
	s := &slot{key: it.Key, checkable: it.Checkable, item: mi, label: it.Label, checked: it.Checked, fresh: true}
	go m.forward(s)
	return s
}

// forward sends the slot's action on every click until the item is removed.
func (m *sysMenu) forward(s *slot) {
	for range s.item.ClickedCh {
		s.mu.Lock()
		a, disabled := s.action, s.disabled
		s.mu.Unlock()
		if disabled || a.Kind == NoAction {
			continue
		}
		select {
		case m.clicks <- a:
		case <-m.done:
			return
		}
	}
}

func (m *sysMenu) update(s *slot, it Item) {
	s.mu.Lock()
	s.action = it.Action
	changedDisabled := s.fresh || s.disabled != it.Disabled
	s.disabled = it.Disabled
	s.mu.Unlock()
	if s.label != it.Label {
		s.item.SetTitle(it.Label)
		s.label = it.Label
	}
	if changedDisabled {
		if it.Disabled {
			s.item.Disable()
		} else {
			s.item.Enable()
		}
	}
	if s.checkable && (s.fresh || s.checked != it.Checked) {
		if it.Checked {
			s.item.Check()
		} else {
			s.item.Uncheck()
		}
		s.checked = it.Checked
	}
	if s.mark != it.Mark || (s.fresh && it.Mark != NoMark) {
		s.item.SetIcon(m.marks[it.Mark])
		s.mark = it.Mark
	}
	s.fresh = false
	m.syncChildren(s, it.Children)
}

func (m *sysMenu) syncChildren(parent *slot, all []Item) {
	// Submenus have no separators: they could not be removed again.
	items := make([]Item, 0, len(all))
	for _, it := range all {
		if !it.Separator {
			items = append(items, it)
		}
	}
	keep := 0
	for keep < len(parent.children) && keep < len(items) {
		s, it := parent.children[keep], items[keep]
		if s.key != it.Key || s.checkable != it.Checkable {
			break
		}
		keep++
	}
	for _, s := range parent.children[keep:] {
		// Remove takes the item's children along and closes ClickedCh,
		// which ends the slot's forward goroutine.
		s.item.Remove()
	}
	parent.children = parent.children[:keep]
	for _, it := range items[keep:] {
		var mi *systray.MenuItem
		if it.Checkable {
			mi = parent.item.AddSubMenuItemCheckbox(it.Label, "", it.Checked)
		} else {
			mi = parent.item.AddSubMenuItem(it.Label, "")
		}
		parent.children = append(parent.children, m.newSlot(it, mi))
	}
	for i, it := range items {
		if i < len(parent.children) {
			m.update(parent.children[i], it)
		}
	}
}
