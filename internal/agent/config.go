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
	// Policy is "static" (hold minSyncPeriod), "adaptive" (a CPU budget) or "objective" (a latency
	// objective).
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
	// Objective: kube-proxy's network programming latency at latencyQuantile held under
	// latencyObjective with the largest period that keeps it, aiming margin under it, judged on
	// windows of at least minChanges changes; kube-proxy's CPU over budget is reported, and prefer
	// says which wins where both cannot be met ("objective" or "budget"). Floor, ceiling,
	// hysteresis, maxStep and decideEvery as for adaptive.
	LatencyObjective metav1.Duration `json:"latencyObjective"`
	LatencyQuantile  float64         `json:"latencyQuantile"`
	Margin           float64         `json:"margin"`
	MinChanges       float64         `json:"minChanges"`
	Prefer           string          `json:"prefer"`
}

// DefaultConfig is the configuration without a file: static 1s, kube-proxy's own default; the
// adaptive policy's bounds are set for when a file chooses it.
func DefaultConfig() Config {
	return Config{
		PolicyName: "static", MinSyncPeriod: metav1.Duration{Duration: time.Second},
		Budget: 0.2, Floor: metav1.Duration{Duration: time.Second}, Ceiling: metav1.Duration{Duration: 30 * time.Second},
		Hysteresis: 0.2, MaxStep: 2, DecideEvery: metav1.Duration{Duration: 30 * time.Second},
		LatencyObjective: metav1.Duration{Duration: 10 * time.Second}, LatencyQuantile: 0.99, Margin: 0.2, MinChanges: 20,
		Prefer: string(policy.PreferObjective),
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
	case "objective":
		o := policy.Objective{Latency: c.LatencyObjective.Duration, Quantile: c.LatencyQuantile, Margin: c.Margin, MinChanges: c.MinChanges,
			Budget: c.Budget, Prefer: policy.Prefer(c.Prefer), Floor: c.Floor.Duration, Ceiling: c.Ceiling.Duration, Hysteresis: c.Hysteresis, MaxStep: c.MaxStep}
		if err := o.Validate(); err != nil {
			return nil, fmt.Errorf("objective policy: %w", err)
		}
		if c.DecideEvery.Duration < time.Second {
			return nil, fmt.Errorf("objective policy: decideEvery %v must be at least 1s", c.DecideEvery.Duration)
		}
		return o, nil
	}
	return nil, fmt.Errorf("unknown policy %q: use static, adaptive or objective", c.PolicyName)
}
