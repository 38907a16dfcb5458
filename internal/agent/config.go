package agent

import (
	"bytes"
	"fmt"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"kptune/internal/policy"
)

// Config is the agent's policy configuration: a file (its ConfigMap, mounted), reloaded when it
// changes. Durations are strings ("5s").
type Config struct {
	// Policy is "static" (hold minSyncPeriod) or "adaptive".
	PolicyName    string          `json:"policy"`
	MinSyncPeriod metav1.Duration `json:"minSyncPeriod"`
	// Adaptive: kube-proxy's CPU budget in cores, its bounds and its pace.
	Budget     float64         `json:"budget"`
	Floor      metav1.Duration `json:"floor"`
	Ceiling    metav1.Duration `json:"ceiling"`
	Hysteresis float64         `json:"hysteresis"`
	MaxStep    float64         `json:"maxStep"`
	// DecideEvery is the adaptive policy's window: how often it decides.
	DecideEvery metav1.Duration `json:"decideEvery"`
}

// DefaultConfig is the configuration without a file: static 1s, kube-proxy's own default; the
// adaptive policy's bounds are set for when a file chooses it.
func DefaultConfig() Config {
	return Config{
		PolicyName: "static", MinSyncPeriod: metav1.Duration{Duration: time.Second},
		Budget: 0.2, Floor: metav1.Duration{Duration: time.Second}, Ceiling: metav1.Duration{Duration: 30 * time.Second},
		Hysteresis: 0.2, MaxStep: 2, DecideEvery: metav1.Duration{Duration: 30 * time.Second},
	}
}

// ParseConfig reads a YAML (or JSON) configuration over the defaults, strictly: an unknown field
// is an error, not a silent default.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	if len(bytes.TrimSpace(data)) > 0 {
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return Config{}, fmt.Errorf("parse agent configuration: %w", err)
		}
	}
	if _, err := c.Build(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads a configuration file.
func LoadConfig(path string) (Config, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, nil, fmt.Errorf("read agent configuration: %w", err)
	}
	c, err := ParseConfig(data)
	return c, data, err
}

// Build builds the configured policy.
func (c Config) Build() (policy.Policy, error) {
	switch c.PolicyName {
	case "static":
		if c.MinSyncPeriod.Duration <= 0 {
			return nil, fmt.Errorf("static policy: minSyncPeriod %v must be positive", c.MinSyncPeriod.Duration)
		}
		return policy.Static{Period: c.MinSyncPeriod.Duration}, nil
	case "adaptive":
		a := policy.Adaptive{Budget: c.Budget, Floor: c.Floor.Duration, Ceiling: c.Ceiling.Duration, Hysteresis: c.Hysteresis, MaxStep: c.MaxStep}
		if err := a.Validate(); err != nil {
			return nil, fmt.Errorf("adaptive policy: %w", err)
		}
		if c.DecideEvery.Duration < time.Second {
			return nil, fmt.Errorf("adaptive policy: decideEvery %v must be at least 1s", c.DecideEvery.Duration)
		}
		return a, nil
	}
	return nil, fmt.Errorf("unknown policy %q: use static or adaptive", c.PolicyName)
}
