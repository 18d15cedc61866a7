// Package actors is the heart of a Parley node: one protoactor-go actor
// system holding a connection actor per socket, a room actor per active
// room, one directory and one relay actor (package relay).
//
// # Actors and what each alone owns
//
//   - Connection actor (conn.go), one per socket, spawned by
//     System.Connect: its session (id, name, plain flag) and the names of the
//     rooms it joined. It decodes client frames (protocol v1), answers
//     errors with an error frame echoing the frame's id, and sends room
//     operations to the directory; it alone closes its Transport on its
//     own account (drain, binary frame). Messages in: *inbound, *closed,
//     *drain (from Session/System), *dropRoom (from rooms). Supervision:
//     Stop (a guardian with a stop decider), never
//     restart: a fresh actor would not know its socket's state.
//   - Directory (directory.go), one: the map room name -> room actor, and the
//     number of joins forwarded to each room. Every *roomOp of every
//     connection travels connection -> directory -> room, so one connection's
//     ops reach a room in the order it sent them. Rooms are its children;
//     their supervision is Stop.
//   - Room actor (room.go), one per active room: its members (PID -> name,
//     session, plain flag, replay state), each Watched; the room's position
//     (the sequencer, order.go); its publish and presence queues. It owns no
//     state that matters beyond the broker, so stopping it loses nothing.
//   - Relay actor (package relay), one: the node's subscriptions and the
//     routing of deliveries to room actors.
//
// Transient goroutines run every broker call (publish batches, history,
// presence) and post the result back to the actor that asked; they are
// counted so Shutdown can wait for them. No goroutine or timer exists per
// connection; each room has one check timer (time.AfterFunc).
//
// # Ordering invariants
//
//   - A room delivers strictly in seq order within an epoch (sequencer):
//     seq <= last is dropped, seq > last+1 is held while history fills the
//     gap, a new epoch resets the position and members get
//     joined{recovered:false}. Resync (from the relay) and the periodic
//     check read history after last.
//   - Fan-out encodes a message once per flavour (JSON frame; raw text
//     frame only if plain members exist) and queues the same bytes on every
//     member's Transport directly (Transport.Send is safe from any
//     goroutine: the socket's queue has its own lock in netpoll). Every
//     frame a room sends a member (joined, replay, messages, acks, events)
//     takes this one path, so they stay in the room's order. A mailbox hop
//     per delivery cost a mailbox node, a scheduling goroutine and a flush
//     message: 58 ms to reach 10,000 members, against 0.6 ms now.
//   - Publishes leave a room in the order received, one batch in flight;
//     each sender gets ack{id,room,seq} or error{unavailable,id}.
//   - joined goes out only after the relay confirmed the subscription. With
//     since: joined, then the replay (seq in (since, last]) from history,
//     then the live frames buffered meanwhile, with no gap and no duplicate.
//   - Presence events are not sent back to the member they are about.
//   - An empty room reports to the directory with the joins it has seen;
//     the directory stops it only if it forwarded no join since, so a join
//     racing with the stop is never lost.
//   - Writes are coalesced by netpoll's flusher: what is queued on a socket
//     while it waits for the flusher leaves in one writev. Send returning
//     netpoll.ErrQueueFull kicks the connection with 4008, whoever sent.
package actors
