# Aegis build, test and install.
#
#   make run      build and run aegis-helper in the foreground (as root)
#   make test     install test dependencies, vet, lint and run every test
#   make bench    benchmarks, each reported as a ratio against a baseline
#   make generate regenerate the eBPF objects and Go bindings
#   make install  install under $(DESTDIR)$(PREFIX) (see DESIGN layout)

SHELL       := /bin/bash
GO          ?= go
PREFIX      ?= /usr
DESTDIR     ?=
SYSCONFDIR  ?= /etc
LIBEXECDIR  ?= $(PREFIX)/libexec/aegis
BIN         := bin
GOTEST_FLAGS ?= -timeout 20m
export PATH := $(PATH):/usr/local/go/bin

# Debian packages: the eBPF toolchain for `make generate`, and what the
# tests drive for real (dbus-daemon, polkitd, setpriv, useradd, ...).
DEB_PACKAGES := clang llvm libbpf-dev bpftool iproute2 coreutils dpkg dash util-linux passwd \
	dbus-daemon dbus-bin polkitd systemd \
	xvfb dunst xfce4-panel imagemagick

.PHONY: all build run test test-go bench generate check-generate vmlinux lint deps install uninstall clean

all: build

build:
	$(GO) build -trimpath -o $(BIN)/ ./cmd/...

# Runs the helper in the foreground on the system bus, with the bus policy
# and polkit actions it needs installed. AEGIS_FLAGS passes flags, e.g.
# AEGIS_FLAGS="--cgroup /sys/fs/cgroup/some.slice --log-level debug".
run: build
	@if [ "$$(id -u)" != 0 ]; then echo "aegis-helper needs root: sudo make run" >&2; exit 1; fi
	install -D -m 0644 systemd/io.github.aegisfw.Aegis1.conf $(PREFIX)/share/dbus-1/system.d/io.github.aegisfw.Aegis1.conf
	install -D -m 0644 polkit/io.github.aegisfw.aegis.policy $(PREFIX)/share/polkit-1/actions/io.github.aegisfw.aegis.policy
	@if [ ! -S /run/dbus/system_bus_socket ]; then echo "no system bus: start dbus first" >&2; exit 1; fi
	$(BIN)/aegis-helper $(AEGIS_FLAGS)

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends \
			-o DPkg::Lock::Timeout=600 $$missing; \
	fi

generate: deps
	$(GO) generate ./bpf/

# The committed objects and bindings must be what the sources produce.
check-generate: generate
	@git diff --exit-code --stat -- bpf/ || { echo "bpf/: generated files are stale: run make generate and commit" >&2; exit 1; }

vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out" >&2; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

test: deps check-generate lint test-go

test-go:
	$(GO) test $(GOTEST_FLAGS) -count=1 ./...

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./bpf/
	$(GO) test -run '^$$' -bench . ./helper/...
	$(GO) test -run '^$$' -bench . -benchtime 1x ./e2e/

install: build
	install -D -m 0755 $(BIN)/aegis-helper $(DESTDIR)$(LIBEXECDIR)/aegis-helper
	install -D -m 0755 $(BIN)/aegisctl $(DESTDIR)$(PREFIX)/bin/aegisctl
	@if [ -f $(BIN)/aegis-tray ]; then install -D -m 0755 $(BIN)/aegis-tray $(DESTDIR)$(PREFIX)/bin/aegis-tray; fi
	install -D -m 0644 systemd/aegis-tray.desktop $(DESTDIR)$(SYSCONFDIR)/xdg/autostart/aegis-tray.desktop
	for s in enforcing learning alert disconnected; do \
		install -D -m 0644 icons/aegis-$$s.svg $(DESTDIR)$(PREFIX)/share/icons/hicolor/scalable/apps/aegis-$$s.svg; done
	install -D -m 0644 systemd/aegis-helper.service $(DESTDIR)/lib/systemd/system/aegis-helper.service
	install -D -m 0644 systemd/io.github.aegisfw.Aegis1.conf $(DESTDIR)$(PREFIX)/share/dbus-1/system.d/io.github.aegisfw.Aegis1.conf
	install -D -m 0644 systemd/io.github.aegisfw.Aegis1.service $(DESTDIR)$(PREFIX)/share/dbus-1/system-services/io.github.aegisfw.Aegis1.service
	install -D -m 0644 polkit/io.github.aegisfw.aegis.policy $(DESTDIR)$(PREFIX)/share/polkit-1/actions/io.github.aegisfw.aegis.policy
	install -d -m 0700 $(DESTDIR)$(SYSCONFDIR)/aegis $(DESTDIR)/var/lib/aegis

uninstall:
	rm -f $(DESTDIR)$(LIBEXECDIR)/aegis-helper $(DESTDIR)$(PREFIX)/bin/aegisctl $(DESTDIR)$(PREFIX)/bin/aegis-tray \
		$(DESTDIR)/lib/systemd/system/aegis-helper.service \
		$(DESTDIR)$(PREFIX)/share/dbus-1/system.d/io.github.aegisfw.Aegis1.conf \
		$(DESTDIR)$(PREFIX)/share/dbus-1/system-services/io.github.aegisfw.Aegis1.service \
		$(DESTDIR)$(PREFIX)/share/polkit-1/actions/io.github.aegisfw.aegis.policy

clean:
	rm -rf $(BIN)
