// Package observability tests Kiln's monitoring as an operator meets it: a
// real Prometheus (Debian's prometheus package) scrapes a running `kiln up`
// under load and evaluates deploy/prometheus's rules, and every panel of
// the Grafana dashboards in deploy/grafana must parse and return data
// there. It holds no code of its own; docs/METRICS.md describes what is
// tested.
package observability
