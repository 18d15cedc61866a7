package node

import (
	"errors"
	"strconv"
	"sync/atomic"

	"github.com/gobwas/ws"
)

// Upgrade admission is decided in one place, admit (admission.go), and
// counted there too: admit counts every refusal it returns under its reason
// (countRefusal), so a new admission check (a new reason in the refusals
// table, with its label in reasonLabels below) is counted with nothing else
// to do. A handshake the upgrader itself rejects (not WebSocket, bad
// version) is counted under "handshake" by countFailedUpgrade.

// reasonLabels are the label values of parley_upgrades_refused_total.
var reasonLabels = [len(refusals)]string{
	reasonDraining:     "draining",
	reasonNodeFull:     "node_full",
	reasonAddrFull:     "addr_full",
	reasonOrigin:       "origin",
	reasonNoOrigin:     "no_origin",
	reasonName:         "name",
	reasonTokenMissing: "token_missing",
	reasonToken:        "token",
}

// handshakeReason indexes the counter of upgrades the upgrader rejected.
const handshakeReason = len(refusals)

func reasonLabel(i int) string {
	switch {
	case i == handshakeReason:
		return "handshake"
	case reasonLabels[i] != "":
		return reasonLabels[i]
	}
	return "reason_" + strconv.Itoa(i)
}

// upgradeCounters counts upgrades accepted and refused by reason.
type upgradeCounters struct {
	accepted atomic.Uint64
	refused  [len(refusals) + 1]atomic.Uint64 // by reason; the last: handshake
}

// UpgradeStats is the upgrade part of Stats.
type UpgradeStats struct {
	Accepted uint64            `json:"accepted"`
	Refused  map[string]uint64 `json:"refused"` // by reason, every reason listed
}

func (u *upgradeCounters) stats() UpgradeStats {
	s := UpgradeStats{Accepted: u.accepted.Load(), Refused: make(map[string]uint64, len(u.refused))}
	for i := range u.refused {
		if i == 0 {
			continue // reasons start at 1
		}
		s.Refused[reasonLabel(i)] = u.refused[i].Load()
	}
	return s
}

// countRefusal counts r (nil: admitted, counted once registered).
func (n *Node) countRefusal(r *refusal) {
	if r != nil {
		n.upgrades.refused[r.why].Add(1)
	}
}

// countFailedUpgrade counts an upgrade that failed without a refusal of
// admit's: a handshake the upgrader answered itself (400/426).
func (n *Node) countFailedUpgrade(err error) {
	var ref *refusal
	var rej *ws.ConnectionRejectedError
	if errors.As(err, &ref) || errors.As(err, &rej) {
		return
	}
	n.upgrades.refused[handshakeReason].Add(1)
}
