package protocol

import (
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// MaxNameLen is the longest valid user name, in characters (runes after
// NFC normalization).
const MaxNameLen = 32

// NormalizeName checks a display name chosen by a client and returns its
// NFC form, the form every node stores and shows. A valid name is 1 to
// MaxNameLen characters of letters (with their combining marks), digits,
// punctuation and single inner spaces; its letters come from one script
// (Han, Hiragana, Katakana, Hangul and Bopomofo may mix with each other and
// with Latin, as Japanese, Korean and Chinese names do). Refused: control,
// format, bidi, private-use and unassigned characters (so no BOM, zero-width
// space, right-to-left override or C1 control), symbols and other spaces,
// the characters " and &, and names mixing scripts such as Latin and
// Cyrillic (the homograph "аlice").
func NormalizeName(name string) (string, error) {
	if !utf8.ValidString(name) {
		return "", errors.New("name is not valid UTF-8")
	}
	name = norm.NFC.String(name)
	n := utf8.RuneCountInString(name)
	if n == 0 || n > MaxNameLen {
		return "", fmt.Errorf("name must be 1 to %d characters", MaxNameLen)
	}
	if name[0] == ' ' || name[len(name)-1] == ' ' {
		return "", errors.New("name must not start or end with a space")
	}
	var scripts scriptSet
	prev := rune(0)
	for i, r := range name {
		switch {
		case r == ' ':
			if prev == ' ' {
				return "", errors.New("name must not hold two spaces in a row")
			}
		case r == '"' || r == '&':
			return "", errors.New(`name must not hold " or &`)
		case unicode.IsLetter(r):
			scripts.add(r)
		case unicode.Is(unicode.M, r):
			if i == 0 {
				return "", errors.New("name must not start with a combining mark")
			}
		case unicode.IsDigit(r), unicode.IsPunct(r):
		default:
			return "", fmt.Errorf("name may hold only letters, digits, punctuation and spaces, not %U", r)
		}
		prev = r
	}
	if !scripts.ok() {
		return "", errors.New("name mixes letters of different scripts")
	}
	return name, nil
}

// CheckName reports whether name is a valid name already in NFC form (see
// NormalizeName); node ids are checked with it.
func CheckName(name string) error {
	got, err := NormalizeName(name)
	if err != nil {
		return err
	}
	if got != name {
		return errors.New("name is not in Unicode NFC form")
	}
	return nil
}

// scriptSet records the scripts of a name's letters.
type scriptSet struct {
	cjk   bool // Han, Hiragana, Katakana, Hangul or Bopomofo
	other *unicode.RangeTable
	mixed bool
}

var cjkScripts = []*unicode.RangeTable{unicode.Han, unicode.Hiragana, unicode.Katakana, unicode.Hangul, unicode.Bopomofo}

func (s *scriptSet) add(r rune) {
	for _, t := range cjkScripts {
		if unicode.Is(t, r) {
			s.cjk = true
			return
		}
	}
	t := scriptOf(r)
	switch {
	case s.other == nil:
		s.other = t
	case s.other != t:
		s.mixed = true
	}
}

// ok: letters of one script, or CJK scripts with at most Latin beside them.
func (s *scriptSet) ok() bool {
	if s.mixed {
		return false
	}
	return !s.cjk || s.other == nil || s.other == unicode.Latin
}

// scriptOf returns the script table holding letter r (nil if none does).
func scriptOf(r rune) *unicode.RangeTable {
	if r < utf8.RuneSelf {
		return unicode.Latin
	}
	for name, t := range unicode.Scripts {
		if name == "Common" || name == "Inherited" {
			continue
		}
		if unicode.Is(t, r) {
			return t
		}
	}
	return nil
}
