// Package runner declares a BoundedFrequencyRunner in kube-proxy's package path.
package runner

// Name is the name every real runner has; its string header sits in the fake's data.
var Name = "sync-runner"

var keep any

// Keep returns a runner pointer type kept in the binary (its descriptor, "*runner.BoundedFrequencyRunner").
func Keep() any {
	if keep == nil {
		keep = (*BoundedFrequencyRunner)(nil)
	}
	return keep
}
