package ctl

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/aegisfw/aegis/helper/rules"
)

func checkRules(c *command) error {
	if len(c.args) == 0 {
		return usageErr("want rules show|export|import FILE|edit")
	}
	switch c.args[0] {
	case "show", "export", "edit":
		if len(c.args) != 1 {
			return usageErr("rules %s takes no arguments", c.args[0])
		}
	case "import":
		if len(c.args) != 2 {
			return usageErr("want rules import FILE (- for standard input)")
		}
	default:
		return usageErr("unknown rules command %q", c.args[0])
	}
	return nil
}

func rulesCmd(ctx context.Context, c *command) error {
	switch c.args[0] {
	case "show":
		return showRules(ctx, c)
	case "export":
		s, err := c.client.ExportRules(ctx)
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(map[string]string{"toml": s})
		}
		_, err = io.WriteString(c.io.Out, s)
		return err
	case "import":
		return importRules(ctx, c, c.args[1])
	default: // edit
		return editRules(ctx, c)
	}
}

// importRules validates the file locally, for an error with a line
// number, and then hands it to the helper.
func importRules(ctx context.Context, c *command, name string) error {
	var data []byte
	var err error
	if name == "-" {
		data, err = io.ReadAll(io.LimitReader(c.io.In, rules.MaxSize+1))
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return fmt.Errorf("read rules: %w", err)
	}
	if _, err := rules.Parse(name, data); err != nil {
		return fmt.Errorf("refused, nothing changed: %w", err)
	}
	if err := c.client.ImportRules(ctx, string(data)); err != nil {
		return err
	}
	return c.done("rules imported", map[string]bool{"imported": true})
}

// editRules works like visudo: it exports the rules to a private
// temporary file, runs the editor on it, validates the result (offering
// to edit again on an error) and imports it. Nothing changes unless a
// valid, changed file is imported.
func editRules(ctx context.Context, c *command) error {
	orig, err := c.client.ExportRules(ctx)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "aegis-rules-*.toml")
	if err != nil {
		return fmt.Errorf("edit rules: %w", err)
	}
	name := f.Name()
	defer os.Remove(name)
	_, err = f.WriteString(orig)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("edit rules: %w", err)
	}
	answers := bufio.NewReader(c.io.In)
	for {
		if err := c.runEditor(ctx, name); err != nil {
			return err
		}
		data, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("edit rules: %w", err)
		}
		if bytes.Equal(data, []byte(orig)) {
			return c.done("no changes", map[string]bool{"imported": false})
		}
		_, perr := rules.Parse("rules.toml", data)
		if perr == nil {
			if err := c.client.ImportRules(ctx, string(data)); err != nil {
				return err
			}
			return c.done("rules imported", map[string]bool{"imported": true})
		}
		fmt.Fprintf(c.io.Err, "aegisctl: %v\nedit again? [Y/n] ", perr)
		line, rerr := answers.ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a == "n" || a == "no" || (rerr != nil && a == "") {
			return fmt.Errorf("rules not changed: %w", perr)
		}
	}
}

// runEditor runs $VISUAL, $EDITOR or vi on name through the shell, so
// that an editor given with arguments works.
func (c *command) runEditor(ctx context.Context, name string) error {
	editor := c.io.Getenv("VISUAL")
	if editor == "" {
		editor = c.io.Getenv("EDITOR")
	}
	if editor == "" {
		editor = "vi"
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", editor+` "$1"`, "editor", name)
	cmd.Stdout, cmd.Stderr = c.io.Out, c.io.Err
	// A terminal editor needs the terminal itself; other input is kept
	// for the "edit again?" question.
	if in, ok := c.io.In.(*os.File); ok {
		cmd.Stdin = in
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("run editor %q: %w", editor, err)
	}
	return nil
}
