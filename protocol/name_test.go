package protocol

import (
	"strings"
	"testing"
)

func TestNormalizeName(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" means refused
	}{
		{"alice", "alice"},
		{"Zoë", "Zoë"},
		{"Zoe\u0308", "Zoë"}, // decomposed: stored as NFC
		{"Jean-Luc O'Brien", "Jean-Luc O'Brien"},
		{"user_42", "user_42"},
		{"Ἀθηνᾶ", "Ἀθηνᾶ"},
		{"Дмитрий", "Дмитрий"},
		{"山田太郎", "山田太郎"},
		{"たなか Taro", "たなか Taro"},
		{"김민준", "김민준"},
		{"हिन्दी", "हिन्दी"}, // combining vowel signs inside a word
		{strings.Repeat("é", 32), strings.Repeat("é", 32)},

		{"", ""},
		{strings.Repeat("a", 33), ""},
		{" alice", ""},
		{"alice ", ""},
		{"al  ice", ""},
		{"ali\u200bce", ""},        // zero-width space
		{"\ufeffalice", ""},        // BOM
		{"alice\u202egnp.exe", ""}, // right-to-left override
		{"ali\u200dce", ""},        // zero-width joiner
		{"alice\u0085", ""},        // C1 control (NEL)
		{"ali\u009bce", ""},        // C1 control (CSI)
		{"ali\tce", ""},
		{"ali\x00ce", ""},
		{"ali\ue000ce", ""},      // private use
		{"ali\u00a0ce", ""},      // no-break space
		{"ali\u3000ce", ""},      // ideographic space
		{"\u0430lice", ""},       // Cyrillic а among Latin letters
		{"p\u0430yp\u0430l", ""}, // homograph
		{"\u0391lice", ""},       // Greek capital alpha among Latin letters
		{"\u0301alice", ""},      // starts with a combining mark
		{"<script>", ""},         // symbols
		{"a\"b", ""},
		{"a&b", ""},
		{"💬chat", ""},
		{"\xff\xfe", ""},
	} {
		got, err := NormalizeName(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("NormalizeName(%+q) = %+q, want refused", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizeName(%+q) = %+q, %v; want %+q", tc.in, got, err, tc.want)
		}
	}
}

func TestCheckNameWantsNFC(t *testing.T) {
	if err := CheckName("Zoë"); err != nil {
		t.Fatalf("CheckName(NFC Zoë): %v", err)
	}
	if err := CheckName("Zoe\u0308"); err == nil {
		t.Fatal("CheckName accepted a name not in NFC")
	}
}
