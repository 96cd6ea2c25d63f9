package proc

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDetectInterpreter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		exe  string
		argv string // space-separated; "_" stands for a space inside an argument
		want *Interpreter
	}{
		// python
		{"/usr/bin/python3.11", "python3 /home/a/x.py --flag", &Interpreter{"python", ScriptFile, "/home/a/x.py"}},
		{"/usr/bin/python3.11", "/usr/bin/python3 -u -W ignore -X dev x.py", &Interpreter{"python", ScriptFile, "x.py"}},
		{"/usr/bin/python3.11", "python3 -Wignore -OO x.py", &Interpreter{"python", ScriptFile, "x.py"}},
		{"/usr/bin/python3.11", "python3 -m http.server 8000", &Interpreter{"python", ScriptModule, "http.server"}},
		{"/usr/bin/python3.11", "python3 -mpip install x", &Interpreter{"python", ScriptModule, "pip"}},
		{"/usr/bin/python3.11", "python3 -Bc import_os", &Interpreter{"python", ScriptInline, "import os"}},
		{"/usr/bin/python3.11", "python3 -c print(1) arg", &Interpreter{"python", ScriptInline, "print(1)"}},
		{"/usr/bin/python3.11", "python3 - arg", &Interpreter{"python", ScriptStdin, ""}},
		{"/usr/bin/python3.11", "python3 -- -odd.py", &Interpreter{"python", ScriptFile, "-odd.py"}},
		{"/usr/bin/python3.11", "python3", &Interpreter{"python", ScriptNone, ""}},
		{"/usr/bin/python3.11", "python3 -i", &Interpreter{"python", ScriptNone, ""}},
		{"/usr/bin/python3", "python3 --check-hash-based-pycs always x.py", &Interpreter{"python", ScriptFile, "x.py"}},
		{"/usr/local/bin/python", "python x.py", &Interpreter{"python", ScriptFile, "x.py"}},
		{"/usr/bin/python3.13t", "python x.py", &Interpreter{"python", ScriptFile, "x.py"}},
		// node
		{"/usr/bin/node", "node server.js", &Interpreter{"node", ScriptFile, "server.js"}},
		{"/usr/bin/nodejs", "nodejs --inspect=9229 -r dotenv/config app.js", &Interpreter{"node", ScriptFile, "app.js"}},
		{"/usr/bin/node", "node --require ts-node/register app.ts", &Interpreter{"node", ScriptFile, "app.ts"}},
		{"/usr/bin/node", "node -e console.log(1)", &Interpreter{"node", ScriptInline, "console.log(1)"}},
		{"/usr/bin/node", "node -pe 1+1", &Interpreter{"node", ScriptInline, "1+1"}},
		{"/usr/bin/node", "node --eval=fetch(u)", &Interpreter{"node", ScriptInline, "fetch(u)"}},
		// perl
		{"/usr/bin/perl", "perl -w -Ilib script.pl", &Interpreter{"perl", ScriptFile, "script.pl"}},
		{"/usr/bin/perl5.36.0", "perl -I lib -Mstrict script.pl", &Interpreter{"perl", ScriptFile, "script.pl"}},
		{"/usr/bin/perl", "perl -l0 -ne print file", &Interpreter{"perl", ScriptInline, "print"}},
		{"/usr/bin/perl", "perl -E say_1", &Interpreter{"perl", ScriptInline, "say 1"}},
		// ruby
		{"/usr/bin/ruby3.1", "ruby -W0 -rjson bin/app.rb", &Interpreter{"ruby", ScriptFile, "bin/app.rb"}},
		{"/usr/bin/ruby", "ruby -I lib -e puts_1", &Interpreter{"ruby", ScriptInline, "puts 1"}},
		// shells
		{"/usr/bin/bash", "bash /usr/local/bin/backup.sh now", &Interpreter{"bash", ScriptFile, "/usr/local/bin/backup.sh"}},
		{"/usr/bin/bash", "bash -c curl_example.com name arg", &Interpreter{"bash", ScriptInline, "curl example.com"}},
		{"/usr/bin/bash", "bash -xec ls", &Interpreter{"bash", ScriptInline, "ls"}},
		{"/usr/bin/bash", "-bash", &Interpreter{"bash", ScriptNone, ""}},
		{"/usr/bin/bash", "bash --login -i", &Interpreter{"bash", ScriptNone, ""}},
		{"/usr/bin/bash", "bash --rcfile my.rc -o vi run.sh", &Interpreter{"bash", ScriptFile, "run.sh"}},
		{"/usr/bin/bash", "bash +o posix run.sh", &Interpreter{"bash", ScriptFile, "run.sh"}},
		{"/usr/bin/bash", "bash -s arg", &Interpreter{"bash", ScriptStdin, ""}},
		{"/usr/bin/dash", "/bin/sh -e /etc/init.d/x start", &Interpreter{"dash", ScriptFile, "/etc/init.d/x"}},
		{"/usr/bin/zsh", "zsh -c echo", &Interpreter{"zsh", ScriptInline, "echo"}},
		{"/usr/bin/fish", "fish -C set_x -c echo_hi", &Interpreter{"fish", ScriptInline, "echo hi"}},
		{"/usr/bin/fish", "fish --command=ls", &Interpreter{"fish", ScriptInline, "ls"}},
		{"/usr/bin/fish", "fish tool.fish", &Interpreter{"fish", ScriptFile, "tool.fish"}},
		{"", "sh -c true", &Interpreter{"sh", ScriptInline, "true"}},
		// java
		{"/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "java -Xmx2g -jar /opt/app/app.jar --port 8", &Interpreter{"java", ScriptJar, "/opt/app/app.jar"}},
		{"/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "java -cp lib/*:. -Dx=y com.example.Main arg", &Interpreter{"java", ScriptClass, "com.example.Main"}},
		{"/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "java --module-path mods -m app/com.example.Main", &Interpreter{"java", ScriptModule, "app/com.example.Main"}},
		{"/usr/lib/jvm/java-21-openjdk-amd64/bin/java", "java --source 21 Hello.java", &Interpreter{"java", ScriptFile, "Hello.java"}},
		{"/usr/lib/jvm/java-21-openjdk-amd64/bin/java", "java @opts.txt -version", &Interpreter{"java", ScriptNone, ""}},
		// php
		{"/usr/bin/php8.2", "php -d memory_limit=-1 artisan serve", &Interpreter{"php", ScriptFile, "artisan"}},
		{"/usr/bin/php", "php -f index.php", &Interpreter{"php", ScriptFile, "index.php"}},
		{"/usr/bin/php", "php -r echo_1;", &Interpreter{"php", ScriptInline, "echo 1;"}},
		{"/usr/bin/php", "php -S 127.0.0.1:8080 -t public", &Interpreter{"php", ScriptNone, ""}},
		// lua
		{"/usr/bin/lua5.4", "lua -l socket main.lua", &Interpreter{"lua", ScriptFile, "main.lua"}},
		{"/usr/bin/luajit", "luajit -e print(1)", &Interpreter{"lua", ScriptInline, "print(1)"}},
		{"/usr/bin/lua5.4", "lua -", &Interpreter{"lua", ScriptStdin, ""}},
		// not interpreters
		{"/usr/bin/curl", "curl https://example.com", nil},
		{"/usr/bin/python-config", "python-config --libs", nil},
		{"/usr/bin/pythonista", "x", nil},
		{"/usr/bin/shellcheck", "shellcheck x.sh", nil},
		{"/usr/bin/javac", "javac X.java", nil},
		{"/usr/bin/perldoc", "perldoc x", nil},
		{"", "", nil},
	}
	for _, tt := range tests {
		var argv []string
		if tt.argv != "" {
			for _, a := range strings.Split(tt.argv, " ") {
				argv = append(argv, strings.ReplaceAll(a, "_", " "))
			}
		}
		got := DetectInterpreter(tt.exe, argv)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("DetectInterpreter(%q, %q) (-want +got):\n%s", tt.exe, argv, diff)
		}
	}
}
