package node

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/google/pprof/profile"
)

// quietClient is a joined WebSocket client without a reader goroutine: it
// reads until its joined frame, then only holds its socket. A thousand of
// them cost the test little.
func quietClient(t testing.TB, n *Node, room string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	rw := struct {
		io.Reader
		io.Writer
	}{bufio.NewReader(r), conn}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wsutil.WriteClientText(conn, []byte(`{"type":"join","room":"`+room+`"}`)); err != nil {
		t.Fatalf("join: %v", err)
	}
	for {
		b, err := wsutil.ReadServerText(rw)
		if err != nil {
			t.Fatalf("waiting for joined: %v", err)
		}
		if strings.Contains(string(b), `"type":"joined"`) {
			break
		}
	}
	conn.SetDeadline(time.Time{})
	return conn
}

// TestHeapProfileOfJoinedConnections checks the memory-profiling workflow
// of the README: a node holding 1,000 joined connections serves a heap
// profile on its admin listener, and the profile parses and shows the
// node's own allocations.
func TestHeapProfileOfJoinedConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections")
	}
	const conns = 1000
	n := startNode(t, Config{MaxConnsPerAddr: -1, PingInterval: time.Hour})
	for i := range conns {
		quietClient(t, n, fmt.Sprintf("room-%d", i%10))
	}
	st := n.Stats()
	if st.Sessions != conns || st.Members != conns {
		t.Fatalf("node holds %d sessions, %d memberships; want %d", st.Sessions, st.Members, conns)
	}
	cl := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Get("http://" + n.AdminAddr() + "/debug/pprof/heap?gc=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("heap profile: %s", resp.Status)
	}
	p, err := profile.Parse(resp.Body)
	if err != nil {
		t.Fatalf("parse the heap profile: %v", err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatalf("invalid profile: %v", err)
	}
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == "inuse_space" {
			idx = i
		}
	}
	if idx < 0 {
		t.Fatalf("no inuse_space in sample types %v", p.SampleType)
	}
	var total, ours int64
	for _, s := range p.Sample {
		total += s.Value[idx]
		for _, loc := range s.Location {
			if hasFunc(loc, "parley/") {
				ours += s.Value[idx]
				break
			}
		}
	}
	if total <= 0 || ours <= 0 {
		t.Fatalf("heap profile: %d bytes in use, %d from parley's code; want both > 0", total, ours)
	}
	t.Logf("heap profile of %d joined connections: %d samples, %d KiB in use (sampled), %d KiB under parley's code",
		conns, len(p.Sample), total>>10, ours>>10)
}

func hasFunc(loc *profile.Location, prefix string) bool {
	for _, l := range loc.Line {
		if l.Function != nil && strings.HasPrefix(l.Function.Name, prefix) {
			return true
		}
	}
	return false
}
