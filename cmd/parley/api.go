package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// The server API's settings: --api-key, --api-key-file, --api-rate.

// apiOptions are the API's command-line settings.
type apiOptions struct {
	key, keyFile string
	rate         float64
}

func registerAPI(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.api.key, "api-key", "", "turns the server API on (/api/, docs/API.md): the key a backend sends as Authorization: Bearer <key>, ≥ 16 characters (prefer PARLEY_API_KEY or --api-key-file: a command line is visible to other users)")
	fs.StringVar(&o.api.keyFile, "api-key-file", "", "file of server API keys, one per line (# comments; several keys let you rotate them); turns the API on")
	fs.Float64Var(&o.api.rate, "api-rate", 200, "server API requests per second per node, burst the same; more get 429")
}

// apiConfig fills the node's API settings from o.
func apiConfig(o *options) error {
	c := &o.cfg
	c.APIRate = o.api.rate
	if o.api.rate <= 0 {
		return fmt.Errorf("--api-rate must be positive, got %v", o.api.rate)
	}
	if o.api.key != "" {
		c.APIKeys = append(c.APIKeys, strings.TrimSpace(o.api.key))
	}
	if o.api.keyFile != "" {
		keys, err := readKeyFile(o.api.keyFile)
		if err != nil {
			return fmt.Errorf("--api-key-file: %w", err)
		}
		if len(keys) == 0 {
			return fmt.Errorf("--api-key-file: %s holds no key", o.api.keyFile)
		}
		c.APIKeys = append(c.APIKeys, keys...)
	}
	for _, k := range c.APIKeys {
		if len(k) < 16 {
			return errors.New("an API key must be at least 16 characters")
		}
	}
	return nil
}

// readKeyFile reads one key per line, skipping blank lines and # comments.
func readKeyFile(name string) ([]string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		keys = append(keys, line)
	}
	return keys, sc.Err()
}
