package netpoll

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

func TestAppendFrameMatchesGobwas(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		payload := bytes.Repeat([]byte{'x'}, n)
		got := TextFrame(payload)
		want, err := ws.CompileFrame(ws.NewTextFrame(payload))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("len %d: frame differs from gobwas/ws", n)
		}
	}
}
