package deployments

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/prometheus/common/expfmt"

	"parley/node"
)

// grafanaNode starts an in-process node on loopback for the metrics tests.
func grafanaNode(t *testing.T, id string) *node.Node {
	t.Helper()
	n, err := node.New(node.Config{Listen: "127.0.0.1:0", Admin: "127.0.0.1:0", NodeID: id,
		ShutdownGrace: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return n
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

var metricName = regexp.MustCompile(`\b((?:parley|process|go)_[a-z_]+)\b`)

// TestDashboardQueriesExistingMetrics: every metric the Grafana dashboard
// queries is one a node exports (scraped from a real node after a session
// that makes every labelled family appear), and is listed in
// docs/OPERATIONS.md.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile("grafana/parley-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	ops, err := os.ReadFile("../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	n := grafanaNode(t, "g1")
	// A refused frame and a closed connection, so their families exist.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	rw := struct {
		io.Reader
		io.Writer
	}{r, conn}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wsutil.WriteClientText(conn, []byte(`{"type":"send","room":"bad room","text":"x"}`)); err != nil {
		t.Fatal(err)
	}
	for {
		b, err := wsutil.ReadServerText(rw)
		if err != nil {
			t.Fatalf("waiting for the error frame: %v", err)
		}
		if strings.Contains(string(b), `"bad_room"`) {
			break
		}
	}
	_ = wsutil.WriteClientMessage(conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	io.Copy(io.Discard, r) // until the node's close answer and EOF
	conn.Close()
	var fams map[string]bool
	deadline := time.Now().Add(10 * time.Second)
	for {
		var p expfmt.TextParser
		mf, err := p.TextToMetricFamilies(strings.NewReader(httpBody(t, "http://"+n.AdminAddr()+"/metrics")))
		if err != nil {
			t.Fatal(err)
		}
		fams = map[string]bool{}
		for name, f := range mf {
			if len(f.Metric) > 0 {
				fams[name] = true
			}
		}
		if fams["parley_connections_closed_total"] && fams["parley_frames_refused_total"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	queried := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				queried++
				base := strings.TrimSuffix(m, "_bucket")
				if !fams[base] {
					t.Errorf("panel %q queries %s: the node exports no %s", p.Title, m, base)
				}
				if strings.HasPrefix(base, "parley_") && !strings.Contains(string(ops), "`"+base+"`") {
					t.Errorf("panel %q queries %s, which docs/OPERATIONS.md does not list", p.Title, base)
				}
			}
		}
	}
	if queried < 10 {
		t.Fatalf("only %d metric references in the dashboard", queried)
	}
}

// TestPrometheusScrapesTheCluster renders the local cluster's Prometheus
// config for two real nodes, checks it with promtool, runs Prometheus on it
// and waits until both nodes' metrics are in, labelled with their names.
func TestPrometheusScrapesTheCluster(t *testing.T) {
	promtool, prom := need(t, "promtool"), need(t, "prometheus")
	dir := t.TempDir()
	for _, id := range []string{"n1", "n2"} {
		n := grafanaNode(t, id)
		if err := os.WriteFile(filepath.Join(dir, id+".admin"), []byte(n.AdminAddr()+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := exec.Command("sh", "grafana/render-prometheus.sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("render-prometheus.sh: %v\n%s", err, b)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if b, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, b)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	web := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web)
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	query := func() (map[string]bool, error) {
		cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := cl.Get("http://" + web + "/api/v1/query?query=parley_node_info")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, err
		}
		got := map[string]bool{}
		for _, s := range r.Data.Result {
			got[s.Metric["node"]] = s.Metric["job"] == "parley"
		}
		return got, nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := query()
		if err == nil && got["n1"] && got["n2"] {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Fatalf("Prometheus has not scraped both nodes within 60s: %v %v\n%s", got, err, tail(string(b), 2000))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
