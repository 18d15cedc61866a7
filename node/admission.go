package node

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"parley/auth"
	"parley/protocol"
)

// Admission: one function, admit, decides every WebSocket upgrade, for the
// fast path (upgradeFast) and for the net/http one (upgrade) alike. Every
// refusal is a reason, and refusals is the one table that turns a reason
// into an HTTP status and a body.

// reason is why an upgrade is refused.
type reason uint8

const (
	reasonDraining     reason = iota + 1 // the node is shutting down
	reasonNodeFull                       // MaxConns connections are open
	reasonAddrFull                       // MaxConnsPerAddr from this client address
	reasonOrigin                         // Origin not allowed
	reasonNoOrigin                       // no Origin with RequireOrigin
	reasonName                           // bad name
	reasonTokenMissing                   // auth on, plain mode without ?token=
	reasonToken                          // ?token= forged, expired or invalid
)

// refusals maps each reason to its HTTP status and the start of its body.
// 503 (not 429) for a full node: HAProxy may try another node.
var refusals = [...]struct {
	status int
	text   string
}{
	reasonDraining:     {http.StatusServiceUnavailable, "node is draining"},
	reasonNodeFull:     {http.StatusServiceUnavailable, "node is full"},
	reasonAddrFull:     {http.StatusTooManyRequests, "too many connections from your address"},
	reasonOrigin:       {http.StatusForbidden, "origin not allowed"},
	reasonNoOrigin:     {http.StatusForbidden, "an Origin header is required"},
	reasonName:         {http.StatusBadRequest, "bad name"},
	reasonTokenMissing: {http.StatusUnauthorized, "a token is required"},
	reasonToken:        {http.StatusUnauthorized, "bad token"},
}

// refusal is a refused upgrade: a reason and what exactly was wrong.
type refusal struct {
	why    reason
	detail string
}

func refuse(why reason, format string, args ...any) *refusal {
	return &refusal{why: why, detail: fmt.Sprintf(format, args...)}
}

func (r *refusal) Error() string { return r.body() }

func (r *refusal) status() int { return refusals[r.why].status }

// body is the response body: the reason's text, the detail, a newline.
func (r *refusal) body() string {
	if r.detail == "" {
		return refusals[r.why].text + "\n"
	}
	return refusals[r.why].text + ": " + r.detail + "\n"
}

// upgradeRequest is what admit looks at, gathered by either path.
type upgradeRequest struct {
	target    string // request-target: "/ws?name=alice"
	host      string // Host header
	origin    string // Origin header (first one)
	hasOrigin bool
	client    netip.Addr // the client's address (see clientAddr)
	plain     bool       // upgrade at / (seed mode)
}

// admission is an admitted upgrade. Its address slot is held until the
// connection ends (or the upgrade fails): release it exactly once.
type admission struct {
	name string
	id   *auth.Identity // from ?token= (nil: none given)
	key  netip.Addr     // per-address counter key
}

// admit decides an upgrade. On success the connection holds a slot in the
// node and per-address counts until n.release(a.key).
func (n *Node) admit(req *upgradeRequest) (_ admission, ref *refusal) {
	defer func() { n.countRefusal(ref) }() // metrics_refusals.go
	if n.draining.Load() {
		return admission{}, refuse(reasonDraining, "")
	}
	if r := n.checkOrigin(req); r != nil {
		return admission{}, r
	}
	var a admission
	token := queryParam(req.target, "token")
	switch {
	case n.cfg.Auth != nil && token != "":
		id, err := n.cfg.Auth.Verify(token)
		if err != nil {
			return admission{}, refuse(reasonToken, "%v", err)
		}
		a.id, a.name = id, id.Name
	case n.cfg.Auth != nil && req.plain:
		// Plain mode has no auth frame: its text frames are messages.
		return admission{}, refuse(reasonTokenMissing, "with auth on, / needs ?token= (or use /ws and an auth frame)")
	case n.cfg.Auth != nil:
		// Authenticates with its first frame; the token names it.
	default:
		name := queryParam(req.target, "name")
		if name != "" { // "": the actors pick a guest name unique on the node
			var err error
			if name, err = protocol.NormalizeName(name); err != nil {
				return admission{}, refuse(reasonName, "%v", err)
			}
		}
		a.name = name
	}
	a.key = addrKey(req.client)
	if r := n.takeSlot(a.key); r != nil {
		return admission{}, r
	}
	return a, nil
}

// checkOrigin applies AllowedOrigins and RequireOrigin. A request without
// Origin comes from a non-browser client (browsers always send it on a
// WebSocket upgrade), which a web page cannot use against its user.
func (n *Node) checkOrigin(req *upgradeRequest) *refusal {
	if !req.hasOrigin {
		if n.cfg.RequireOrigin {
			return refuse(reasonNoOrigin, "")
		}
		return nil
	}
	if n.anyOrigin {
		return nil
	}
	origin := strings.ToLower(strings.TrimSpace(req.origin))
	if len(n.origins) == 0 {
		// Same-origin: the page's host must be the host it connects to.
		u, err := url.Parse(origin)
		if err == nil && u.Host != "" && (u.Scheme == "http" || u.Scheme == "https") &&
			strings.EqualFold(u.Host, req.host) {
			return nil
		}
		return refuse(reasonOrigin, "%q is not this site (%q); see --allowed-origins", truncate(req.origin, 100), truncate(req.host, 100))
	}
	for _, o := range n.origins {
		if origin == o {
			return nil
		}
	}
	return refuse(reasonOrigin, "%q is not in --allowed-origins", truncate(req.origin, 100))
}

// parseOrigins validates AllowedOrigins: "*", or origins such as
// "https://chat.example.com" (scheme and host[:port], nothing else).
func parseOrigins(list []string) (origins []string, any bool, err error) {
	for _, o := range list {
		o = strings.ToLower(strings.TrimSpace(o))
		if o == "" {
			continue
		}
		if o == "*" {
			any = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.Path != "" || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
			return nil, false, fmt.Errorf("allowed origin %q: want scheme://host[:port]", o)
		}
		origins = append(origins, o)
	}
	return origins, any, nil
}

// takeSlot counts a new connection from the address key, or refuses it.
func (n *Node) takeSlot(key netip.Addr) *refusal {
	n.connMu.Lock()
	defer n.connMu.Unlock()
	if n.cfg.MaxConns > 0 && n.connCount >= n.cfg.MaxConns {
		return refuse(reasonNodeFull, "%d connections", n.cfg.MaxConns)
	}
	if n.cfg.MaxConnsPerAddr > 0 && n.perAddr[key] >= n.cfg.MaxConnsPerAddr {
		return refuse(reasonAddrFull, "at most %d", n.cfg.MaxConnsPerAddr)
	}
	n.connCount++
	n.perAddr[key]++
	return nil
}

// release gives back the slot admit took for key.
func (n *Node) release(key netip.Addr) {
	n.connMu.Lock()
	defer n.connMu.Unlock()
	n.connCount--
	if c := n.perAddr[key]; c <= 1 {
		delete(n.perAddr, key)
	} else {
		n.perAddr[key] = c - 1
	}
}

// addrKey is the per-address counter key of a client address: the address
// itself for IPv4, its /64 for IPv6 (one subscriber usually holds a whole
// /64, so counting single addresses would not limit anyone).
func addrKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.Addr()
	}
	return a
}

// trusted reports whether a is one of TrustedProxies.
func (n *Node) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range n.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr is the address limits and logs go by. peer is the TCP peer;
// proxied is the client address its PROXY header gave (valid only when the
// peer is trusted and sent one); xff is the X-Forwarded-For header. An
// address that is a trusted proxy is replaced by the right-most address of
// X-Forwarded-For that is not (a client can prepend anything, but not what
// the trusted proxies appended after it).
func (n *Node) clientAddr(peer, proxied netip.Addr, xff string) netip.Addr {
	a := peer.Unmap()
	if proxied.IsValid() {
		a = proxied.Unmap()
	}
	if xff == "" || !n.trusted(a) {
		return a
	}
	for rest := xff; rest != ""; {
		i := strings.LastIndexByte(rest, ',')
		s := strings.TrimSpace(rest[i+1:])
		rest = rest[:max(i, 0)]
		x, err := netip.ParseAddr(s)
		if err != nil {
			break // garbage from the client side: stop at the last good hop
		}
		a = x.Unmap()
		if !n.trusted(a) {
			break
		}
	}
	return a
}

// addrOf returns the IP of a net.Addr (or of a "host:port" string).
func addrOf(a net.Addr) netip.Addr {
	if a == nil {
		return netip.Addr{}
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// ParsePrefixes parses TrustedProxies entries: CIDRs ("10.0.0.0/8") or
// single addresses.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: want a CIDR or an address", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// queryParam returns the first value of key in a request target's query, as
// url.URL.Query().Get(key) would ("" if absent or undecodable).
func queryParam(target, key string) string {
	_, q, ok := strings.Cut(target, "?")
	if !ok {
		return ""
	}
	if i := strings.IndexByte(q, '#'); i >= 0 {
		q = q[:i]
	}
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if pair == "" || strings.IndexByte(pair, ';') >= 0 {
			continue // url.ParseQuery skips these
		}
		k, v, _ := strings.Cut(pair, "=")
		if k2, err := url.QueryUnescape(k); err != nil || k2 != key {
			continue
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			continue
		}
		return val
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
