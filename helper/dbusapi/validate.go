package dbusapi

import (
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// The validators return errors matching ErrInvalidArgument.

func validatePath(p string) error {
	switch {
	case len(p) > MaxPathLen:
		return fmt.Errorf("path of %d bytes exceeds %d: %w", len(p), MaxPathLen, ErrInvalidArgument)
	case !filepath.IsAbs(p):
		return fmt.Errorf("path %.256q is not absolute: %w", p, ErrInvalidArgument)
	case strings.ContainsRune(p, 0) || !utf8.ValidString(p):
		return fmt.Errorf("path %.256q has invalid characters: %w", p, ErrInvalidArgument)
	case filepath.Clean(p) != p:
		return fmt.Errorf("path %.256q is not clean: %w", p, ErrInvalidArgument)
	}
	return nil
}

func validatePaths(ps []string) error {
	if len(ps) == 0 || len(ps) > MaxAdopt {
		return fmt.Errorf("%d paths, want 1 to %d: %w", len(ps), MaxAdopt, ErrInvalidArgument)
	}
	for _, p := range ps {
		if err := validatePath(p); err != nil {
			return err
		}
	}
	return nil
}

func validateID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("prompt id of %d bytes, want 1 to %d: %w", len(id), MaxIDLen, ErrInvalidArgument)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("prompt id %.64q has invalid characters: %w", id, ErrInvalidArgument)
		}
	}
	return nil
}

func validateMode(m string) (Mode, error) {
	switch Mode(m) {
	case Enforce, Learning:
		return Mode(m), nil
	}
	return "", fmt.Errorf("unknown mode %.64q: %w", m, ErrInvalidArgument)
}

func validateVerdict(v string) (Verdict, error) {
	switch Verdict(v) {
	case Allow, Deny:
		return Verdict(v), nil
	}
	return "", fmt.Errorf("unknown verdict %.64q: %w", v, ErrInvalidArgument)
}

func validateScope(s string) (Scope, error) {
	switch Scope(s) {
	case Once, UntilQuit, Always, AlwaysAllUsers:
		return Scope(s), nil
	}
	return "", fmt.Errorf("unknown scope %.64q: %w", s, ErrInvalidArgument)
}

func validateTOML(s string) error {
	switch {
	case len(s) > MaxImportSize:
		return fmt.Errorf("rule file of %d bytes exceeds %d: %w", len(s), MaxImportSize, ErrInvalidArgument)
	case !utf8.ValidString(s):
		return fmt.Errorf("rule file is not UTF-8: %w", ErrInvalidArgument)
	}
	return nil
}
