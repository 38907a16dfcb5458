//go:build !hugerunner

package runner

import "time"

// BoundedFrequencyRunner has the fields of the real one (k8s ≥ 1.34).
type BoundedFrequencyRunner struct {
	name          string
	minInterval   time.Duration
	retryInterval time.Duration
	maxInterval   time.Duration
	run           chan struct{}
	fn            func() error
}

// Run is a method on the pointer type.
func (b *BoundedFrequencyRunner) Run() { b.run <- struct{}{} }
