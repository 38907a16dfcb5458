package kpmetrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Config is kube-proxy's /configz document: {"kubeproxy.config.k8s.io": {...}}. Its field names are
// the internal Go names up to k8s 1.35 ("SyncPeriod", and the periods in an "IPTables", "IPVS" or
// "NFTables" section up to 1.30) and camelCase from 1.36.
type Config struct{ doc any }

// ParseConfig reads a /configz document.
func ParseConfig(r io.Reader) (Config, error) {
	var doc any
	if err := json.NewDecoder(io.LimitReader(r, 1<<20)).Decode(&doc); err != nil {
		return Config{}, fmt.Errorf("parse kube-proxy /configz: %w", err)
	}
	if _, ok := doc.(map[string]any); !ok {
		return Config{}, fmt.Errorf("parse kube-proxy /configz: not a JSON object")
	}
	return Config{doc: doc}, nil
}

// Configz fetches and parses /configz.
func (c *Client) Configz(ctx context.Context) (Config, error) {
	var cfg Config
	err := c.get(ctx, "/configz", "read kube-proxy /configz", func(r io.Reader) (err error) {
		cfg, err = ParseConfig(r)
		return err
	})
	return cfg, err
}

// Period returns a period of the proxy mode's proxier ("minSyncPeriod", "syncPeriod"): the
// top-level field where there is one (1.31+), else the mode's own section's (up to 1.30, where
// 1.29–1.30 nftables has its own).
func (c Config) Period(name, mode string) (time.Duration, bool) {
	root := c.root()
	if d, ok := duration(root, name); ok {
		return d, true
	}
	for k, v := range root {
		if sec, ok := v.(map[string]any); ok && strings.EqualFold(k, mode) {
			return duration(sec, name)
		}
	}
	return 0, false
}

// Mode is the configured proxy mode ("" if the document has none).
func (c Config) Mode() string {
	for k, v := range c.root() {
		if s, ok := v.(string); ok && strings.EqualFold(k, "mode") {
			return s
		}
	}
	return ""
}

// root is the configuration object, under its single group key.
func (c Config) root() map[string]any {
	m, _ := c.doc.(map[string]any)
	if len(m) == 1 {
		for _, v := range m {
			if inner, ok := v.(map[string]any); ok {
				return inner
			}
		}
	}
	return m
}

func duration(m map[string]any, name string) (time.Duration, bool) {
	for k, v := range m {
		if !strings.EqualFold(k, name) {
			continue
		}
		if s, ok := v.(string); ok {
			if d, err := time.ParseDuration(s); err == nil && d >= 0 {
				return d, true
			}
		}
	}
	return 0, false
}
