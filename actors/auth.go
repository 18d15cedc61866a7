package actors

import (
	"errors"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"parley/auth"
	"parley/protocol"
)

// Token auth in the connection actor. With Config.Auth set, a connection
// that did not authenticate on the upgrade (?token=) must send an auth
// frame first: anything else, a bad token, or nothing within AuthTimeout
// closes it with 1008 and a reason. Once authenticated, the token's name
// is the connection's name and its user id travels with every message it
// sends; a later auth frame with a new token for the same user extends the
// connection past the old expiry, and without one the connection is closed
// with 1008 when the token expires. The timers post authTimer messages to
// the actor, which alone touches connAuth.

// connAuth is a connection's auth state; owned by its connection actor.
// Ordered so it packs into 24 bytes (it lives as long as the connection).
type connAuth struct {
	id      *auth.Identity // nil: not authenticated (or auth off)
	timer   *time.Timer    // auth deadline while waiting, else the expiry
	gen     uint32         // bumped per timer: a stale tick is ignored
	waiting bool           // no identity yet: the next frame must be auth
}

// authTimer fires the auth deadline or the token's expiry.
type authTimer struct{ gen uint32 }

func (a *connAuth) user() string {
	if a.id == nil {
		return ""
	}
	return a.id.User
}

func (a *connAuth) stop() {
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}

// arm posts an authTimer to the actor after d, replacing any earlier timer.
func (c *conn) armAuthTimer(ctx actor.Context, d time.Duration) {
	c.auth.stop()
	c.auth.gen++
	msg, self, root := &authTimer{gen: c.auth.gen}, ctx.Self(), c.s.root
	c.auth.timer = time.AfterFunc(max(d, 0), func() { root.Send(self, msg) })
}

// awaitAuth starts the wait for the first auth frame.
func (c *conn) awaitAuth(ctx actor.Context) {
	c.auth.waiting = true
	c.armAuthTimer(ctx, c.s.cfg.AuthTimeout)
}

func (c *conn) authTimer(ctx actor.Context, msg *authTimer) {
	if msg.gen != c.auth.gen || c.closing {
		return
	}
	if c.auth.waiting {
		c.close(ctx, closePolicy, "authentication timeout")
		return
	}
	if c.auth.id != nil && !time.Now().Before(c.auth.id.Expires) {
		c.close(ctx, closePolicy, "token expired")
		return
	}
	if c.auth.id != nil { // early tick: the clock moved
		c.armAuthTimer(ctx, time.Until(c.auth.id.Expires))
	}
}

// authenticated records id and arms its expiry.
func (c *conn) authenticated(ctx actor.Context, id *auth.Identity) {
	c.auth.waiting = false
	c.auth.id = id
	c.name = id.Name
	c.armAuthTimer(ctx, time.Until(id.Expires))
}

// authFrame handles {"type":"auth","token":…}: the first authentication,
// or a refresh.
func (c *conn) authFrame(ctx actor.Context, token string) {
	v := c.s.cfg.Auth
	if v == nil {
		c.replyErr(ctx, protocol.Errorf(protocol.CodeBadRequest, "", "token auth is off on this node"))
		return
	}
	id, err := v.Verify(token)
	if err != nil {
		reason := "invalid token"
		if errors.Is(err, auth.ErrExpired) {
			reason = "token expired"
		} else if len(err.Error()) <= 100 {
			reason = err.Error()
		}
		c.close(ctx, closePolicy, reason)
		return
	}
	if old := c.auth.id; old != nil {
		if id.User != old.User {
			c.close(ctx, closePolicy, "token is for another user")
			return
		}
		// A refresh keeps the name and rooms already joined under it.
		id.Name = old.Name
		c.authenticated(ctx, id)
		c.reply(ctx, protocol.Authenticated{Type: protocol.TypeAuthenticated, User: id.User, ExpiresAt: id.Expires.Unix()})
		return
	}
	c.authenticated(ctx, id)
	c.welcome(ctx)
}

// welcome sends the first frame on /ws.
func (c *conn) welcome(ctx actor.Context) {
	w := protocol.Welcome{Type: protocol.TypeWelcome, Node: c.s.cfg.NodeID, Session: c.sess.id, Name: c.name,
		MaxMessageSize: c.s.cfg.MaxMessageSize}
	if id := c.auth.id; id != nil {
		w.User, w.ExpiresAt = id.User, id.Expires.Unix()
	}
	c.reply(ctx, w)
}
