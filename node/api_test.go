package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"parley/relay"
	"parley/relay/redistest"
)

const testAPIKey = "test-key-0123456789abcdef"

// apiCall makes one API request to n's public listener and returns the
// status and the decoded JSON body.
func apiCall(t testing.TB, n *Node, method, path, key, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.Addr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: %d, body %q is not a JSON object", method, path, resp.StatusCode, trunc(string(b)))
	}
	return resp.StatusCode, m
}

// TestAPIRefusals: every bad request gets its status and a JSON error,
// and the node keeps serving.
func TestAPIRefusals(t *testing.T) {
	n := startNode(t, Config{APIKeys: []string{"another-key-0123456789", testAPIKey}, MaxBodyBytes: 1024})
	big := `{"text":"` + strings.Repeat("x", 2000) + `","from":"srv"}`
	cases := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"missing key", "POST", "/api/rooms/r/messages", "", `{"text":"hi","from":"srv"}`, 401, "unauthorized"},
		{"bad key", "POST", "/api/rooms/r/messages", "wrong-key-0123456789abc", `{"text":"hi","from":"srv"}`, 403, "forbidden"},
		{"bad key on history", "GET", "/api/rooms/r/history", "x", "", 403, "forbidden"},
		{"bad JSON", "POST", "/api/rooms/r/messages", testAPIKey, `{"text":`, 400, "bad_request"},
		{"unknown field", "POST", "/api/rooms/r/messages", testAPIKey, `{"text":"hi","from":"srv","txt":1}`, 400, "bad_request"},
		{"empty text", "POST", "/api/rooms/r/messages", testAPIKey, `{"text":"","from":"srv"}`, 400, "bad_text"},
		{"no from", "POST", "/api/rooms/r/messages", testAPIKey, `{"text":"hi"}`, 400, "bad_request"},
		{"oversized body", "POST", "/api/rooms/r/messages", testAPIKey, big, 413, "too_large"},
		{"bad room name", "POST", "/api/rooms/b%20ad/messages", testAPIKey, `{"text":"hi","from":"srv"}`, 400, "bad_room"},
		{"bad room on history", "GET", "/api/rooms/" + strings.Repeat("r", 65) + "/history", testAPIKey, "", 400, "bad_room"},
		{"bad since", "GET", "/api/rooms/r/history?since=-1", testAPIKey, "", 400, "bad_request"},
		{"bad limit", "GET", "/api/rooms/r/history?limit=0", testAPIKey, "", 400, "bad_request"},
		{"no user", "POST", "/api/rooms/r/disconnect", testAPIKey, `{}`, 400, "bad_request"},
		{"unknown endpoint", "GET", "/api/nope", testAPIKey, "", 404, "not_found"},
		{"wrong method", "GET", "/api/rooms/r/messages", testAPIKey, "", 405, "method_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := apiCall(t, n, tc.method, tc.path, tc.key, tc.body)
			if status != tc.status || body["error"] != tc.code || body["message"] == "" {
				t.Errorf("%s %s: %d %v, want %d %q with a message", tc.method, tc.path, status, body, tc.status, tc.code)
			}
		})
	}
	// An unknown room is not an error: its history and presence are empty.
	status, body := apiCall(t, n, "GET", "/api/rooms/never-used/history", testAPIKey, "")
	if msgs, ok := body["messages"].([]any); status != 200 || !ok || len(msgs) != 0 || body["room"] != "never-used" {
		t.Errorf("history of an unknown room: %d %v", status, body)
	}
	status, body = apiCall(t, n, "GET", "/api/rooms/never-used/presence", testAPIKey, "")
	if m, ok := body["members"].([]any); status != 200 || !ok || len(m) != 0 {
		t.Errorf("presence of an unknown room: %d %v", status, body)
	}
	// Still serving: a good request works, with the second key too.
	status, body = apiCall(t, n, "POST", "/api/rooms/r/messages", "another-key-0123456789", `{"text":"hi","from":"srv","id":"a1"}`)
	if status != 200 || body["seq"] != 1.0 || body["room"] != "r" || body["epoch"] == "" {
		t.Errorf("good post after the refusals: %d %v", status, body)
	}
}

// TestAPIOffWithoutKeys: no keys, no API.
func TestAPIOffWithoutKeys(t *testing.T) {
	n := startNode(t, Config{})
	code, _ := httpGet(t, n.Addr(), "/api/rooms/r/history")
	if code != http.StatusNotFound {
		t.Fatalf("API without keys: %d, want 404", code)
	}
}

// TestAPIRateLimit: past APIRate requests per second, 429 with Retry-After.
func TestAPIRateLimit(t *testing.T) {
	n := startNode(t, Config{APIKeys: []string{testAPIKey}, APIRate: 0.2})
	var got []int
	for range 2 {
		status, _ := apiCall(t, n, "GET", "/api/rooms/r/presence", testAPIKey, "")
		got = append(got, status)
	}
	// A burst of one; the second is refused (the calls take far less than
	// the 5 s a token takes to come back).
	if got[0] != 200 || got[1] != http.StatusTooManyRequests {
		t.Fatalf("statuses %v, want [200 429]", got)
	}
}

// TestAPIAcrossNodes: a message posted through one node's API reaches
// WebSocket clients on both nodes with the seq the API returned; a repeat
// with the same id returns the same seq and is not delivered again; history
// and presence see it; a disconnect closes the user's sockets on both nodes
// with 4001 and leaves the others connected.
func TestAPIAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	var nodes []*Node
	for _, id := range []string{"api1", "api2"} {
		b, err := relay.NewRedis(relay.RedisConfig{URL: r.URL(), NodeID: id})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, startNode(t, Config{NodeID: id, Broker: b, APIKeys: []string{testAPIKey}}))
	}
	// alice on node 1, bob on both nodes, all in room "news".
	var alice, bobs []*client
	for i, n := range nodes {
		for _, name := range []string{"alice", "bob"} {
			if name == "alice" && i == 1 {
				continue
			}
			c := dial(t, n, "/ws?name="+name)
			c.await("welcome")
			c.joinRoom("news")
			if name == "alice" {
				alice = append(alice, c)
			} else {
				bobs = append(bobs, c)
			}
		}
	}
	everyone := append(append([]*client{}, alice...), bobs...)
	eventually(t, 10*time.Second, func() error {
		_, body := apiCall(t, nodes[1], "GET", "/api/rooms/news/presence", testAPIKey, "")
		if m, _ := body["members"].([]any); len(m) != 3 {
			return fmt.Errorf("presence %v, want 3 members", body)
		}
		return nil
	})

	post := func(n *Node, text, id string) map[string]any {
		t.Helper()
		status, body := apiCall(t, n, "POST", "/api/rooms/news/messages", testAPIKey,
			fmt.Sprintf(`{"text":%q,"from":"newsdesk","id":%q}`, text, id))
		if status != 200 {
			t.Fatalf("post %q: %d %v", text, status, body)
		}
		return body
	}
	first := post(nodes[0], "extra, extra", "story-1")
	for _, c := range everyone {
		m := c.await("message")
		if m["seq"] != first["seq"] || m["text"] != "extra, extra" || m["from"] != "newsdesk" || m["id"] != "story-1" {
			t.Fatalf("client got %v, API returned %v", m, first)
		}
	}
	// The same id again, through the other node: the same seq, not sent again.
	again := post(nodes[1], "extra, extra", "story-1")
	if again["seq"] != first["seq"] || again["epoch"] != first["epoch"] || again["repeat"] != true {
		t.Fatalf("repeat: %v, first %v", again, first)
	}
	second := post(nodes[1], "more news", "story-2")
	if second["seq"].(float64) != first["seq"].(float64)+1 {
		t.Fatalf("next seq %v after %v", second["seq"], first["seq"])
	}
	for _, c := range everyone {
		// The next message each client sees is story-2: the repeat was not delivered.
		if m := c.await("message"); m["id"] != "story-2" || m["seq"] != second["seq"] {
			t.Fatalf("after the repeat a client got %v, want story-2", m)
		}
	}
	_, hist := apiCall(t, nodes[1], "GET", "/api/rooms/news/history?since=0", testAPIKey, "")
	if msgs, _ := hist["messages"].([]any); len(msgs) != 2 || hist["seq"] != second["seq"] {
		t.Fatalf("history %v", hist)
	}
	_, hist = apiCall(t, nodes[0], "GET", "/api/rooms/news/history?limit=1", testAPIKey, "")
	if msgs, _ := hist["messages"].([]any); len(msgs) != 1 || msgs[0].(map[string]any)["id"] != "story-2" {
		t.Fatalf("newest 1 of history: %v", hist)
	}

	// Remove bob: both his sockets close with 4001, on both nodes.
	status, body := apiCall(t, nodes[0], "POST", "/api/rooms/news/disconnect", testAPIKey, `{"user":"bob"}`)
	if status != http.StatusAccepted || body["user"] != "bob" {
		t.Fatalf("disconnect: %d %v", status, body)
	}
	for _, c := range bobs {
		if code := c.awaitClose(); code != 4001 {
			t.Fatalf("bob's socket closed with %d, want 4001", code)
		}
	}
	// alice is still there and still served.
	third := post(nodes[1], "after bob", "story-3")
	if m := alice[0].await("message"); m["seq"] != third["seq"] {
		t.Fatalf("alice got %v after the disconnect", m)
	}
	eventually(t, 10*time.Second, func() error {
		_, body := apiCall(t, nodes[0], "GET", "/api/rooms/news/presence", testAPIKey, "")
		if m, _ := body["members"].([]any); len(m) != 1 {
			return fmt.Errorf("presence after the disconnect %v, want alice alone", body)
		}
		return nil
	})
	// Both nodes counted the 4001 closes.
	for _, n := range nodes {
		if v := scrape(t, n).value("parley_connections_closed_total", "code=4001", "initiator=server"); v != 1 {
			t.Errorf("node %s: %v closes with 4001, want 1", n.ID(), v)
		}
	}
}
