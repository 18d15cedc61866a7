// Package client is a Go client for Parley's JSON protocol v1 (the /ws
// endpoint, docs/PROTOCOL.md) that survives what a node does to its clients:
// drains, restarts, slow-consumer kicks, bus outages and lost networks.
//
// A Client keeps one WebSocket connection at a time. When it loses it (a
// reconnect notice, close 1001 or 4008, a network error) it reconnects with
// jittered back-off to the next of its configured addresses (or the same
// address behind a load balancer), rejoins every room with since = the last
// seq it delivered and that seq's epoch, and sends again every send that was
// not answered, with its original id: the node's idempotency window turns a
// send that was in fact published into an ack of the original (repeat). A send
// answered with unavailable, draining or rate_limited is retried with the same
// id after a back-off. Messages reach the application in seq order, each once:
// a message whose seq was already delivered in the same epoch is dropped. A
// lost history (joined{recovered:false}, or a new epoch) is reported as a
// Reset event. A refusal (HTTP 4xx at the upgrade, close 1008, a protocol
// violation the node reports with 1002/1003/1007/1009) ends the client with an
// error instead of a reconnect loop.
//
// # Ownership
//
//   - Client.mu guards the client's state: the current connection, the rooms
//     (joined flag, epoch, last seq delivered), the pending sends and
//     requests, the counters. It is held only briefly and never across
//     network I/O: frames are queued on the connection's writer.
//   - The manager goroutine (Client.run) alone dials: it waits for the current
//     connection to end, backs off, dials, reads the welcome and installs
//     the new connection, then queues the rejoins.
//   - Each connection has one reader goroutine (the only one reading its
//     socket; it decodes frames and applies them to the state under
//     Client.mu) and one writer goroutine (the only one writing its socket;
//     it drains the connection's queue, pongs included).
//   - Retry timers (time.AfterFunc) only take Client.mu and queue frames; a
//     close timer cuts a socket whose close handshake hangs.
//   - The event pump goroutine alone sends on the Events channel, from an
//     unbounded queue, so a slow application never stalls the reader.
//
// Close stops every goroutine the client started and waits for them.
package client
