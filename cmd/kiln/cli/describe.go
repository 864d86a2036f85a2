package cli

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/gateway"
	"github.com/kilnfaas/kiln/store/registry"
)

// Description is what `kiln describe -o json` prints: one version of a
// function with everything deployed with it, the function's aliases and
// how many versions it has. Every field is always present (zero when
// unset), so scripts need no defaults of their own. Env values whose key
// looks secret are masked here too, so the JSON is as safe to paste as the
// table.
type Description struct {
	Name string `json:"name"`
	// Ref is what was asked for: "latest", an alias or a version number;
	// Version is the version shown, and Route where Ref sends calls now
	// (one version, or a split by weight).
	Ref          string            `json:"ref"`
	Version      uint64            `json:"version"`
	Route        []registry.Target `json:"route"`
	Kind         string            `json:"kind"`
	Digest       string            `json:"digest"`
	MemoryBytes  uint64            `json:"memory_bytes"`
	TimeoutMs    int64             `json:"timeout_ms"`
	Created      time.Time         `json:"created"`
	Env          []string          `json:"env"`
	Args         []string          `json:"args"`
	Limits       DescribedLimits   `json:"limits"`
	Scaling      DescribedScaling  `json:"scaling"`
	SLA          DescribedSLA      `json:"sla"`
	AsyncRetries int               `json:"async_retries"`
	Aliases      []registry.Alias  `json:"aliases"`
	VersionCount int               `json:"version_count"`
	// FirstDeployed is when version 1 was deployed.
	FirstDeployed time.Time `json:"first_deployed"`
}

// DescribedLimits is registry.Limits with every field present.
type DescribedLimits struct {
	Private        bool    `json:"private"`
	MaxConcurrency int     `json:"max_concurrency"`
	RatePerSecond  float64 `json:"rate_per_second"`
	RateBurst      int     `json:"rate_burst"`
	MaxBodyBytes   int64   `json:"max_body_bytes"`
}

// DescribedScaling is registry.Scaling with every field present.
type DescribedScaling struct {
	MinWarm      int   `json:"min_warm"`
	MaxInstances int   `json:"max_instances"`
	KeepAliveMs  int64 `json:"keep_alive_ms"`
	Fresh        bool  `json:"fresh"`
}

// DescribedSLA is registry.SLA with every field present; Target is a
// fraction (0.999 for 99.9 %).
type DescribedSLA struct {
	DeadlineMs int64   `json:"deadline_ms"`
	Target     float64 `json:"target"`
}

func describe(f registry.Function, ref string, versions []registry.Function, aliases []registry.Alias) Description {
	d := Description{
		Name: f.Name, Ref: ref, Version: f.Version, Kind: f.Kind, Digest: f.ImageDigest,
		MemoryBytes: f.MemoryBytes, TimeoutMs: f.TimeoutMs, Created: f.Created,
		Env: maskEnv(f.Env), Args: f.Args,
		// Field by field rather than by conversion, so a field added to
		// the registry's types does not break this build.
		Limits: DescribedLimits{Private: f.Private, MaxConcurrency: f.MaxConcurrency, RatePerSecond: f.RatePerSecond,
			RateBurst: f.RateBurst, MaxBodyBytes: f.MaxBodyBytes},
		Scaling:      DescribedScaling{MinWarm: f.MinWarm, MaxInstances: f.MaxInstances, KeepAliveMs: f.KeepAliveMs, Fresh: f.Fresh},
		SLA:          DescribedSLA{DeadlineMs: f.DeadlineMs, Target: f.Target},
		AsyncRetries: f.AsyncRetryLimit(),
		Route:        []registry.Target{{Version: f.Version, Weight: 100}},
		Aliases:      aliases, VersionCount: len(versions),
	}
	if d.Env == nil {
		d.Env = []string{}
	}
	if d.Args == nil {
		d.Args = []string{}
	}
	if d.Aliases == nil {
		d.Aliases = []registry.Alias{}
	}
	for _, al := range aliases {
		if al.Name == ref {
			d.Route = al.Targets
		}
	}
	if len(versions) > 0 {
		d.FirstDeployed = versions[0].Created
	}
	return d
}

func (a *app) describeCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "describe NAME[@REF]",
		Short: "Show everything about a function: version, image, settings, limits, scaling, SLA, aliases",
		Long: `Show one version of function NAME — the newest, or the one REF (an alias
or a version number) routes to — with its image, memory, timeout,
environment (values of secret-looking keys masked), arguments, limits,
warm-pool settings and SLA, then the function's aliases and versions.`,
		Example: `  kiln describe hello
  kiln describe hello@prod
  kiln describe hello@3 -o json`,
		Args:              usage(cobra.ExactArgs(1)),
		ValidArgsFunction: a.completeFunctionRefs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("describe", output); err != nil {
				return err
			}
			name, ref, err := gateway.ParseFunctionRef(args[0])
			if err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("describe: %v", err)}
			}
			if err := registry.CheckName(name); err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("describe: %q: %v (see `kiln list` for the deployed functions)", name, err)}
			}
			if ref == "" {
				ref = registry.Latest
			}
			ctx := cmd.Context()
			base := "/system/functions/" + url.PathEscape(name)
			var d gateway.Described
			q := url.Values{"version": {ref}}
			if err := a.getJSON(ctx, base+"?"+q.Encode(), &d); err != nil {
				return fmt.Errorf("describe %s: %w", args[0], err)
			}
			var as []registry.Alias
			if err := a.getJSON(ctx, base+"/aliases", &as); err != nil {
				return fmt.Errorf("describe %s: %w", args[0], err)
			}
			desc := describe(d.Function, ref, d.Versions, as)
			if output == "json" {
				return a.printJSON(desc)
			}
			return a.printDescription(desc)
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func (a *app) printDescription(d Description) error {
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	row := func(k, format string, v ...any) { fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, v...)...) }
	row("Name", "%s", d.Name)
	if d.Ref == registry.Latest {
		row("Version", "%d (latest)", d.Version)
	} else {
		row("Version", "%d (%s@%s → %s)", d.Version, d.Name, d.Ref, routeText(d.Route))
	}
	row("Kind", "%s", d.Kind)
	row("Image", "%s", d.Digest)
	row("Memory", "%d MiB", d.MemoryBytes>>20)
	row("Timeout", "%s", time.Duration(d.TimeoutMs)*time.Millisecond)
	row("Deployed", "%s", d.Created.Local().Format(time.DateTime))
	if len(d.Args) == 0 {
		row("Args", "-")
	} else {
		row("Args", "%s", strings.Join(d.Args, " "))
	}
	if len(d.Env) == 0 {
		row("Env", "-")
	}
	for i, e := range d.Env {
		if i == 0 {
			row("Env", "%s", e)
		} else {
			fmt.Fprintf(tw, "\t%s\n", e) // one entry a line, under the first
		}
	}
	l := describeLimits(registry.Limits{Private: d.Limits.Private, MaxConcurrency: d.Limits.MaxConcurrency,
		RatePerSecond: d.Limits.RatePerSecond, RateBurst: d.Limits.RateBurst, MaxBodyBytes: d.Limits.MaxBodyBytes})
	if l == "" {
		l = "public, no concurrency or rate limit, the gateway's body limit"
	} else if !d.Limits.Private {
		l = "public, " + l
	}
	row("Limits", "%s", l)
	row("Async retries", "%d", d.AsyncRetries)
	row("Scaling", "%s", scalingText(d.Scaling))
	if d.SLA.DeadlineMs > 0 {
		row("SLA", "%g%% of calls within %s", d.SLA.Target*100, time.Duration(d.SLA.DeadlineMs)*time.Millisecond)
	} else {
		row("SLA", "none (set one with kiln deploy … --deadline 50ms --target 99.9)")
	}
	row("Versions", "%d (first deployed %s; kiln versions %s)", d.VersionCount, d.FirstDeployed.Local().Format(time.DateTime), d.Name)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.out, "Aliases:")
	tw = tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	for _, al := range d.Aliases {
		fmt.Fprintf(tw, "  %s\t→ %s\n", al.Name, routeText(al.Targets))
	}
	return tw.Flush()
}

// scalingText says in a few words how a function's instances are kept.
func scalingText(s DescribedScaling) string {
	var parts []string
	if s.Fresh {
		parts = append(parts, "fresh (a snapshot restore per call, no state kept between calls)")
	}
	parts = append(parts, fmt.Sprintf("min_warm %d", s.MinWarm))
	if s.MaxInstances > 0 {
		parts = append(parts, fmt.Sprintf("max_instances %d per node", s.MaxInstances))
	} else {
		parts = append(parts, "max_instances as memory allows")
	}
	if s.KeepAliveMs > 0 {
		parts = append(parts, "keep_alive "+(time.Duration(s.KeepAliveMs)*time.Millisecond).String())
	} else {
		parts = append(parts, "keep_alive the agent's default")
	}
	return strings.Join(parts, ", ")
}

// secretKey matches environment keys whose values are likely credentials;
// a false positive only hides a harmless value.
var secretKey = regexp.MustCompile(`(?i)secret|token|passw|pwd|key|credential|auth|private|cookie|session|signature|salt|dsn`)

// masked stands for a hidden value.
const masked = "********"

// maskEnv hides the values of secret-looking keys and the password of any
// URL with credentials (DATABASE_URL=postgres://u:p@h/db), since describe's
// output ends up in terminals, tickets and CI logs.
func maskEnv(env []string) []string {
	if env == nil {
		return nil
	}
	out := make([]string, len(env))
	for i, e := range env {
		k, v, _ := strings.Cut(e, "=")
		switch {
		case v != "" && secretKey.MatchString(k):
			v = masked
		default:
			if u, err := url.Parse(v); err == nil && u.User != nil {
				if _, hasPass := u.User.Password(); hasPass {
					u.User = url.UserPassword(u.User.Username(), "xxxxx")
					v = strings.Replace(u.String(), "xxxxx", masked, 1)
				}
			}
		}
		out[i] = k + "=" + v
	}
	return out
}
