package agent

import "testing"

// FuzzConfig: any configuration file is accepted as a valid policy or refused; never a panic.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("policy: adaptive\nbudget: 0.3\nfloor: 2s\nceiling: 20s\n"))
	f.Add([]byte("policy: static\nminSyncPeriod: 5s\n"))
	f.Add([]byte("{\"policy\":\"static\",\"minSyncPeriod\":\"1s\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if _, err := c.Build(); err != nil {
			t.Fatalf("ParseConfig accepted a configuration Build refuses: %v", err)
		}
	})
}
