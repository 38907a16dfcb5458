//go:build hugerunner

package runner

import "time"

// BoundedFrequencyRunner has the real one's fields, and then 2^49 bytes.
type BoundedFrequencyRunner struct {
	name          string
	minInterval   time.Duration
	retryInterval time.Duration
	maxInterval   time.Duration
	run           chan struct{}
	fn            func() error
	pad           [1 << 49]byte
}

// Run is a method on the pointer type.
func (b *BoundedFrequencyRunner) Run() { b.run <- struct{}{} }
