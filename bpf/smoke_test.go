package bpf

import (
	"testing"

	"github.com/aegisfw/aegis/internal/kerneltest"
)

func TestMain(m *testing.M) { kerneltest.Main(m) }

func TestSmoke(t *testing.T) {
	kerneltest.Require(t)
	cg := kerneltest.NewCgroup(t)
	dp, err := Open(Options{Cgroup: cg.Path, Unpinned: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
}
