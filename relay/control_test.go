package relay_test

import (
	"context"
	"testing"

	"parley/relay"
)

// TestDisconnectRoutedToTheRoom: a disconnect on the memory bus reaches
// the relay actor and, through it, the room actor that owns the room, and
// only that one; a room nobody subscribed gets nothing.
func TestDisconnectRoutedToTheRoom(t *testing.T) {
	sys := actorTestSystem(t)
	mem := relay.NewMemory(relay.MemoryConfig{})
	pid, err := relay.Spawn(sys.Root, relay.ActorConfig{Broker: mem})
	if err != nil {
		t.Fatal(err)
	}
	roomA, chA := actorProbe(t, sys)
	roomB, chB := actorProbe(t, sys)
	sys.Root.Send(pid, &relay.Subscribe{Room: "a", PID: roomA})
	sys.Root.Send(pid, &relay.Subscribe{Room: "b", PID: roomB})
	actorExpect[*relay.Subscribed](t, chA)
	actorExpect[*relay.Subscribed](t, chB)
	ctx := context.Background()
	if err := mem.Disconnect(ctx, "nobody-here", "bob"); err != nil {
		t.Fatal(err)
	}
	if err := mem.Disconnect(ctx, "a", "bob"); err != nil {
		t.Fatal(err)
	}
	d := actorExpect[*relay.Disconnect](t, chA)
	if d.Room != "a" || d.User != "bob" {
		t.Fatalf("room a got %+v", d)
	}
	// b got nothing: the next thing it sees is its own message.
	if _, err := mem.Publish(ctx, relay.Message{Room: "b", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	actorExpect[*relay.Delivery](t, chB)
	mem.Close()
	if err := mem.Disconnect(ctx, "a", "bob"); err == nil {
		t.Fatal("disconnect on a closed bus succeeded")
	}
}
