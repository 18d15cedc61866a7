package node

import (
	"io"
	"net/http"
)

// probeUpgrade answers a plain GET /ws (no Upgrade header) with what an
// upgrade with the same query would get: the refusal's status and text
// (400 bad name, 401 token, 403 origin, 503 draining …), or 426 when the
// upgrade would be accepted now. Browsers show a refused upgrade only as
// close 1006, the same as a lost network; a page that lost its socket
// before the welcome asks here to tell a refusal (stop, say why) from an
// outage (retry). The decision is admit's, the upgrade's own; the slot it
// takes is given back at once.
func (n *Node) probeUpgrade(w http.ResponseWriter, r *http.Request) {
	a, ref := n.admit(n.requestOf(r, false))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if ref != nil {
		w.WriteHeader(ref.status())
		_, _ = io.WriteString(w, ref.body())
		return
	}
	n.release(a.key)
	w.WriteHeader(http.StatusUpgradeRequired)
	_, _ = io.WriteString(w, "this endpoint speaks WebSocket (protocol v1; see docs/PROTOCOL.md): an upgrade with this query would be accepted now\n")
}
