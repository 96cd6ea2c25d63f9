package rules

import (
	"errors"
	"strconv"
	"strings"
)

// MaxSize is the largest rule file Parse accepts, in bytes. A file of
// 500 apps with destination rules is about 150 KiB, so the limit only
// stops files that are broken or hostile before any decoding work.
const MaxSize = 4 << 20

// Sentinel errors carried by a *ParseError where callers may branch.
var (
	// ErrTooLarge means the input is larger than MaxSize.
	ErrTooLarge = errors.New("rule file too large")
	// ErrNewerSchema means the file's schema version is newer than
	// SchemaVersion: it was written by a newer Aegis.
	ErrNewerSchema = errors.New("rule file schema is newer than this Aegis")
)

// ParseError is an error in a rule file or rule set. Every error that
// Parse, ParseDropIn, Encode and Validate return is a *ParseError.
type ParseError struct {
	// File is the name given to Parse; empty for Encode and Validate.
	File string
	// Line is the 1-based line of the offending key or table, 0 when
	// unknown (for instance for sets that were never text).
	Line int
	// Column is the 1-based column, when the TOML decoder reports one.
	Column int
	// Field is the key path, such as "settings.mode" or
	// "app[2].dest[0].port" (indexes count from 0); empty when the error
	// concerns the whole file.
	Field string
	// Msg says what is wrong, in lower case.
	Msg string
	// Err is ErrTooLarge, ErrNewerSchema or nil.
	Err error
}

// Error formats the error as "file:line:column: field: msg", leaving out
// the parts that are unknown.
func (e *ParseError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
			if e.Column > 0 {
				b.WriteString(":" + strconv.Itoa(e.Column))
			}
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the sentinel the error carries, if any.
func (e *ParseError) Unwrap() error { return e.Err }
