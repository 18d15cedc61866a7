package main

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// checkLoopbackHost reports an error unless host (a host name or IP, without
// port) is localhost or a loopback address (127.0.0.0/8 or ::1). The load
// generator never sends traffic anywhere else.
func checkLoopbackHost(host string) error {
	h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(h, "localhost") {
		return nil
	}
	ip := net.ParseIP(h)
	if ip == nil {
		return fmt.Errorf("target %q is not localhost or a loopback IP: parley-bench only targets 127.0.0.0/8, ::1 or localhost", host)
	}
	if !ip.IsLoopback() {
		return fmt.Errorf("target %q is not a loopback address: parley-bench only targets 127.0.0.0/8, ::1 or localhost", host)
	}
	return nil
}

// checkLoopbackURL validates a ws:// URL whose host is a loopback target.
func checkLoopbackURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parse url %q: %w", raw, err)
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("url %q: scheme must be ws://", raw)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("url %q: missing host", raw)
	}
	if err := checkLoopbackHost(u.Hostname()); err != nil {
		return nil, fmt.Errorf("url %q: %w", raw, err)
	}
	return u, nil
}

// checkLoopbackAddr validates a host:port address (the admin listener).
func checkLoopbackAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if err := checkLoopbackHost(host); err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	return nil
}
