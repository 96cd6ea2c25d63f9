package dbusapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/aegisfw/aegis/helper/authz"
	"github.com/godbus/dbus/v5"
)

// maxAgentsPerSender bounds the registrations of one bus connection.
const maxAgentsPerSender = 8

// agentKey identifies a registered agent.
type agentKey struct {
	sender string
	path   dbus.ObjectPath
}

// agent is a registered prompt agent. uid and exe come from the bus and
// /proc, never from the caller's arguments.
type agent struct {
	uid uint32
	pid uint32
	exe string
}

// hashFile returns the SHA-256 of the file at p as lower-case hex.
func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// callerExe returns the executable of the process owning sender and
// whether it is a trusted agent. It hashes the running executable through
// /proc/<pid>/exe, so a replaced or deleted file on disk does not matter.
func (s *Server) callerExe(ctx context.Context, sender string) (pid uint32, exe string, trusted bool, err error) {
	pid, err = s.authz.ProcessID(ctx, sender)
	if err != nil {
		return 0, "", false, err
	}
	link := filepath.Join(s.cfg.ProcRoot, strconv.FormatUint(uint64(pid), 10), "exe")
	exe, err = os.Readlink(link)
	if err != nil {
		return pid, "", false, fmt.Errorf("executable of %s: %w", sender, err)
	}
	sum, err := hashFile(link)
	if err != nil {
		return pid, exe, false, fmt.Errorf("executable of %s: %w", sender, err)
	}
	_, trusted = s.trusted[sum]
	return pid, exe, trusted, nil
}

// requireTrustedAgent refuses callers other than root whose executable is
// not a trusted agent, with an error matching ErrNotAuthorized.
func (s *Server) requireTrustedAgent(c call, uid uint32) (pid uint32, exe string, err error) {
	pid, exe, trusted, err := s.callerExe(c.ctx, c.sender)
	if err != nil {
		return 0, "", err
	}
	if uid != 0 && !trusted {
		s.log.Warn("untrusted agent refused", "sender", c.sender, "pid", pid, "exe", exe, "uid", uid)
		return 0, "", fmt.Errorf("%s is not a trusted agent: %w", exe, ErrNotAuthorized)
	}
	return pid, exe, nil
}

func (s *Server) registerAgent(c call, path dbus.ObjectPath) error {
	if !path.IsValid() {
		return fmt.Errorf("object path %.256q: %w", path, ErrInvalidArgument)
	}
	uid, err := s.authz.UnixUser(c.ctx, c.sender)
	if err != nil {
		return err
	}
	pid, exe, err := s.requireTrustedAgent(c, uid)
	if err != nil {
		return err
	}
	key := agentKey{c.sender, path}
	s.mu.Lock()
	n := 0
	for k := range s.agents {
		if k.sender == c.sender {
			n++
		}
	}
	if _, ok := s.agents[key]; !ok && n >= maxAgentsPerSender {
		s.mu.Unlock()
		return fmt.Errorf("more than %d agents for one connection: %w", maxAgentsPerSender, ErrInvalidArgument)
	}
	s.agents[key] = agent{uid: uid, pid: pid, exe: exe}
	s.mu.Unlock()
	// The caller may have left the bus before the agent was recorded, and
	// its NameOwnerChanged may already have been handled: check again now
	// that the entry exists. A later departure is caught by the watch.
	var has bool
	if err := s.conn.BusObject().CallWithContext(c.ctx, "org.freedesktop.DBus.NameHasOwner", 0, c.sender).Store(&has); err != nil || !has {
		s.dropAgents(c.sender)
		if err == nil {
			err = fmt.Errorf("%s left the bus", c.sender)
		}
		return fmt.Errorf("register agent: %w", err)
	}
	s.log.Info("agent registered", "sender", c.sender, "path", path, "uid", uid, "pid", pid, "exe", exe)
	return nil
}

func (s *Server) unregisterAgent(c call, path dbus.ObjectPath) error {
	if !path.IsValid() {
		return fmt.Errorf("object path %.256q: %w", path, ErrInvalidArgument)
	}
	key := agentKey{c.sender, path}
	s.mu.Lock()
	_, ok := s.agents[key]
	delete(s.agents, key)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("agent %s at %s: %w", c.sender, path, ErrNotFound)
	}
	s.log.Info("agent unregistered", "sender", c.sender, "path", path)
	return nil
}

// dropAgents forgets every agent of sender.
func (s *Server) dropAgents(sender string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.agents {
		if k.sender == sender {
			delete(s.agents, k)
			s.log.Info("agent left the bus", "sender", sender, "path", k.path)
		}
	}
}

// watchAgents unregisters the agents of connections that leave the bus.
func (s *Server) watchAgents(ctx context.Context) error {
	err := s.conn.AddMatchSignalContext(ctx,
		dbus.WithMatchSender("org.freedesktop.DBus"),
		dbus.WithMatchInterface("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged"))
	if err != nil {
		return fmt.Errorf("watch NameOwnerChanged: %w", err)
	}
	s.signals = make(chan *dbus.Signal, 64)
	s.conn.Signal(s.signals)
	s.watchWG.Add(1)
	go func() {
		defer s.watchWG.Done()
		for {
			select {
			case <-s.base.Done():
				return
			case sig := <-s.signals:
				if sig == nil || sig.Name != "org.freedesktop.DBus.NameOwnerChanged" || len(sig.Body) != 3 {
					continue
				}
				name, _ := sig.Body[0].(string)
				newOwner, _ := sig.Body[2].(string)
				if newOwner == "" && len(name) > 0 && name[0] == ':' {
					s.dropAgents(name)
				}
			}
		}
	}()
	return nil
}

// Agents returns the number of registered agents.
func (s *Server) Agents() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.agents)
}

// agentsFor returns the agents that may see a prompt about a process of
// uid: that user's agents, and for root-owned processes the agents of root
// and of users polkit authorizes for modify-rules without interaction.
func (s *Server) agentsFor(ctx context.Context, uid uint32) []agentKey {
	s.mu.Lock()
	var same, others []agentKey
	for k, a := range s.agents {
		if a.uid == uid {
			same = append(same, k)
		} else if uid == 0 {
			others = append(others, k)
		}
	}
	s.mu.Unlock()
	for _, k := range others {
		if err := s.authz.Check(ctx, k.sender, authz.ActionModifyRules, false); err == nil {
			same = append(same, k)
		}
	}
	return same
}

// PromptAgents sends p to the agents of the user owning the prompted
// process (see agentsFor) and emits PromptRequested. It returns how many
// agents accepted the prompt; with none, the engine applies its no-agent
// policy.
func (s *Server) PromptAgents(ctx context.Context, p Prompt) (int, error) {
	if err := validateID(p.ID); err != nil {
		return 0, fmt.Errorf("prompt agents: %w", err)
	}
	var got []agentKey
	for _, k := range s.agentsFor(ctx, p.UID) {
		actx, cancel := context.WithTimeout(ctx, s.cfg.AgentTimeout)
		err := s.conn.Object(k.sender, k.path).CallWithContext(actx, AgentInterface+".Prompt", 0, p).Err
		cancel()
		if err != nil {
			s.log.Warn("agent refused prompt", "sender", k.sender, "path", k.path, "prompt", p.ID, "err", err)
			continue
		}
		got = append(got, k)
	}
	s.mu.Lock()
	s.delivered[p.ID] = got
	s.mu.Unlock()
	err := s.emit(PromptsInterface, "PromptRequested", p.ID, p.UID)
	return len(got), err
}

// ResolvePrompt tells the agents that were sent prompt id to stop showing
// it, and emits PromptResolved.
func (s *Server) ResolvePrompt(ctx context.Context, id string, v Verdict) error {
	s.mu.Lock()
	keys := s.delivered[id]
	delete(s.delivered, id)
	s.mu.Unlock()
	var errs []error
	for _, k := range keys {
		actx, cancel := context.WithTimeout(ctx, s.cfg.AgentTimeout)
		err := s.conn.Object(k.sender, k.path).CallWithContext(actx, AgentInterface+".Cancel", 0, id).Err
		cancel()
		if err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("cancel prompt %s at %s: %w", id, k.sender, err))
		}
	}
	errs = append(errs, s.emit(PromptsInterface, "PromptResolved", id, string(v)))
	return errors.Join(errs...)
}

// isGone reports whether err says the agent's connection no longer exists.
func isGone(err error) bool {
	var de dbus.Error
	return errors.As(err, &de) && (de.Name == "org.freedesktop.DBus.Error.ServiceUnknown" ||
		de.Name == "org.freedesktop.DBus.Error.NameHasNoOwner")
}
