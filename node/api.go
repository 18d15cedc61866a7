package node

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"parley/protocol"
	"parley/relay"
)

// The server API (docs/API.md): JSON over HTTP on the public listener, for
// a backend to publish into rooms, read history and presence, and remove a
// user. It is off unless Config.APIKeys is set. Every request carries
// "Authorization: Bearer <key>", compared in constant time with every key.
// Requests go straight to the bus (relay.Broker): a message posted here is
// sequenced, kept in history and delivered by every node's relay, like a
// client's. Handlers run on net/http's goroutines and own nothing.

// Defaults of the API's limits.
const (
	DefaultAPIRate = 200 // requests per second per node (burst the same)
	apiMaxID       = 128 // bytes of a message id
	apiMaxUser     = 256 // bytes of a user in a disconnect
	apiTimeout     = 5 * time.Second
)

// apiServer serves /api/. Its fields are set by newAPI and read-only after,
// except the rate limiter (own lock).
type apiServer struct {
	n     *Node
	keys  [][sha256.Size]byte // hashes of the accepted keys
	limit *tokenBucket
}

func newAPI(n *Node) *apiServer {
	a := &apiServer{n: n, limit: newTokenBucket(n.cfg.APIRate)}
	for _, k := range n.cfg.APIKeys {
		a.keys = append(a.keys, sha256.Sum256([]byte(k)))
	}
	return a
}

// mountAPI adds the API's routes to the public mux when keys are set.
func (n *Node) mountAPI(mux *http.ServeMux) {
	if len(n.cfg.APIKeys) == 0 {
		return
	}
	mux.Handle("/api/", newAPI(n).handler())
}

func (a *apiServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/rooms/{room}/messages", a.postMessage)
	mux.HandleFunc("GET /api/rooms/{room}/history", a.history)
	mux.HandleFunc("GET /api/rooms/{room}/presence", a.presence)
	mux.HandleFunc("POST /api/rooms/{room}/disconnect", a.disconnect)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if status, code, msg := a.authorize(r); status != 0 {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="parley"`)
			}
			apiError(w, status, code, "%s", msg)
			return
		}
		if wait, ok := a.limit.take(); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			apiError(w, http.StatusTooManyRequests, "rate_limited", "too many API requests: retry after %v", wait.Round(time.Millisecond))
			return
		}
		if _, pattern := mux.Handler(r); pattern == "" {
			// No route: an unknown path, or a known one with another method.
			if allow := a.allowed(r); allow != "" {
				w.Header().Set("Allow", allow)
				apiError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use %s", allow)
				return
			}
			apiError(w, http.StatusNotFound, "not_found", "no such API endpoint (see docs/API.md)")
			return
		}
		// The body is capped by the public listener (Config.MaxBodyBytes):
		// decodeBody answers 413 past it.
		mux.ServeHTTP(w, r) // sets the {room} path value
	})
}

// allowed returns the method the path takes ("" if the path is unknown).
func (a *apiServer) allowed(r *http.Request) string {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/rooms/"), "/")
	if !strings.HasPrefix(r.URL.Path, "/api/rooms/") || len(parts) != 2 || parts[0] == "" {
		return ""
	}
	switch parts[1] {
	case "messages", "disconnect":
		return http.MethodPost
	case "history", "presence":
		return http.MethodGet
	}
	return ""
}

// authorize checks the bearer key: 401 without one, 403 for a wrong one.
// Every key is compared, each in constant time (their hashes, so lengths
// leak nothing either).
func (a *apiServer) authorize(r *http.Request) (status int, code, msg string) {
	h := r.Header.Get("Authorization")
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(key) == "" {
		return http.StatusUnauthorized, "unauthorized", "an Authorization: Bearer <key> header is required"
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(key)))
	match := 0
	for i := range a.keys {
		match |= subtle.ConstantTimeCompare(sum[:], a.keys[i][:])
	}
	if match != 1 {
		return http.StatusForbidden, "forbidden", "this API key is not accepted"
	}
	return 0, "", ""
}

// apiErrorBody is every error response.
type apiErrorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

func apiError(w http.ResponseWriter, status int, code, format string, args ...any) {
	writeJSON(w, status, apiErrorBody{Error: code, Message: fmt.Sprintf(format, args...)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// room validates the {room} path value; false means an error was written.
func apiRoom(w http.ResponseWriter, r *http.Request) (string, bool) {
	room := r.PathValue("room")
	if err := protocol.CheckRoom(room); err != nil {
		apiError(w, http.StatusBadRequest, protocol.CodeBadRoom, "%v", err)
		return "", false
	}
	return room, true
}

// decodeBody reads a JSON body into v; false means an error was written
// (413 over the cap, 400 for anything malformed).
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		apiError(w, http.StatusRequestEntityTooLarge, "too_large", "the body is over %d bytes", tooBig.Limit)
		return false
	case err != nil:
		apiError(w, http.StatusBadRequest, protocol.CodeBadRequest, "the body is not the expected JSON object: %v", err)
		return false
	}
	return true
}

// busError answers a failed bus call: 503 when the bus is unavailable.
func (a *apiServer) busError(w http.ResponseWriter, op string, err error) {
	if errors.Is(err, relay.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		apiError(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, "the bus is unavailable: %s not done (a publish may be retried with the same id)", op)
		return
	}
	a.n.log.Warn("api: bus call failed", "op", op, "err", err)
	apiError(w, http.StatusInternalServerError, protocol.CodeInternal, "%s failed", op)
}

// PostMessage is the body of POST /api/rooms/{room}/messages.
type PostMessage struct {
	Text string `json:"text"`
	From string `json:"from"`
	ID   string `json:"id"`
}

// PostedMessage answers it: where the message landed. Repeat: the id was
// already published (within the idempotency window) and this is its seq.
type PostedMessage struct {
	Room   string `json:"room"`
	Seq    uint64 `json:"seq"`
	Epoch  string `json:"epoch"`
	Repeat bool   `json:"repeat,omitempty"`
}

func (a *apiServer) postMessage(w http.ResponseWriter, r *http.Request) {
	room, ok := apiRoom(w, r)
	if !ok {
		return
	}
	var in PostMessage
	if !decodeBody(w, r, &in) {
		return
	}
	if err := protocol.CheckText(in.Text); err != nil {
		apiError(w, http.StatusBadRequest, protocol.CodeBadText, "%v", err)
		return
	}
	from, err := protocol.NormalizeName(in.From)
	if err != nil {
		apiError(w, http.StatusBadRequest, protocol.CodeBadRequest, "from: %v", err)
		return
	}
	if len(in.ID) > apiMaxID {
		apiError(w, http.StatusBadRequest, protocol.CodeBadRequest, "id longer than %d bytes", apiMaxID)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	pos, err := a.n.broker.Publish(ctx, relay.Message{Room: room, From: from, Node: a.n.cfg.NodeID,
		Text: in.Text, ID: in.ID, TS: time.Now().UnixMilli()})
	if err != nil {
		a.busError(w, "publish", err)
		return
	}
	writeJSON(w, http.StatusOK, PostedMessage{Room: room, Seq: pos.Seq, Epoch: pos.Epoch, Repeat: pos.Repeat})
}

// HistoryReply answers GET /api/rooms/{room}/history.
type HistoryReply struct {
	Room     string             `json:"room"`
	Epoch    string             `json:"epoch"`    // "" for a room the bus holds nothing of
	Seq      uint64             `json:"seq"`      // the room's last seq
	Earliest uint64             `json:"earliest"` // the oldest seq still kept (0: none)
	Messages []protocol.Message `json:"messages"` // ascending seq
}

func (a *apiServer) history(w http.ResponseWriter, r *http.Request) {
	room, ok := apiRoom(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	var since uint64
	limit := a.n.cfg.HistoryLimit
	if limit <= 0 {
		limit = 100
	}
	if v := q.Get("since"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			apiError(w, http.StatusBadRequest, protocol.CodeBadRequest, "since must be a seq (an unsigned integer)")
			return
		}
		since = s
	}
	if v := q.Get("limit"); v != "" {
		l, err := strconv.Atoi(v)
		if err != nil || l < 1 {
			apiError(w, http.StatusBadRequest, protocol.CodeBadRequest, "limit must be a positive integer")
			return
		}
		limit = min(l, limit)
	}
	req := relay.HistoryRequest{Since: since, Limit: limit}
	if q.Get("since") == "" {
		req.Before = math.MaxInt64 // the newest limit messages
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	res, err := a.n.broker.History(ctx, room, req)
	if err != nil {
		a.busError(w, "history", err)
		return
	}
	out := HistoryReply{Room: room, Epoch: res.Position.Epoch, Seq: res.Position.Seq, Earliest: res.Earliest,
		Messages: make([]protocol.Message, len(res.Messages))}
	for i, m := range res.Messages {
		out.Messages[i] = protocol.Message{Room: m.Room, Seq: m.Seq, Epoch: m.Epoch, From: m.From, User: m.User,
			Text: m.Text, ID: m.ID, TS: m.TS}
	}
	writeJSON(w, http.StatusOK, out)
}

// PresenceReply answers GET /api/rooms/{room}/presence.
type PresenceReply struct {
	Room    string            `json:"room"`
	Members []protocol.Member `json:"members"`
}

func (a *apiServer) presence(w http.ResponseWriter, r *http.Request) {
	room, ok := apiRoom(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	list, err := a.n.broker.Presence(ctx, room)
	if err != nil {
		a.busError(w, "presence", err)
		return
	}
	out := PresenceReply{Room: room, Members: make([]protocol.Member, len(list))}
	for i, m := range list {
		out.Members[i] = protocol.Member{Name: m.Name, Node: m.Node}
	}
	writeJSON(w, http.StatusOK, out)
}

// DisconnectRequest is the body of POST /api/rooms/{room}/disconnect.
type DisconnectRequest struct {
	User string `json:"user"`
}

// DisconnectReply answers it: the request is on the bus; every node closes
// the user's connections in the room with 4001.
type DisconnectReply struct {
	Room string `json:"room"`
	User string `json:"user"`
}

func (a *apiServer) disconnect(w http.ResponseWriter, r *http.Request) {
	room, ok := apiRoom(w, r)
	if !ok {
		return
	}
	var in DisconnectRequest
	if !decodeBody(w, r, &in) {
		return
	}
	if in.User == "" || len(in.User) > apiMaxUser {
		apiError(w, http.StatusBadRequest, protocol.CodeBadRequest, "user must be 1 to %d bytes", apiMaxUser)
		return
	}
	d, ok := a.n.broker.(relay.Disconnector)
	if !ok {
		apiError(w, http.StatusNotImplemented, "not_implemented", "this bus cannot carry a disconnect")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	if err := d.Disconnect(ctx, room, in.User); err != nil {
		a.busError(w, "disconnect", err)
		return
	}
	writeJSON(w, http.StatusAccepted, DisconnectReply{Room: room, User: in.User})
}

// tokenBucket is a rate limiter: rate tokens per second, burst rate.
type tokenBucket struct {
	mu     sync.Mutex // guards following
	rate   float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64) *tokenBucket {
	return &tokenBucket{rate: rate, tokens: max(rate, 1), last: time.Now()}
}

// take takes a token, or says how long until one is there.
func (b *tokenBucket) take() (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.tokens = min(max(b.rate, 1), b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second)), false
}
