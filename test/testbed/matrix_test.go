//go:build matrix

package testbed

import (
	"context"
	"testing"
	"time"
)

// TestMatrix starts every kube-proxy of the matrix against one control plane and checks that each
// syncs and writes the loaded Services. Run with `make test-matrix`.
func TestMatrix(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	for _, tg := range Matrix {
		if _, err := tg.Build.KubeProxy(ctx); err != nil {
			t.Fatalf("%s: %v", tg, err)
		}
	}
	c, err := Up(ctx, ClusterOptions{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Down() })
	const services = 30
	if err := c.Load(ctx, services, 4); err != nil {
		t.Fatal(err)
	}
	for _, tg := range Matrix {
		t.Run(tg.String(), func(t *testing.T) {
			kp, err := c.StartKubeProxy(ctx, KubeProxyOptions{Build: tg.Build, Mode: tg.Mode, DualStack: tg.DualStack,
				MinSyncPeriod: 3700 * time.Millisecond, SyncPeriod: 47 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer kp.Stop()
			if err := kp.WaitSynced(ctx, 1, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
			waitRules(t, kp, services)
		})
	}
}
