// Package protocol defines Parley's client protocol v1: the JSON frames a client
// sends on /ws and the frames a node sends back, their validation, and their
// encoding. It is the contract with users (docs/PROTOCOL.md): fields may be
// added, never renamed or dropped.
//
// The package holds no state and starts no goroutines; every function is safe
// for concurrent use.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// Client frame types (client → node).
const (
	TypeJoin     = "join"
	TypeLeave    = "leave"
	TypeSend     = "send"
	TypeHistory  = "history"
	TypePresence = "presence"
	TypePing     = "ping"
	// TypeAuth carries a token: the first frame on /ws when the node has
	// token auth on, and later a refresh before the token expires.
	TypeAuth = "auth"
)

// Node frame types (node → client). TypeHistory and TypePresence are shared
// with the client types of the same name.
const (
	TypeWelcome      = "welcome"
	TypeJoined       = "joined"
	TypeMessage      = "message"
	TypeAck          = "ack"
	TypeLeft         = "left"
	TypeMemberJoined = "member_joined"
	TypeMemberLeft   = "member_left"
	// TypePresenceEvents says member_joined/member_left switched off or on
	// in a room (a large room: see PresenceEvents).
	TypePresenceEvents = "presence_events"
	TypeError          = "error"
	TypePong           = "pong"
	TypeReconnect      = "reconnect"
	// TypeAuthenticated answers a refresh auth frame.
	TypeAuthenticated = "authenticated"
)

// Error codes carried by an error frame's code field.
const (
	CodeBadRequest  = "bad_request"  // malformed JSON or a field of the wrong type
	CodeUnknownType = "unknown_type" // a type this node does not know
	CodeBadRoom     = "bad_room"     // room name not [A-Za-z0-9_.:-]{1,64}
	CodeNotJoined   = "not_joined"   // send/history/presence/leave on a room not joined
	CodeBadText     = "bad_text"     // empty text
	CodeTooMany     = "too_many_rooms"
	CodeUnavailable = "unavailable" // not sent (bus down, publish queue full), or unknown whether it was: retry with the same id
	CodeDraining    = "draining"    // read while the node drains, not served: retry on the node you reconnect to
	CodeBusy        = "busy"        // a history or presence request of this connection is still in flight
	CodeInternal    = "internal"
	// CodeRateLimited: the connection sent frames faster than its rate
	// limit; the frame was not served. The error carries retry_after_ms.
	CodeRateLimited = "rate_limited"
	// CodeNameTaken: a join to a room where a member of the same name is.
	CodeNameTaken = "name_taken"
	// CodeRoomLimit: the join would open a room on a node that holds as
	// many rooms as it may; try later or on another node.
	CodeRoomLimit = "room_limit"
	CodeForbidden = "forbidden" // the token does not allow this room
)

// MaxRoomLen is the longest valid room name.
const MaxRoomLen = 64

// ClientFrame is any frame a client sends. Which fields matter depends on Type.
type ClientFrame struct {
	Type string `json:"type"`
	Room string `json:"room,omitempty"`
	// Since (join) asks for every message with seq > Since from history.
	Since *uint64 `json:"since,omitempty"`
	// Epoch (join, with Since) is the room epoch the client's Since belongs to.
	Epoch string `json:"epoch,omitempty"`
	Text  string `json:"text,omitempty"`
	// ID is the client's own id for a frame; echoed in ack and error.
	ID string `json:"id,omitempty"`
	// Before (history) asks for messages with seq < Before; 0 or absent means the newest.
	Before uint64 `json:"before,omitempty"`
	// Limit (history) caps the number of messages returned.
	Limit int `json:"limit,omitempty"`
	// Token (auth) is a JSON Web Token.
	Token string `json:"token,omitempty"`
}

// Error is a protocol error that reaches the client as an error frame.
type Error struct {
	Code    string
	Message string
	ID      string // the id of the client frame that caused it, if any
	// RetryAfterMS (rate_limited) is how long to wait before the refused
	// frame would be served, in milliseconds.
	RetryAfterMS int64
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error with a formatted message.
func Errorf(code, id, format string, args ...any) *Error {
	return &Error{Code: code, ID: id, Message: fmt.Sprintf(format, args...)}
}

// Decode parses and validates one client frame. A returned error is always an
// *Error, ready to send back as an error frame.
func Decode(data []byte) (ClientFrame, error) {
	var f ClientFrame
	if err := json.Unmarshal(data, &f); err != nil {
		// Try to recover the id so the error can echo it.
		return f, Errorf(CodeBadRequest, PeekID(data), "malformed frame: %v", trimJSONErr(err))
	}
	switch f.Type {
	case TypeJoin, TypeLeave, TypeHistory, TypePresence:
		if err := CheckRoom(f.Room); err != nil {
			return f, Errorf(CodeBadRoom, f.ID, "%v", err)
		}
	case TypeSend:
		if err := CheckRoom(f.Room); err != nil {
			return f, Errorf(CodeBadRoom, f.ID, "%v", err)
		}
		if err := CheckText(f.Text); err != nil {
			return f, Errorf(CodeBadText, f.ID, "%v", err)
		}
	case TypePing:
	case TypeAuth:
		if f.Token == "" {
			return f, Errorf(CodeBadRequest, f.ID, "auth needs a token")
		}
	case "":
		return f, Errorf(CodeBadRequest, f.ID, "missing type")
	default:
		return f, Errorf(CodeUnknownType, f.ID, "unknown type %q", truncate(f.Type, 32))
	}
	if f.Limit < 0 {
		return f, Errorf(CodeBadRequest, f.ID, "limit must not be negative")
	}
	return f, nil
}

// PeekID returns a client frame's id, or "" if it has none or is not JSON:
// for an error about a frame that is not decoded (rate_limited).
func PeekID(data []byte) string {
	var probe struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(data, &probe)
	return probe.ID
}

func trimJSONErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at offset %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	}
	return "invalid JSON"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// CheckRoom reports whether room is a valid room name: [A-Za-z0-9_.:-]{1,64}.
func CheckRoom(room string) error {
	if room == "" {
		return errors.New("room name is empty")
	}
	if len(room) > MaxRoomLen {
		return fmt.Errorf("room name longer than %d bytes", MaxRoomLen)
	}
	for i := 0; i < len(room); i++ {
		if !roomByte(room[i]) {
			return fmt.Errorf("room name may contain only A-Z a-z 0-9 _ . : -")
		}
	}
	return nil
}

func roomByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '.' || c == ':' || c == '-'
}

// CheckText reports whether text may be sent as a message: not empty, and
// without control characters other than tab, line feed and carriage return.
// JSON encodes any other C0 control character as six bytes ("\u0001"), so
// refusing them keeps a frame within twice its text's size.
func CheckText(text string) error {
	if text == "" {
		return errors.New("text must not be empty")
	}
	for i := 0; i < len(text); i++ {
		if c := text[i]; c < 0x20 && c != '\t' && c != '\n' && c != '\r' {
			return errors.New("text contains a control character (only tab, line feed and carriage return are allowed)")
		}
	}
	return nil
}

// Message is one chat message as a client sees it (in message and history frames).
type Message struct {
	Type  string `json:"type,omitempty"` // "message" in a message frame; empty inside history
	Room  string `json:"room"`
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch,omitempty"`
	From  string `json:"from"`
	// User is the sender's authenticated user id (with token auth only).
	User string `json:"user,omitempty"`
	Text string `json:"text"`
	ID   string `json:"id,omitempty"`
	TS   int64  `json:"ts"` // unix milliseconds, set by the publishing node
}

// Member is one entry of a presence list.
type Member struct {
	Name string `json:"name"`
	Node string `json:"node"`
}

// Welcome is the first frame on /ws.
type Welcome struct {
	Type    string `json:"type"`
	Node    string `json:"node"`
	Session string `json:"session"`
	Name    string `json:"name"`
	// User and ExpiresAt (unix seconds) describe the token, with token
	// auth only.
	User      string `json:"user,omitempty"`
	ExpiresAt int64  `json:"expires_at,omitempty"`
	// MaxMessageSize is the node's cap on one inbound WebSocket message in
	// bytes (a whole client frame, JSON included); larger is closed with
	// 1009. Clients use it to refuse an oversized send themselves.
	MaxMessageSize int `json:"max_message_size,omitempty"`
}

// Authenticated answers a refresh auth frame: the connection now lives
// until ExpiresAt (unix seconds).
type Authenticated struct {
	Type      string `json:"type"`
	User      string `json:"user"`
	ExpiresAt int64  `json:"expires_at"`
}

// Joined confirms a join: from now on every message sequenced after Seq
// reaches the client. With since, the replayed messages follow it.
type Joined struct {
	Type      string `json:"type"`
	Room      string `json:"room"`
	Seq       uint64 `json:"seq"`
	Epoch     string `json:"epoch,omitempty"`
	Recovered bool   `json:"recovered"`
	// PresenceEvents is PresenceEventsOff when the room is too large for
	// member_joined/member_left; left out while they are on.
	PresenceEvents string `json:"presence_events,omitempty"`
}

// States of presence events in a room (Joined.PresenceEvents, PresenceEvents.State).
const (
	PresenceEventsOn  = "on"
	PresenceEventsOff = "off"
)

// PresenceEvents tells the members of a room that member_joined and
// member_left switched off (the room grew too large on this node) or on
// again (it shrank); either way, a presence request gives the list.
type PresenceEvents struct {
	Type  string `json:"type"`
	Room  string `json:"room"`
	State string `json:"state"`
}

// Ack tells a sender that its message was sequenced as Seq.
type Ack struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
	Room string `json:"room"`
	Seq  uint64 `json:"seq"`
	// Repeat: this id was already published (a retry); Seq is the original's.
	Repeat bool `json:"repeat,omitempty"`
}

// Left confirms a leave.
type Left struct {
	Type string `json:"type"`
	Room string `json:"room"`
}

// History answers a history request; Messages are in ascending seq order.
type History struct {
	Type     string    `json:"type"`
	Room     string    `json:"room"`
	Messages []Message `json:"messages"`
	// More: older messages exist; ask again with before = the first seq.
	More bool `json:"more,omitempty"`
}

// Presence answers a presence request.
type Presence struct {
	Type    string   `json:"type"`
	Room    string   `json:"room"`
	Members []Member `json:"members"`
}

// MemberEvent is member_joined or member_left.
type MemberEvent struct {
	Type string `json:"type"`
	Room string `json:"room"`
	Name string `json:"name"`
	Node string `json:"node,omitempty"`
}

// ErrorFrame reports a problem with a client frame; the connection stays open.
type ErrorFrame struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
	ID      string `json:"id,omitempty"`
	// RetryAfterMS (rate_limited) is how long to wait, in milliseconds.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
}

// Pong answers ping.
type Pong struct {
	Type string `json:"type"`
}

// Reconnect is sent before a graceful close: reconnect after AfterMS.
type Reconnect struct {
	Type    string `json:"type"`
	Reason  string `json:"reason"`
	AfterMS int64  `json:"after_ms"`
}

// Encode marshals a node frame as UTF-8 JSON without HTML escaping: a text
// of '<', '>' or '&' costs one byte per character in the frame, not six
// ("\u003c"), so a frame's size stays within a few bytes of its text plus
// the envelope (quotes, backslashes and line breaks take two bytes; control
// characters, refused in texts by CheckText, would take six). The frame
// types above cannot fail to marshal, so Encode panics on error (a
// programming error).
func Encode(v any) []byte {
	return EncodeWith(v, bytes.Clone)
}

// EncodeWith encodes v as Encode does into a pooled buffer and returns
// wrap(json). The slice handed to wrap is only valid during the call: wrap
// must copy it (netpoll.TextFrame does, into the frame it builds), which
// saves the copy Encode would make.
func EncodeWith(v any, wrap func(json []byte) []byte) []byte {
	e := encoders.Get().(*encoder)
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		panic(fmt.Sprintf("protocol: encode %T: %v", v, err))
	}
	b := e.buf.Bytes()
	out := wrap(b[:len(b)-1]) // json.Encoder ends each value with '\n'
	if e.buf.Cap() <= maxPooledBuffer {
		encoders.Put(e)
	}
	return out
}

// encoder is a json.Encoder bound to its own buffer, kept in a pool so
// encoding a frame allocates only the frame it returns.
type encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// maxPooledBuffer (room for a message frame of the largest text) keeps
// larger buffers (a history reply) out of the pool, so one big reply does
// not pin its memory for ever.
const maxPooledBuffer = 128 << 10

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = json.NewEncoder(&e.buf)
	e.enc.SetEscapeHTML(false)
	return e
}}

// EncodeError encodes e as an error frame.
func EncodeError(e *Error) []byte {
	return Encode(e.Frame())
}

// Frame returns e as the error frame a client receives.
func (e *Error) Frame() ErrorFrame {
	return ErrorFrame{Type: TypeError, Code: e.Code, Message: e.Message, ID: e.ID, RetryAfterMS: e.RetryAfterMS}
}
