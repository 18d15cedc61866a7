package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// healthcheckTimeout bounds --healthcheck's one request.
const healthcheckTimeout = 2 * time.Second

// healthcheck asks the node listening on listen (on this host) for /readyz:
// nil (exit 0) on 200, an error naming the status or the failure otherwise.
// It lets a container image without curl or wget check itself.
func healthcheck(listen string, out io.Writer) error {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--healthcheck: --listen %q: %w", listen, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	c := &http.Client{Timeout: healthcheckTimeout}
	resp, err := c.Get(url)
	if err != nil {
		return fmt.Errorf("--healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return errors.New("--healthcheck: " + url + ": " + resp.Status + ": " + strings.TrimSpace(string(body)))
	}
	fmt.Fprint(out, string(body))
	return errHealthy
}

// errHealthy ends run after a successful --healthcheck (exit 0).
var errHealthy = errors.New("healthy")
