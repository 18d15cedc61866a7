package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	u := func(v uint64) *uint64 { return &v }
	cases := []struct {
		name string
		in   string
		want ClientFrame
		code string // expected error code; "" means valid
		id   string // id the error must echo
	}{
		{"join", `{"type":"join","room":"lobby"}`, ClientFrame{Type: "join", Room: "lobby"}, "", ""},
		{"join since", `{"type":"join","room":"a.b:c-d_e","since":42,"epoch":"x1"}`, ClientFrame{Type: "join", Room: "a.b:c-d_e", Since: u(42), Epoch: "x1"}, "", ""},
		{"join since zero", `{"type":"join","room":"r","since":0}`, ClientFrame{Type: "join", Room: "r", Since: u(0)}, "", ""},
		{"leave", `{"type":"leave","room":"r"}`, ClientFrame{Type: "leave", Room: "r"}, "", ""},
		{"send", `{"type":"send","room":"r","text":"hi","id":"c1"}`, ClientFrame{Type: "send", Room: "r", Text: "hi", ID: "c1"}, "", ""},
		{"history", `{"type":"history","room":"r","before":9,"limit":50}`, ClientFrame{Type: "history", Room: "r", Before: 9, Limit: 50}, "", ""},
		{"presence", `{"type":"presence","room":"r"}`, ClientFrame{Type: "presence", Room: "r"}, "", ""},
		{"ping", `{"type":"ping"}`, ClientFrame{Type: "ping"}, "", ""},
		{"unknown field ignored", `{"type":"ping","extra":[1,2]}`, ClientFrame{Type: "ping"}, "", ""},
		{"malformed", `{"type":"send",`, ClientFrame{}, CodeBadRequest, ""},
		{"not an object", `[1,2]`, ClientFrame{}, CodeBadRequest, ""},
		{"wrong field type keeps id", `{"type":"join","room":"r","since":"x","id":"c7"}`, ClientFrame{}, CodeBadRequest, "c7"},
		{"missing type", `{"room":"r","id":"c2"}`, ClientFrame{}, CodeBadRequest, "c2"},
		{"unknown type", `{"type":"shout","id":"c3"}`, ClientFrame{}, CodeUnknownType, "c3"},
		{"bad room chars", `{"type":"join","room":"a b","id":"c4"}`, ClientFrame{}, CodeBadRoom, "c4"},
		{"room too long", `{"type":"join","room":"` + strings.Repeat("a", 65) + `"}`, ClientFrame{}, CodeBadRoom, ""},
		{"room max", `{"type":"join","room":"` + strings.Repeat("a", 64) + `"}`, ClientFrame{Type: "join", Room: strings.Repeat("a", 64)}, "", ""},
		{"empty room", `{"type":"send","room":"","text":"x"}`, ClientFrame{}, CodeBadRoom, ""},
		{"empty text", `{"type":"send","room":"r","id":"c5"}`, ClientFrame{}, CodeBadText, "c5"},
		{"control character in text", `{"type":"send","room":"r","text":"a\u0001b","id":"c8"}`, ClientFrame{}, CodeBadText, "c8"},
		{"escape in text", `{"type":"send","room":"r","text":"\u001b[31m"}`, ClientFrame{}, CodeBadText, ""},
		{"tab and line breaks in text", `{"type":"send","room":"r","text":"a\tb\r\nc <&>"}`, ClientFrame{Type: "send", Room: "r", Text: "a\tb\r\nc <&>"}, "", ""},
		{"negative limit", `{"type":"history","room":"r","limit":-1}`, ClientFrame{}, CodeBadRequest, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode([]byte(tc.in))
			if tc.code == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(tc.want)
				if string(gj) != string(wj) {
					t.Fatalf("got %s, want %s", gj, wj)
				}
				return
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("want *Error with code %s, got %v", tc.code, err)
			}
			if pe.Code != tc.code || pe.ID != tc.id {
				t.Fatalf("got code %q id %q, want %q %q (%v)", pe.Code, pe.ID, tc.code, tc.id, pe)
			}
		})
	}
}

func TestCheckName(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"alice", true}, {"Zoë", true}, {"guest-1a2b", true}, {"a b", true},
		{"", false}, {strings.Repeat("x", 33), false}, {" lead", false}, {"trail ", false},
		{"<script>", false}, {"a\x00b", false}, {"tab\tx", false}, {"\xff", false}, {`q"`, false},
	}
	for _, tc := range cases {
		if err := CheckName(tc.name); (err == nil) != tc.ok {
			t.Errorf("CheckName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestEncodeErrorEchoesID(t *testing.T) {
	b := EncodeError(Errorf(CodeNotJoined, "c9", "not in room %q", "r"))
	want := `{"type":"error","code":"not_joined","message":"not in room \"r\"","id":"c9"}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
}

// FuzzDecode checks that no input panics Decode and that every accepted
// frame is valid by the protocol's own rules.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"join","room":"lobby","since":3}`, `{"type":"send","room":"r","text":"hi","id":"1"}`,
		`{"type":"history","room":"r","before":5,"limit":2}`, `{"type":"ping"}`, `{`, `null`, `""`,
		`{"type":"send","room":"r","text":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := Decode(data)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Code == "" {
				t.Fatalf("error is not a coded *Error: %v", err)
			}
			EncodeError(pe) // must not panic
			return
		}
		switch fr.Type {
		case TypeJoin, TypeLeave, TypeSend, TypeHistory, TypePresence:
			if CheckRoom(fr.Room) != nil {
				t.Fatalf("accepted bad room %q", fr.Room)
			}
		case TypePing:
		default:
			t.Fatalf("accepted unknown type %q", fr.Type)
		}
		if fr.Type == TypeSend && fr.Text == "" {
			t.Fatal("accepted empty text")
		}
	})
}
