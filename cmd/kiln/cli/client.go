package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrUnreachable: the gateway did not answer at all.
var ErrUnreachable = errors.New("cannot reach the Kiln gateway")

// apiError mirrors the gateway's JSON error body.
type apiError struct {
	Error        string `json:"error"`
	Function     string `json:"function,omitempty"`
	InvocationID string `json:"invocation_id,omitempty"`
}

// do sends one request to the gateway. A transport failure becomes
// ErrUnreachable with what to do about it; any HTTP answer is returned.
func (a *app) do(ctx context.Context, method, path string, q url.Values, hdr http.Header, body io.Reader, size int64) (*http.Response, error) {
	u := a.serverURL() + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("bad server URL %q: %w", a.serverURL(), err)
	}
	if size >= 0 && body != nil {
		req.ContentLength = size
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	key, err := a.apiKeyValue()
	if err != nil {
		return nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, a.unreachable(err)
	}
	return resp, nil
}

// unreachable says which gateway was tried, where that URL came from, and
// the three ways to name another.
func (a *app) unreachable(err error) error {
	hint := ""
	var op *net.OpError
	if errors.As(err, &op) {
		hint = " is `kiln up` running?"
	}
	return fmt.Errorf("%w at %s:%s (URL %s; %v) Name another gateway with --server URL, $KILN_SERVER or `server: URL` in %s",
		ErrUnreachable, a.serverURL(), hint, a.serverSource(), err, configPathText())
}

// failure turns a non-2xx answer into an error carrying the gateway's
// sentence (or, for a body that is not the JSON error, the raw body).
func failure(resp *http.Response, body []byte) error {
	var e apiError
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		// The gateway's own 404s already point somewhere; a bare one
		// (an old gateway, a proxy in between) gets the pointer here.
		if !strings.Contains(msg, "kiln ") {
			msg += ": see `kiln list` for what is deployed"
		}
	case http.StatusUnauthorized:
		sent := "no key was sent"
		if resp.Request != nil && resp.Request.Header.Get("Authorization") != "" {
			sent = "the key sent was refused"
		}
		msg += fmt.Sprintf(" (%s; this CLI sends the key from --api-key, else $KILN_API_KEY, else `api_key:` in %s)", sent, configPathText())
	}
	return fmt.Errorf("%s: %s", resp.Status, msg)
}

// serverSource says where serverURL came from, for error messages.
func (a *app) serverSource() string {
	switch {
	case a.server != "":
		return "from --server"
	case os.Getenv("KILN_SERVER") != "":
		return "from $KILN_SERVER"
	}
	if cfg, _ := a.config(); cfg.Server != "" {
		return "from `server:` in " + configPathText()
	}
	return "by default: no --server, $KILN_SERVER or config file `server:`"
}

// configPathText is the config file's path for messages.
func configPathText() string {
	if p := configPath(); p != "" {
		return p
	}
	return "the config file ($KILN_CONFIG)"
}

func (a *app) getJSON(ctx context.Context, path string, v any) error {
	resp, err := a.do(ctx, "GET", path, nil, nil, nil, -1)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return failure(resp, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("the gateway at %s answered %s with something that is not the expected JSON: %w", a.serverURL(), path, err)
	}
	return nil
}

// clientConfig is the CLI's config file: where the gateway is and the API
// key to send, for those who would rather not repeat --server/--api-key.
type clientConfig struct {
	Server string `yaml:"server,omitempty"`
	APIKey string `yaml:"api_key,omitempty"`
}

// configPath is $KILN_CONFIG, else ~/.config/kiln/config.yaml (the user
// config directory of the OS; $XDG_CONFIG_HOME on Linux).
func configPath() string {
	if p := os.Getenv("KILN_CONFIG"); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "kiln", "config.yaml")
}

// config reads the config file once; a missing file is an empty config, a
// malformed one an error that names it.
func (a *app) config() (clientConfig, error) {
	a.cfgOnce.Do(func() {
		path := configPath()
		if path == "" {
			return
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err == nil {
			err = yaml.Unmarshal(b, &a.cfg)
		}
		if err != nil {
			a.cfgErr = fmt.Errorf("config file %s: %w (fix it, or point $KILN_CONFIG elsewhere)", path, err)
		}
	})
	return a.cfg, a.cfgErr
}

// apiKeyValue is --api-key, else $KILN_API_KEY, else the config file's api_key.
func (a *app) apiKeyValue() (string, error) {
	if a.apiKey != "" {
		return a.apiKey, nil
	}
	if k := os.Getenv("KILN_API_KEY"); k != "" {
		return k, nil
	}
	cfg, err := a.config()
	return cfg.APIKey, err
}

// saveAPIKey writes key into the config file (keeping its server), readable
// by the user alone.
func saveAPIKey(key string) (string, error) {
	path := configPath()
	if path == "" {
		return "", errors.New("no config directory: set $KILN_CONFIG")
	}
	var cfg clientConfig
	if b, err := os.ReadFile(path); err == nil {
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			return path, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	cfg.APIKey = key
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return path, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return path, err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return path, err
	}
	return path, os.Chmod(path, 0o600) // an existing file keeps its mode on WriteFile
}
