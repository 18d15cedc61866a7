package actors

import (
	"github.com/gobwas/ws"

	"parley/relay"
)

// CloseRemoved is the close code of a connection removed by the server API
// (POST /api/rooms/{room}/disconnect): every node closes the user's
// connections that are members of the room with it.
const CloseRemoved ws.StatusCode = 4001

// disconnect closes the connections of user (the authenticated user id, or
// the display name of a member without one) that are members of this room.
// Their connection actors then stop and leave every room, as on any close.
func (r *room) disconnect(d *relay.Disconnect) {
	for _, m := range r.members {
		if m.user == d.User || m.user == "" && m.name == d.User {
			r.out(m).close(CloseRemoved, "removed from room "+r.name)
		}
	}
}
