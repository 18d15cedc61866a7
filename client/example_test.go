package client_test

import (
	"context"
	"fmt"
	"time"

	"parley/client"
	"parley/node"
)

// A client joins a room, sends, and reads its own message back. Behind the
// calls it resumes on its own: a drained or lost node, a cut network, a
// stalled bus cost the application nothing but time.
func Example() {
	n, _ := node.New(node.Config{Listen: "127.0.0.1:0", Admin: "-"}) // a node of your own, for the example
	n.Start()
	defer n.Shutdown(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Addrs: []string{n.Addr()}, Name: "ann"})
	if err != nil {
		fmt.Println(err) // a *client.RefusedError if the node refused us
		return
	}
	defer c.Close()
	if err := c.Join(ctx, "lobby"); err != nil {
		fmt.Println(err)
		return
	}
	ack, err := c.Send(ctx, "lobby", "hello")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("acked as seq", ack.Seq)
	for e := range c.Events() {
		if e.Kind == client.EventMessage {
			fmt.Printf("%s in %s: %s\n", e.Message.From, e.Room, e.Message.Text)
			break
		}
	}
	// Output:
	// acked as seq 1
	// ann in lobby: hello
}
