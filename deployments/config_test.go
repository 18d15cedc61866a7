package deployments

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// need returns the path of tool or fails the test saying how to install it.
func need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is not installed: make test-deps installs it (Debian package %s)", tool, debPackage(tool))
	}
	return p
}

func debPackage(tool string) string {
	switch tool {
	case "chromium":
		return "chromium"
	case "redis-server":
		return "redis-server"
	case "promtool":
		return "prometheus"
	}
	return tool
}

// renderHAProxy renders the shipped config with servers (name=addr) into
// dir, as both runners do, and returns its path.
func renderHAProxy(t testing.TB, dir string, servers ...string) string {
	t.Helper()
	out := filepath.Join(dir, "haproxy.cfg")
	args := append([]string{"haproxy/render.sh", out}, servers...)
	if b, err := exec.Command("sh", args...).CombinedOutput(); err != nil {
		t.Fatalf("render.sh: %v\n%s", err, b)
	}
	return out
}

// haproxyEnv is the environment the shipped config expects.
func haproxyEnv(bind, stats, sock string) []string {
	return append(os.Environ(), "PARLEY_HAPROXY_BIND="+bind, "PARLEY_HAPROXY_STATS="+stats, "PARLEY_HAPROXY_SOCKET="+sock)
}

// TestHAProxyConfigChecks: HAProxy itself accepts the shipped config, with
// the server lines a runner appends, and rejects a broken one (so the check
// can fail).
func TestHAProxyConfigChecks(t *testing.T) {
	t.Parallel()
	need(t, "haproxy")
	dir := t.TempDir()
	cfg := renderHAProxy(t, dir, "n1=127.0.0.1:1", "n2=127.0.0.1:2", "n3=127.0.0.1:3", "n4=127.0.0.1:4")
	cmd := exec.Command("haproxy", "-c", "-f", cfg)
	cmd.Env = haproxyEnv("127.0.0.1:1", "127.0.0.1:2", filepath.Join(dir, "s.sock"))
	if b, err := cmd.CombinedOutput(); err != nil || !bytes.Contains(b, []byte("valid")) {
		t.Fatalf("haproxy -c: %v\n%s", err, b)
	}
	if b, _ := os.ReadFile(cfg); bytes.Count(b, []byte("\n    server n")) != 4 {
		t.Fatalf("rendered config lacks its 4 server lines:\n%s", b)
	}
	bad := filepath.Join(dir, "bad.cfg")
	b, _ := os.ReadFile(cfg)
	os.WriteFile(bad, append(b, "    server n5 127.0.0.1:5 no-such-keyword\n"...), 0o644)
	cmd = exec.Command("haproxy", "-c", "-f", bad)
	cmd.Env = haproxyEnv("127.0.0.1:1", "127.0.0.1:2", filepath.Join(dir, "s.sock"))
	if err := cmd.Run(); err == nil {
		t.Fatal("haproxy -c accepted an unknown server keyword: the check proves nothing")
	}
}

// TestHAProxyConfigChoices: the settings the drain and the WebSockets
// depend on are in the shipped config (each is explained there).
func TestHAProxyConfigChoices(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("haproxy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	for _, want := range []string{
		"balance leastconn",
		"timeout tunnel 1h",
		"http-check send meth GET uri /readyz",
		"http-check expect status 200",
		"default-server check inter 1s fastinter 500ms downinter 2s fall 2 rise 2 slowstart 20s maxconn 2000",
		"stats socket \"${PARLEY_HAPROXY_SOCKET}\"",
		"level admin",
		"stats enable",
		"retry-on conn-failure empty-response 503",
		"send-proxy-v2 check-send-proxy",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q", want)
		}
	}
	// The drain delay must outlast the check window: inter + (fall-1) x fastinter.
	env := readNodeEnv(t)
	if env["PARLEY_DRAIN_DELAY"] != "3s" {
		t.Errorf("node.env PARLEY_DRAIN_DELAY = %q; the 1.5s check window needs a longer delay, documented as 3s", env["PARLEY_DRAIN_DELAY"])
	}
	// The last section is backend parley: the runners append servers to it.
	sections := regexp.MustCompile(`(?m)^(global|defaults|frontend|backend|listen)\b.*$`).FindAllString(cfg, -1)
	if last := sections[len(sections)-1]; last != "backend parley" {
		t.Errorf("last section is %q, want backend parley (render.sh appends server lines)", last)
	}
}

// readNodeEnv parses deployments/node.env (KEY=VALUE lines, # comments).
func readNodeEnv(t testing.TB) map[string]string {
	t.Helper()
	b, err := os.ReadFile("node.env")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "PARLEY_") || strings.ContainsAny(v, "\"' ") {
			t.Fatalf("node.env: %q is not a plain PARLEY_KEY=VALUE line", line)
		}
		env[k] = v
	}
	return env
}

// composeFile is what the test reads of `docker-compose config`.
type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []any             `yaml:"ports"`
		Build       struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		StopGracePeriod string `yaml:"stop_grace_period"`
	} `yaml:"services"`
}

// composeConfig runs `docker-compose config` (which validates the file and
// resolves env_file and anchors) and parses what it prints.
func composeConfig(t testing.TB) composeFile {
	t.Helper()
	need(t, "docker-compose")
	cmd := exec.Command("docker-compose", "-f", "docker/docker-compose.yml", "config")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, stderr.Bytes())
	}
	var cf composeFile
	if err := yaml.Unmarshal(out, &cf); err != nil {
		t.Fatalf("parse docker-compose config output: %v", err)
	}
	return cf
}

// TestComposeConfigValid: docker-compose accepts the compose file, and
// rejects a broken one (so the check can fail).
func TestComposeConfigValid(t *testing.T) {
	t.Parallel()
	cf := composeConfig(t)
	if len(cf.Services) == 0 {
		t.Fatal("no services")
	}
	bad := filepath.Join(t.TempDir(), "bad.yml")
	os.WriteFile(bad, []byte("services:\n  node1:\n    image: x\n    ports: 12\n"), 0o644)
	if err := exec.Command("docker-compose", "-f", bad, "config", "-q").Run(); err == nil {
		t.Fatal("docker-compose config accepted a bad file: the check proves nothing")
	}
}

// localNodeFlags are the flags cluster.sh passes to each node itself (the
// rest comes from node.env).
func localNodeFlags(t testing.TB) (flags []string, defaultNodes string) {
	t.Helper()
	b, err := os.ReadFile("local/cluster.sh")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	m := regexp.MustCompile(`launch "\$name" "\$bin" ([^\n]*(?:\\\n[^\n]*)*)`).FindStringSubmatch(src)
	if m == nil {
		t.Fatal("cluster.sh: node launch line not found")
	}
	for _, f := range regexp.MustCompile(`--([a-z-]+)`).FindAllStringSubmatch(m[1], -1) {
		flags = append(flags, f[1])
	}
	d := regexp.MustCompile(`nodes=\$\{CLUSTER_NODES:-(\d+)\}`).FindStringSubmatch(src)
	if d == nil {
		t.Fatal("cluster.sh: default node count not found")
	}
	if !strings.Contains(src, `done <"$root/deployments/node.env"`) {
		t.Error("cluster.sh does not read deployments/node.env")
	}
	return flags, d[1]
}

// flagEnv is the PARLEY_* twin of a flag (as cmd/parley defines it).
func flagEnv(flag string) string {
	return "PARLEY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// TestComposeAgreesWithLocalCluster: docker-compose and make cluster run the
// same thing: as many nodes, named alike, with the same shared settings
// (node.env) and no others, per-node settings from the same short list, and
// HAProxy with the same config file, rendered by the same script, with the
// same three variables.
func TestComposeAgreesWithLocalCluster(t *testing.T) {
	t.Parallel()
	cf := composeConfig(t)
	shared := readNodeEnv(t)
	flags, defNodes := localNodeFlags(t)

	// Per-node settings: what each runner sets besides node.env.
	perNode := map[string]bool{"PARLEY_LISTEN": true, "PARLEY_ADMIN": true, "PARLEY_NODE_ID": true, "PARLEY_REDIS": true, "PARLEY_TRUSTED_PROXIES": true}
	for _, f := range flags {
		if !perNode[flagEnv(f)] {
			t.Errorf("cluster.sh passes --%s to nodes; shared settings belong in node.env, per-node ones are %v", f, slices.Sorted(maps.Keys(perNode)))
		}
	}
	var nodeIDs []string
	for name, svc := range cf.Services {
		if !strings.HasPrefix(name, "node") {
			continue
		}
		for k, v := range shared {
			if svc.Environment[k] != v {
				t.Errorf("compose %s: %s=%q, node.env says %q", name, k, svc.Environment[k], v)
			}
		}
		for k := range svc.Environment {
			if _, ok := shared[k]; !ok && !perNode[k] {
				t.Errorf("compose %s sets %s, which make cluster does not: put it in node.env", name, k)
			}
		}
		if svc.Build.Dockerfile != "deployments/docker/Dockerfile" {
			t.Errorf("compose %s builds %q", name, svc.Build.Dockerfile)
		}
		if len(svc.Ports) != 0 {
			t.Errorf("compose %s publishes ports; only HAProxy should", name)
		}
		id := svc.Environment["PARLEY_NODE_ID"]
		nodeIDs = append(nodeIDs, id+"="+name+svc.Environment["PARLEY_LISTEN"])
	}
	sort.Strings(nodeIDs)
	var want []string
	n := 0
	for _, c := range defNodes {
		n = n*10 + int(c-'0')
	}
	for i := 1; i <= n; i++ {
		want = append(want, "n"+string(rune('0'+i))+"=node"+string(rune('0'+i))+":8080")
	}
	if !slices.Equal(nodeIDs, want) {
		t.Errorf("compose nodes %v; make cluster runs %s nodes n1..n%s, so compose should run %v", nodeIDs, defNodes, defNodes, want)
	}

	hp, ok := cf.Services["haproxy"]
	if !ok {
		t.Fatal("compose has no haproxy service")
	}
	ep := hp.Entrypoint
	if len(ep) < 3 || ep[1] != "/usr/local/etc/parley/render.sh" {
		t.Fatalf("compose haproxy entrypoint %v does not render the shared config with render.sh", ep)
	}
	var servers []string
	for _, a := range ep[3:] {
		if a == "--" {
			break
		}
		servers = append(servers, a)
	}
	sort.Strings(servers)
	if !slices.Equal(servers, want) {
		t.Errorf("compose haproxy servers %v, want %v", servers, want)
	}
	mounted := false
	for _, v := range hp.Volumes {
		src, dst, _ := strings.Cut(v, ":")
		if strings.HasSuffix(src, "/deployments/haproxy") && strings.HasPrefix(dst, "/usr/local/etc/parley") {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("compose haproxy does not mount deployments/haproxy: %v", hp.Volumes)
	}
	cfg, _ := os.ReadFile("haproxy/haproxy.cfg")
	used := regexp.MustCompile(`\$\{(PARLEY_HAPROXY_[A-Z_]+)\}`).FindAllStringSubmatch(string(cfg), -1)
	script, _ := os.ReadFile("local/cluster.sh")
	for _, u := range used {
		if _, ok := hp.Environment[u[1]]; !ok {
			t.Errorf("haproxy.cfg uses %s; compose does not set it", u[1])
		}
		if !strings.Contains(string(script), "export "+u[1]+"=") && !strings.Contains(string(script), " "+u[1]+"=") {
			t.Errorf("haproxy.cfg uses %s; cluster.sh does not set it", u[1])
		}
	}
}
