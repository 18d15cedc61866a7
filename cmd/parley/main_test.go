package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsAndEnv(t *testing.T) {
	cases := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(o *options) error
		err   string
	}{
		{"defaults", nil, nil, func(o *options) error {
			if o.cfg.Listen != ":8080" || o.cfg.Admin != "127.0.0.1:6060" || o.cfg.MaxMessageSize != 64<<10 ||
				o.cfg.MaxQueueBytes != 1<<20 || o.cfg.MaxQueueFrames != 1024 || o.cfg.HandshakeTimeout != 10*time.Second {
				return errors.New("wrong defaults")
			}
			return nil
		}, ""},
		{"env twin", nil, map[string]string{"PARLEY_LISTEN": ":9000", "PARLEY_MAX_MESSAGE_SIZE": "1000", "PARLEY_REDIS": "redis://x:1/0"}, func(o *options) error {
			if o.cfg.Listen != ":9000" || o.cfg.MaxMessageSize != 1000 || o.redisURL != "redis://x:1/0" {
				return errors.New("env not applied")
			}
			return nil
		}, ""},
		{"flag wins over env", []string{"--listen", ":7000"}, map[string]string{"PARLEY_LISTEN": ":9000"}, func(o *options) error {
			if o.cfg.Listen != ":7000" {
				return errors.New("env overrode the flag")
			}
			return nil
		}, ""},
		{"bad env value", nil, map[string]string{"PARLEY_PING_INTERVAL": "soon"}, nil, "PARLEY_PING_INTERVAL"},
		{"bad flag", []string{"--nope"}, nil, nil, "not defined"},
		{"stray argument", []string{"extra"}, nil, nil, "unexpected argument"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			o, err := parse(tc.args, func(k string) string { return tc.env[k] }, &out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(o); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHelpDocumentsEveryFlag: --help lists each flag with its env twin.
func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	_, err := parse([]string{"--help"}, func(string) string { return "" }, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	register(fs, &options{})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "--"+f.Name+" (env "+envName(f.Name)+",") {
			t.Errorf("--help lacks %s", f.Name)
		}
		if f.Usage == "" {
			t.Errorf("flag %s has no doc", f.Name)
		}
	})
}

func TestDefaultNodeID(t *testing.T) {
	cases := map[string]string{"web-1.example.com": "web-1examplecom-42", "": "node-42", "ü": "node-42"}
	for host, want := range cases {
		if got := defaultNodeID(host, 42); got != want {
			t.Errorf("defaultNodeID(%q) = %q, want %q", host, got, want)
		}
	}
}
