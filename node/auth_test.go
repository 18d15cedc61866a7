package node

import (
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"parley/auth"
)

var testSecret = []byte("a test secret of at least 32 bytes!!")

func authNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	v, err := auth.New(auth.Config{HS256Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Auth = v
	return startNode(t, cfg)
}

// token signs an HS256 token for sub, valid for ttl, with extra claims.
func token(t *testing.T, key []byte, sub string, ttl time.Duration, extra jwt.MapClaims) string {
	t.Helper()
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAuthQueryToken(t *testing.T) {
	n := authNode(t, Config{})
	good := token(t, testSecret, "u-1", time.Hour, jwt.MapClaims{"name": "Alice"})
	for _, viaHTTP := range []bool{false, true} {
		for _, tc := range []struct {
			name, tok string
			status    int
			body      string
		}{
			{"forged", token(t, []byte("not the secret, but 32 bytes long"), "u-1", time.Hour, nil), 401, "bad token: invalid token: bad signature"},
			{"expired", token(t, testSecret, "u-1", -time.Minute, nil), 401, "bad token: token expired"},
			{"garbage", "x.y.z", 401, "bad token"},
		} {
			for _, path := range []string{"/ws", "/"} {
				st, body := tryUpgrade(t, n, upgradeReq{path: path + "?token=" + tc.tok, viaHTTP: viaHTTP})
				if st != tc.status || !strings.Contains(body, tc.body) {
					t.Errorf("%s at %s (net/http path %v): %d %q, want %d %q", tc.name, path, viaHTTP, st, body, tc.status, tc.body)
				}
			}
		}
		// Plain mode has no auth frame: a token is required on the upgrade.
		if st, body := tryUpgrade(t, n, upgradeReq{path: "/?name=x", viaHTTP: viaHTTP}); st != 401 || !strings.Contains(body, "token is required") {
			t.Errorf("plain without token: %d %q, want 401", st, body)
		}
	}
	// A good token names the client; its own name is ignored.
	a := dial(t, n, "/ws?name=mallory&token="+good)
	w := a.await("welcome")
	if w["name"] != "Alice" || w["user"] != "u-1" || w["expires_at"] == nil {
		t.Fatalf("welcome %v, want name Alice, user u-1 and expires_at", w)
	}
	a.joinRoom("r")
	a.send(map[string]any{"type": "send", "room": "r", "text": "hi", "id": "m1"})
	m := a.await("message")
	if m["from"] != "Alice" || m["user"] != "u-1" {
		t.Fatalf("message %v, want from Alice and user u-1", m)
	}
	a.send(map[string]any{"type": "history", "room": "r"})
	h := a.await("history")
	if msgs := h["messages"].([]any); len(msgs) != 1 || msgs[0].(map[string]any)["user"] != "u-1" {
		t.Fatalf("history %v, want the message with its user", h)
	}
	p := dial(t, n, "/?token="+good)
	if e := p.next(); !strings.HasPrefix(e.text, "connected to node") {
		t.Fatalf("plain with token: %q", e.text)
	}
}

func TestAuthFrame(t *testing.T) {
	n := authNode(t, Config{AuthTimeout: 300 * time.Millisecond})
	t.Run("good token, rooms enforced", func(t *testing.T) {
		c := dial(t, n, "/ws?name=mallory")
		c.send(map[string]any{"type": "auth", "token": token(t, testSecret, "u-2", time.Hour,
			jwt.MapClaims{"name": "Bob", "rooms": []string{"team-*"}})})
		w := c.await("welcome")
		if w["name"] != "Bob" || w["user"] != "u-2" {
			t.Fatalf("welcome %v", w)
		}
		if j := c.joinRoom("team-a"); j["room"] != "team-a" {
			t.Fatalf("joined %v", j)
		}
		c.send(map[string]any{"type": "join", "room": "lobby", "id": "j2"})
		e := c.await("error")
		if e["code"] != "forbidden" || e["id"] != "j2" {
			t.Fatalf("wrong-room join answered %v, want error forbidden", e)
		}
		// Still connected and served.
		c.send(map[string]any{"type": "ping"})
		c.await("pong")
	})
	for _, tc := range []struct {
		name   string
		first  string
		reason string
	}{
		{"forged", `{"type":"auth","token":"` + token(t, []byte("not the secret, but 32 bytes long"), "u", time.Hour, nil) + `"}`, "bad signature"},
		{"expired", `{"type":"auth","token":"` + token(t, testSecret, "u", -time.Minute, nil) + `"}`, "token expired"},
		{"other frame first", `{"type":"join","room":"r"}`, "authenticate first"},
		{"not JSON", `hello`, "authenticate first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, n, "/ws")
			c.sendText(tc.first)
			e := c.next()
			if !e.closed || e.closeCode != ws.StatusPolicyViolation || !strings.Contains(e.closeReason, tc.reason) {
				t.Fatalf("got %+v, want close 1008 with %q", e, tc.reason)
			}
		})
	}
	t.Run("no auth in time", func(t *testing.T) {
		c := dial(t, n, "/ws")
		start := time.Now()
		e := c.next()
		if !e.closed || e.closeCode != ws.StatusPolicyViolation || e.closeReason != "authentication timeout" {
			t.Fatalf("got %+v, want close 1008 authentication timeout", e)
		}
		if el := time.Since(start); el < 200*time.Millisecond {
			t.Fatalf("closed after %v, before the auth timeout", el)
		}
	})
}

func TestTokenExpiryWhileConnected(t *testing.T) {
	n := authNode(t, Config{})
	// exp has one-second granularity: 2s leaves at least 1s.
	c := dial(t, n, "/ws?token="+token(t, testSecret, "u-3", 2*time.Second, nil))
	c.await("welcome")
	e := c.next()
	if !e.closed || e.closeCode != ws.StatusPolicyViolation || e.closeReason != "token expired" {
		t.Fatalf("got %+v, want close 1008 token expired", e)
	}

	r := dial(t, n, "/ws?token="+token(t, testSecret, "u-4", 2*time.Second, nil))
	w := r.await("welcome")
	first := int64(w["expires_at"].(float64))
	r.send(map[string]any{"type": "auth", "token": token(t, testSecret, "u-4", time.Hour, nil)})
	a := r.await("authenticated")
	if int64(a["expires_at"].(float64)) <= first {
		t.Fatalf("refresh answered %v, want a later expires_at than %d", a, first)
	}
	// Past the first expiry, still served.
	time.Sleep(time.Until(time.Unix(first+1, 0)))
	r.send(map[string]any{"type": "ping"})
	r.await("pong")
	// A token for another user is refused.
	r.send(map[string]any{"type": "auth", "token": token(t, testSecret, "u-5", time.Hour, nil)})
	if e := r.next(); !e.closed || e.closeCode != ws.StatusPolicyViolation || e.closeReason != "token is for another user" {
		t.Fatalf("got %+v, want close 1008 token is for another user", e)
	}
}
