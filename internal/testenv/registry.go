package testenv

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"golang.org/x/crypto/bcrypt"
)

// RegistryOptions configures StartRegistry.
type RegistryOptions struct {
	// NotifyURL, when set, receives the registry's webhook notifications
	// (push and pull events). Retries are fast so tests stay quick.
	NotifyURL string
	// NotifyIgnoredActions lists event actions ("pull", "push", "delete")
	// the registry should not send, e.g. to see only pushes.
	NotifyIgnoredActions []string
	// User and Password, when set, are the one account the registry
	// accepts (htpasswd); anonymous requests get 401.
	User, Password string
}

// Registry is a running distribution registry (plain HTTP, no auth unless
// asked for) with filesystem storage and deletes enabled.
type Registry struct {
	Addr string // "127.0.0.1:port"; image references are Addr + "/repo:tag"
	Dir  string // storage root, kept across Stop and Start

	user, password string
	proc           *process
}

var registryConfig = template.Must(template.New("config").Parse(`version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {{.Dir}}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {{.Addr}}
  secret: skiff-testenv
{{- if .HTPasswd}}
auth:
  htpasswd:
    realm: skiff-testenv
    path: {{.HTPasswd}}
{{- end}}
{{- if .NotifyURL}}
notifications:
  events:
    includereferences: true
  endpoints:
    - name: skiff
      url: {{.NotifyURL}}
      timeout: 2s
      threshold: 3
      backoff: 200ms
{{- if .NotifyIgnoredActions}}
      ignore:
        actions:
{{- range .NotifyIgnoredActions}}
          - {{.}}
{{- end}}
{{- end}}
{{- end}}
`))

// StartRegistry starts a registry with an empty storage directory and stops
// it when the test ends.
func StartRegistry(t testing.TB, opts RegistryOptions) Registry {
	t.Helper()
	path := Tool(t, "registry")
	base := t.TempDir()
	r := Registry{Dir: filepath.Join(base, "storage"), user: opts.User, password: opts.Password}
	var htpasswd string
	if opts.User != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatalf("testenv: registry password: %v", err)
		}
		htpasswd = filepath.Join(base, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opts.User+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatalf("testenv: write htpasswd: %v", err)
		}
	}
	r.proc = launch(t, 1, func(ports []int) *process {
		r.Addr = hostPort(ports[0])
		config := filepath.Join(base, "config.yml")
		var b strings.Builder
		err := registryConfig.Execute(&b, struct {
			RegistryOptions
			Dir, Addr, HTPasswd string
		}{opts, r.Dir, r.Addr, htpasswd})
		if err != nil {
			t.Fatalf("testenv: registry config: %v", err)
		}
		if err := os.WriteFile(config, []byte(b.String()), 0o644); err != nil {
			t.Fatalf("testenv: write registry config: %v", err)
		}
		// OTEL_TRACES_EXPORTER=none: distribution v3 otherwise tries to
		// export traces to a collector that is not there.
		p := newProcess(t, "registry", path, []string{"serve", config}, []string{"OTEL_TRACES_EXPORTER=none"})
		// With an account, /v2/ answers 401 to the anonymous probe.
		p.ready = httpReady("http://"+r.Addr+"/v2/", http.StatusOK, http.StatusUnauthorized)
		return p
	})
	return r
}

// Login gives this test process the registry's account, as a Docker
// config in DOCKER_CONFIG, which go-containerregistry's default keychain
// reads. Child processes inherit it unless told otherwise.
func (r Registry) Login(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(r.user + ":" + r.password))
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{r.Addr: map[string]string{"auth": auth}}})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

// Stop shuts the registry down, keeping its port and storage. Call it from
// the test goroutine.
func (r Registry) Stop() { r.proc.stop() }

// Start brings a stopped registry back on the same port and storage and
// waits until /v2/ answers. Call it from the test goroutine.
func (r Registry) Start() {
	r.proc.t.Helper()
	r.proc.start()
}
