package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestAPIKeySettings: the API is off without keys; keys come from
// --api-key, its env twin and a key file (comments and blanks skipped);
// short keys and a bad rate are refused.
func TestAPIKeySettings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "keys")
	if err := os.WriteFile(file, []byte("# rotated 2026-12\nfile-key-0123456789\n\n  second-key-0123456789  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nothing\n"), 0o600)
	cases := []struct {
		name    string
		args    []string
		env     map[string]string
		want    []string
		wantErr string
	}{
		{"off", nil, nil, nil, ""},
		{"flag", []string{"--api-key", "flag-key-0123456789"}, nil, []string{"flag-key-0123456789"}, ""},
		{"env", nil, map[string]string{"PARLEY_API_KEY": "env-key-0123456789"}, []string{"env-key-0123456789"}, ""},
		{"file", []string{"--api-key-file", file}, nil, []string{"file-key-0123456789", "second-key-0123456789"}, ""},
		{"short", []string{"--api-key", "short"}, nil, nil, "at least 16"},
		{"empty file", []string{"--api-key-file", empty}, nil, nil, "holds no key"},
		{"missing file", []string{"--api-key-file", filepath.Join(dir, "nope")}, nil, nil, "--api-key-file"},
		{"bad rate", []string{"--api-rate", "0"}, nil, nil, "--api-rate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			o, err := parse(tc.args, func(k string) string { return tc.env[k] }, &out)
			if err != nil {
				t.Fatal(err)
			}
			err = apiConfig(o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(o.cfg.APIKeys, tc.want) {
				t.Fatalf("keys %q, err %v; want %q", o.cfg.APIKeys, err, tc.want)
			}
		})
	}
}
