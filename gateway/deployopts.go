package gateway

import (
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kilnfaas/kiln/store/registry"
)

// ScalingParams are a deploy's warm-pool settings as text (see
// registry.Scaling).
type ScalingParams struct {
	MinWarm      string `json:"min_warm,omitempty"`      // instances kept idle per node
	MaxInstances string `json:"max_instances,omitempty"` // instances per node at most; 0: memory decides
	KeepAlive    string `json:"keep_alive,omitempty"`    // "30s", "5m" or milliseconds
	Fresh        string `json:"fresh,omitempty"`         // "true": a restore per invocation
}

// SLAParams are a deploy's SLA as text (see registry.SLA).
type SLAParams struct {
	Deadline string `json:"deadline,omitempty"` // "50ms", "1s" or milliseconds
	Target   string `json:"target,omitempty"`   // percent within the deadline: "99.9"
}

var optionFields = []string{"min_warm", "max_instances", "keep_alive", "fresh", "deadline", "target"}

func (p *DeployParams) optionFields() []*string {
	return []*string{&p.MinWarm, &p.MaxInstances, &p.KeepAlive, &p.Fresh, &p.Deadline, &p.Target}
}

func (p *DeployParams) optionsFromValues(v url.Values) {
	for i, f := range p.optionFields() {
		if s := v.Get(optionFields[i]); s != "" {
			*f = s
		}
	}
}

func (p *DeployParams) addOptionValues(v url.Values) {
	for i, f := range p.optionFields() {
		if *f != "" {
			v.Set(optionFields[i], *f)
		}
	}
}

// parseMillis reads a duration ("50ms", "2s", "5m") or a bare number of
// milliseconds.
func parseMillis(s string) (int64, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return d.Milliseconds(), nil
}

// scaling validates the warm-pool settings; errors say what is accepted.
func (p ScalingParams) scaling() (registry.Scaling, error) {
	var c registry.Scaling
	if p.MinWarm != "" {
		n, err := strconv.Atoi(p.MinWarm)
		if err != nil || n < 0 || n > registry.MaxMinWarm {
			return c, fmt.Errorf("bad min_warm %q: use a whole number of instances from 0 to %d", p.MinWarm, registry.MaxMinWarm)
		}
		c.MinWarm = n
	}
	if p.MaxInstances != "" {
		n, err := strconv.Atoi(p.MaxInstances)
		if err != nil || n < 0 || n > registry.MaxInstancesCap {
			return c, fmt.Errorf("bad max_instances %q: use a whole number of instances per node, 0 to let memory decide", p.MaxInstances)
		}
		c.MaxInstances = n
	}
	if c.MaxInstances > 0 && c.MinWarm > c.MaxInstances {
		return c, fmt.Errorf("min_warm %d is more than max_instances %d: lower min_warm or raise max_instances", c.MinWarm, c.MaxInstances)
	}
	if p.KeepAlive != "" {
		ms, err := parseMillis(p.KeepAlive)
		if err != nil || ms < 0 || ms > registry.MaxKeepAliveMs {
			return c, fmt.Errorf("bad keep_alive %q: use a duration up to 24h, such as 30s or 10m", p.KeepAlive)
		}
		c.KeepAliveMs = ms
	}
	if p.Fresh != "" {
		b, err := strconv.ParseBool(p.Fresh)
		if err != nil {
			return c, fmt.Errorf("bad fresh %q: use true or false", p.Fresh)
		}
		c.Fresh = b
	}
	if c.Fresh && c.MinWarm > 0 {
		return c, fmt.Errorf("a fresh function keeps no warm instances (each call gets its own restore): drop min_warm or fresh")
	}
	return c, nil
}

// sla validates the SLA settings: both or neither.
func (p SLAParams) sla() (registry.SLA, error) {
	var l registry.SLA
	if p.Deadline == "" && p.Target == "" {
		return l, nil
	}
	if p.Deadline == "" || p.Target == "" {
		return l, fmt.Errorf("an SLA needs both a deadline and a target, such as deadline=50ms target=99.9")
	}
	ms, err := parseMillis(p.Deadline)
	if err != nil || ms < 1 || ms > registry.MaxSLADeadlineMs {
		return l, fmt.Errorf("bad deadline %q: use a duration from 1ms to 15m, such as 50ms", p.Deadline)
	}
	pct, err := strconv.ParseFloat(strings.TrimSuffix(p.Target, "%"), 64)
	if err != nil || !(pct > 0 && pct < 100) {
		return l, fmt.Errorf("bad target %q: use the percent of invocations that must meet the deadline, above 0 and below 100, such as 99.9", p.Target)
	}
	// Rounded to 1e-9 so that 99.9 reads back as 0.999.
	return registry.SLA{DeadlineMs: ms, Target: math.Round(pct*1e7) / 1e9}, nil
}
