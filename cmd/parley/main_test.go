package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"parley/relay"
	"parley/relay/redistest"
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
		{"limits", []string{"--message-rate", "5", "--max-rooms", "10"}, map[string]string{
			"PARLEY_RATE_LIMIT_STRIKES": "3", "PARLEY_MAX_PUBLISH_QUEUE": "7", "PARLEY_MAX_PUBLISH_QUEUE_BYTES": "4096",
			"PARLEY_ROOM_CREATE_RATE": "2.5", "PARLEY_MESSAGE_BURST": "9"}, func(o *options) error {
			l := o.cfg.Limits
			if l.MessageRate != 5 || l.MaxRooms != 10 || l.RateLimitStrikes != 3 || l.MaxPublishQueue != 7 ||
				l.MaxPublishQueueBytes != 4096 || l.RoomCreateRate != 2.5 || l.MessageBurst != 9 {
				return fmt.Errorf("limits not applied: %+v", l)
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

// TestFlagErrorsAreOneLine: a mistake on the command line is one line that
// names it and points at --help, not a usage dump.
func TestFlagErrorsAreOneLine(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--nope"}, nil, "-nope"},
		{[]string{"--ping-interval", "soon"}, nil, "ping-interval"},
		{[]string{"extra"}, nil, `"extra"`},
		{nil, map[string]string{"PARLEY_MAX_MESSAGE_SIZE": "big"}, "PARLEY_MAX_MESSAGE_SIZE"},
	}
	for _, tc := range cases {
		var out bytes.Buffer
		_, err := parse(tc.args, func(k string) string { return tc.env[k] }, &out)
		if err == nil {
			t.Fatalf("%v: no error", tc.args)
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) || !strings.HasSuffix(msg, "see parley --help") {
			t.Errorf("%v: error %q: want one line naming %s and ending in see parley --help", tc.args, msg, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%v: printed %d bytes of usage besides the error", tc.args, out.Len())
		}
	}
}

// TestVersion: --version prints one line and ends run without starting.
func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run([]string{"--version"}, &out, &errOut); !errors.Is(err, errVersion) {
		t.Fatalf("--version: %v", err)
	}
	if s := out.String(); !strings.HasPrefix(s, "parley ") || strings.Count(s, "\n") != 1 {
		t.Fatalf("--version printed %q", s)
	}
}

// TestHelpNodeIDDefault: --help tells the real default of --node-id.
func TestHelpNodeIDDefault(t *testing.T) {
	var out bytes.Buffer
	if _, err := parse([]string{"--help"}, func(string) string { return "" }, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "<host>-<pid>") || strings.Contains(out.String(), "n-xxxxxx") {
		t.Fatalf("--help on --node-id:\n%s", out.String())
	}
}

// TestBusStateAtStart: the first lines of the log say whether Redis
// answers, and why not: refused, or a db number Redis does not have.
func TestBusStateAtStart(t *testing.T) {
	srv := redistest.Start(t)
	dead := "redis://" + freeAddr(t) + "/0"
	cases := []struct {
		name, url, level, want string
	}{
		{"up", srv.URL(), "INFO", "bus: redis up"},
		{"refused", dead, "ERROR", "connection refused"},
		{"no such db", "redis://" + srv.Addr() + "/99", "ERROR", "DB index is out of range"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			b, err := relay.NewRedis(relay.RedisConfig{URL: tc.url, NodeID: "bus-test"})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			logBusState(log, b, tc.url, "", "")
			s := buf.String()
			if !strings.Contains(s, "level="+tc.level) || !strings.Contains(s, tc.want) {
				t.Fatalf("log %q: want level %s and %q", s, tc.level, tc.want)
			}
		})
	}
}

// freeAddr returns a 127.0.0.1 address nothing listens on.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
