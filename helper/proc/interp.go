package proc

import (
	"path"
	"strings"
)

// ScriptKind says what an interpreter runs.
type ScriptKind string

// Script kinds.
const (
	// ScriptNone: no script on the command line (interactive, or unknown).
	ScriptNone ScriptKind = ""
	// ScriptFile: Script is a file path as written on the command line
	// (relative paths are relative to the process's working directory).
	ScriptFile ScriptKind = "file"
	// ScriptModule: Script is a module name (python -m, java -m).
	ScriptModule ScriptKind = "module"
	// ScriptInline: Script is code given on the command line (sh -c,
	// python -c, perl -e, node -e, php -r, lua -e).
	ScriptInline ScriptKind = "inline"
	// ScriptStdin: the program is read from standard input ("-", sh -s).
	ScriptStdin ScriptKind = "stdin"
	// ScriptJar: Script is the jar of java -jar.
	ScriptJar ScriptKind = "jar"
	// ScriptClass: Script is the main class given to java.
	ScriptClass ScriptKind = "class"
)

// Interpreter describes a process whose executable runs programs it reads:
// the hash covers the interpreter, the script comes from the command line.
type Interpreter struct {
	// Name is the interpreter family: python, node, perl, ruby, sh, bash,
	// dash, zsh, fish, java, php or lua.
	Name   string
	Kind   ScriptKind
	Script string
}

// argSpec describes an interpreter's command-line options, enough to find
// the first operand (the script) and the options that replace it.
type argSpec struct {
	// separate: values of short options are always the next argument, so
	// "-pe code" is two flags and one value (node).
	separate bool
	// words: options are whole words (java's -jar, -cp); short options
	// never combine.
	words bool
	// Short option letters (combinable, value attached or in the next
	// argument): inline code, a module, a script file, any other value.
	inline, module, file, value string
	// attached: letters whose optional value can only be attached (perl -l0).
	attached string
	// shellC: the letter whose presence makes the first operand inline
	// code (sh -c 'cmd' arg0).
	shellC byte
	// stdin: the letter that reads the program from standard input.
	stdin byte
	// Whole-word options, also accepted as --opt=value.
	longInline, longModule, longFile, longValue, longJar []string
	// plus: options may also start with '+' (sh +o).
	plus bool
}

var (
	pythonSpec = argSpec{inline: "c", module: "m", value: "WX", longValue: []string{"--check-hash-based-pycs"}}
	nodeSpec   = argSpec{separate: true, inline: "ep", value: "rC",
		longInline: []string{"--eval", "--print"},
		longValue:  []string{"--require", "--import", "--loader", "--experimental-loader", "--conditions", "--input-type", "--title", "--env-file", "--redirect-warnings"}}
	perlSpec  = argSpec{inline: "eE", value: "IMm", attached: "0CdDFilx"}
	rubySpec  = argSpec{inline: "e", value: "IrCE", attached: "0FixWTK"}
	shellSpec = argSpec{shellC: 'c', stdin: 's', value: "oO", plus: true, longValue: []string{"--rcfile", "--init-file"}}
	fishSpec  = argSpec{inline: "c", value: "Cdfo", longInline: []string{"--command"},
		longValue: []string{"--init-command", "--debug", "--debug-output", "--features", "--profile", "--profile-startup"}}
	javaSpec = argSpec{words: true,
		longModule: []string{"-m", "--module"},
		longJar:    []string{"-jar"},
		longValue: []string{"-cp", "-classpath", "--class-path", "-p", "--module-path", "--upgrade-module-path",
			"--add-modules", "--limit-modules", "--source", "--add-reads", "--add-exports", "--add-opens",
			"--patch-module", "--enable-native-access", "-splash"}}
	phpSpec = argSpec{inline: "rBRE", file: "fF", value: "dcztS", longValue: []string{"--rf", "--rc", "--re", "--rz", "--ri"}}
	luaSpec = argSpec{inline: "e", value: "lj"}
)

// interpreters maps an executable name to its family and options. Names
// with a version suffix (python3.12, perl5.36.0, php8.2, lua5.4) are matched
// by interpreterOf.
var interpreters = map[string]struct {
	name string
	spec *argSpec
}{
	"python": {"python", &pythonSpec},
	"node":   {"node", &nodeSpec},
	"nodejs": {"node", &nodeSpec},
	"perl":   {"perl", &perlSpec},
	"ruby":   {"ruby", &rubySpec},
	"sh":     {"sh", &shellSpec},
	"bash":   {"bash", &shellSpec},
	"dash":   {"dash", &shellSpec},
	"zsh":    {"zsh", &shellSpec},
	"fish":   {"fish", &fishSpec},
	"java":   {"java", &javaSpec},
	"php":    {"php", &phpSpec},
	"lua":    {"lua", &luaSpec},
	"luajit": {"lua", &luaSpec},
}

// versioned lists the families whose executables carry version suffixes.
var versioned = []string{"python", "perl", "ruby", "php", "lua"}

// interpreterOf returns the family entry for an executable base name.
func interpreterOf(base string) (string, *argSpec, bool) {
	if e, ok := interpreters[base]; ok {
		return e.name, e.spec, true
	}
	for _, fam := range versioned {
		if v, ok := strings.CutPrefix(base, fam); ok && isVersion(v) {
			e := interpreters[fam]
			return e.name, e.spec, true
		}
	}
	return "", nil, false
}

// isVersion reports whether s looks like "3", "3.12", "5.36.0" or "3.12m".
func isVersion(s string) bool {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && c != '.' && !(i == len(s)-1 && (c == 'm' || c == 'd' || c == 't')) {
			return false
		}
	}
	return true
}

// DetectInterpreter reports whether the executable at exe (or, when exe is
// empty, argv[0]) is a known interpreter, and what it runs according to its
// arguments. It returns nil for other programs.
func DetectInterpreter(exe string, argv []string) *Interpreter {
	name := exe
	if name == "" && len(argv) > 0 {
		name = argv[0]
	}
	fam, spec, ok := interpreterOf(path.Base(name))
	if !ok {
		return nil
	}
	in := &Interpreter{Name: fam}
	if len(argv) > 1 {
		in.Kind, in.Script = spec.script(argv[1:])
	}
	return in
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// script finds what the interpreter runs in its arguments (argv[1:]).
func (sp *argSpec) script(args []string) (ScriptKind, string) {
	shellInline := false
	operand := func(a string) (ScriptKind, string) {
		switch {
		case shellInline:
			return ScriptInline, a
		case a == "-":
			return ScriptStdin, ""
		case sp.words && !strings.HasSuffix(a, ".java"):
			return ScriptClass, a
		}
		return ScriptFile, a
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() (string, bool) {
			if i+1 < len(args) {
				i++
				return args[i], true
			}
			return "", false
		}
		if a == "--" {
			if i+1 < len(args) {
				return operand(args[i+1])
			}
			break
		}
		isOpt := len(a) > 1 && (a[0] == '-' || (sp.plus && a[0] == '+') || (sp.words && a[0] == '@'))
		if !isOpt {
			return operand(a)
		}
		// Whole-word options: "--eval code", "--eval=code", "-jar x.jar".
		if strings.HasPrefix(a, "--") || sp.words {
			word, val, hasVal := strings.Cut(a, "=")
			kind := ScriptNone
			switch {
			case has(sp.longInline, word):
				kind = ScriptInline
			case has(sp.longModule, word):
				kind = ScriptModule
			case has(sp.longFile, word):
				kind = ScriptFile
			case has(sp.longJar, word):
				kind = ScriptJar
			case has(sp.longValue, word):
				if !hasVal {
					next()
				}
				continue
			default:
				continue // a flag, or an option with its value attached
			}
			if !hasVal {
				val, _ = next()
			}
			return kind, val
		}
		// Short options, possibly combined: "-uc code", "-Ilib", "-xc".
	letters:
		for j := 1; j < len(a); j++ {
			c := a[j]
			rest := a[j+1:]
			value := func() string {
				if rest != "" && !sp.separate {
					return rest
				}
				v, _ := next()
				return v
			}
			switch {
			case strings.IndexByte(sp.inline, c) >= 0:
				return ScriptInline, value()
			case strings.IndexByte(sp.module, c) >= 0:
				return ScriptModule, value()
			case strings.IndexByte(sp.file, c) >= 0:
				return ScriptFile, value()
			case strings.IndexByte(sp.value, c) >= 0:
				value()
			case strings.IndexByte(sp.attached, c) >= 0:
			case c == sp.shellC && c != 0:
				shellInline = true
				continue
			case c == sp.stdin && c != 0:
				return ScriptStdin, ""
			default:
				continue
			}
			break letters // the rest of the argument was a value
		}
	}
	return ScriptNone, ""
}
