package node

import (
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strings"
)

//go:embed web
var webFS embed.FS

// publicMux routes the public listener: WebSocket upgrades at / (plain seed
// mode) and /ws (protocol v1), the chat page at / for plain GETs, and the
// health endpoints.
func (n *Node) publicMux() http.Handler {
	static, _ := fs.Sub(webFS, "web")
	files := http.FileServer(http.FS(noDirs{static}))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		if !isUpgrade(r) {
			n.probeUpgrade(w, r)
			return
		}
		n.upgrade(w, r, false)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if isUpgrade(r) {
			n.upgrade(w, r, true)
			return
		}
		files.ServeHTTP(w, r)
	})
	mux.Handle("GET /static/", files)
	n.mountAPI(mux) // the server API, when keys are set (api.go)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ok, why := n.ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		if !n.broker.Stats().Up {
			// Still ready (see ready); the body says what is wrong.
			w.Write([]byte("ready; bus down: sends fail with \"unavailable\" until it returns\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return n.limitHTTP(securityHeaders(mux))
}

// pageCSP is the Content-Security-Policy of every public response: scripts,
// styles and sockets from this node only, and no page may frame ours
// (clickjacking).
const pageCSP = "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; " +
	"frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"

// securityHeaders sets the headers every public response carries.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", pageCSP)
		hd.Set("X-Frame-Options", "DENY") // frame-ancestors for older browsers
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

// limitHTTP caps request bodies (MaxBodyBytes): a handler reading more gets
// an error and the client 413.
func (n *Node) limitHTTP(h http.Handler) http.Handler {
	return http.MaxBytesHandler(h, n.cfg.MaxBodyBytes)
}

// noDirs is the page's file system without directory listings: a
// directory without an index.html is "not found".
type noDirs struct{ fs.FS }

func (d noDirs) Open(name string) (fs.File, error) {
	f, err := d.FS.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && !st.IsDir() {
		return f, nil
	}
	if err == nil {
		if _, err = fs.Stat(d.FS, path.Join(name, "index.html")); err == nil {
			return f, nil
		}
	}
	f.Close()
	return nil, fs.ErrNotExist
}

// ready reports whether the node should get new connections: not while it
// drains. A node whose bus is down stays ready (see ARCHITECTURE.md): its
// clients keep their connections and presence, sends fail loudly with
// "unavailable", and the bus is a shared dependency that every node loses
// at once, so taking them all out of rotation would help no one.
func (n *Node) ready() (bool, string) {
	if n.unready.Load() {
		return false, "draining"
	}
	return true, ""
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// adminMux routes the admin listener: pprof, /debug/stats and /metrics.
func (n *Node) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("GET /metrics", n.metrics.handler())
	mux.HandleFunc("GET /debug/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(n.Stats())
	})
	return n.limitHTTP(mux)
}

// cmdline replaces pprof.Cmdline: the command line with secrets redacted
// (passwords in URLs, the values of flags whose name says secret, password,
// key or token).
func cmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, strings.Join(RedactArgs(os.Args), "\x00"))
}

// RedactArgs returns args with every secret replaced by "xxxxx": the
// password of any URL (redis://:pw@host), and the value of any flag whose
// name holds "secret", "password", "passwd", "key" or "token"
// (--auth-secret=…, --redis-password …).
func RedactArgs(args []string) []string {
	out := make([]string, len(args))
	redactNext := false
	for i, a := range args {
		switch {
		case redactNext:
			a, redactNext = "xxxxx", false
		case strings.HasPrefix(a, "-"):
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if secretFlag(name) {
				if hasValue {
					a = a[:strings.IndexByte(a, '=')+1] + "xxxxx"
				} else {
					redactNext = true
				}
			}
		}
		out[i] = redactURLs(a)
	}
	return out
}

func secretFlag(name string) bool {
	name = strings.ToLower(name)
	for _, w := range []string{"secret", "password", "passwd", "key", "token"} {
		if strings.Contains(name, w) && !strings.HasSuffix(name, "-file") {
			return true
		}
	}
	return false
}

// redactURLs hides the password of every URL in s (a flag value may hold
// several, comma-separated).
func redactURLs(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		pre, v, ok := strings.Cut(p, "=") // --redis=redis://…
		if !ok || strings.Contains(pre, "://") {
			pre, v = "", p
		} else {
			pre += "="
		}
		if u, err := url.Parse(v); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
			parts[i] = pre + u.String()
		} else if at := strings.LastIndexByte(v, '@'); at >= 0 && strings.Contains(v[:at], ":") {
			// Not a URL we can parse (master@host:port is no secret, but
			// user:pw@host is): hide everything before the @.
			parts[i] = pre + "xxxxx" + v[at:]
		}
	}
	return strings.Join(parts, ",")
}

// checkAdminAddr refuses an admin address reachable from other machines
// unless allowRemote: pprof and stats reveal memory contents and load.
func checkAdminAddr(addr string, allowRemote bool) error {
	if addr == "-" || allowRemote {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("node: admin address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() {
		return nil
	}
	return fmt.Errorf("node: admin address %q is not loopback: pprof and stats are for operators; "+
		"bind 127.0.0.1, or pass --admin-allow-remote behind a firewall", addr)
}
