// Package e2e holds Aegis's end-to-end tests and benchmarks: the helper
// (helper/daemon) on the real kernel, attached to a child cgroup, serving
// a private system bus with a real polkitd, answered by prompt agents
// running as test users, and driven by aegisctl (helper/ctl).
package e2e
