package redistest

import (
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a Redis Cluster of masters without replicas, each a Server
// started with --cluster-enabled yes.
type Cluster struct {
	Servers []*Server
}

// StartCluster starts masters redis-server processes (at least 3), joins
// them with redis-cli --cluster create (slots spread evenly, no replicas)
// and waits until every node reports cluster_state:ok.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("redistest: a Redis Cluster needs at least 3 masters, got %d", masters)
	}
	lookPath(t, "redis-server")
	lookPath(t, "redis-cli")
	c := &Cluster{}
	used := map[int]bool{}
	for i := 0; i < masters; i++ {
		var port int
		for {
			port = freePort(t, true)
			if !used[port] && !used[port+10000] && !used[port-10000] {
				break
			}
		}
		used[port] = true
		s := &Server{port: port, dir: t.TempDir()}
		s.args = []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
		}
		s.start(t)
		t.Cleanup(s.Kill)
		c.Servers = append(c.Servers, s)
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.waitOK(StartTimeout); err != nil {
		t.Fatalf("redistest: cluster not ready: %v", err)
	}
	return c
}

// Addrs returns host:port of every node.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		out[i] = s.Addr()
	}
	return out
}

// KeySlot returns the cluster slot of key, as CLUSTER KEYSLOT computes it.
func (c *Cluster) KeySlot(t testing.TB, key string) int {
	t.Helper()
	out := c.Servers[0].Do(t, "CLUSTER", "KEYSLOT", key)
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("redistest: CLUSTER KEYSLOT %q: %q", key, out)
	}
	return n
}

// waitOK polls every node until all report cluster_state:ok and agree on
// the slot layout (each node knows all masters).
func (c *Cluster) waitOK(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = c.checkOK()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
	return last
}

func (c *Cluster) checkOK() error {
	for _, s := range c.Servers {
		info, err := Do(s.Addr(), "CLUSTER", "INFO")
		if err != nil {
			return fmt.Errorf("%s: %w", s.Addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster_state not ok", s.Addr())
		}
		if !strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(c.Servers))) {
			return errors.New(s.Addr() + ": not every node known yet")
		}
		if !strings.Contains(info, "cluster_slots_assigned:16384") {
			return errors.New(s.Addr() + ": slots not all assigned")
		}
	}
	return nil
}
