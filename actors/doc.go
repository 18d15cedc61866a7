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
//     own account (drain, binary frame). It keeps at most one history or
//     presence request in flight (more: error "busy"). Messages in:
//     *inbound, *closed, *drain, *readStopped (from Session/System),
//     *dropRoom, *flushed, *queryDone (from rooms and the directory).
//     Supervision: Stop (a guardian with a stop decider), never restart: a
//     fresh actor would not know its socket's state.
//   - Directory (directory.go), one: the map room name -> room actor, and the
//     number of joins forwarded to each room. Every *roomOp of every
//     connection travels connection -> directory -> room, so one connection's
//     ops reach a room in the order it sent them. Rooms are its children;
//     their supervision is Stop. It also runs the periodic position check:
//     every CheckInterval one Broker.Positions read of all its rooms (one
//     at a time, on a transient goroutine), and each room gets its
//     position (*positionRead). Measured, it is not a serial point: about
//     2.5 µs per op, a twentieth of what a join or leave costs on the whole
//     path (BenchmarkDirectoryJoinLeave), 2 % of a core at 10,000
//     publishes/s.
//   - Room actor (room.go), one per active room: its members (PID -> name,
//     session, plain flag, replay state), not Watched (a connection actor
//     quits its rooms as it stops); the room's position
//     (the sequencer, order.go); its op queue (sends, and each connection's
//     later ops behind them), its presence queue, and the count of history
//     and presence reads in flight. It owns no state that matters beyond
//     the broker, and it stops only when empty and idle, so stopping it
//     loses nothing.
//   - Relay actor (package relay), one: the node's subscriptions and the
//     routing of deliveries to room actors.
//
// Transient goroutines run every broker call (publish batches, history,
// presence) and post the result back to the actor that asked; they never
// write to a socket (a history or presence reply is encoded there, posted
// to the room, and handed by the room to the asking connection). They are
// counted so Shutdown can wait for them. No goroutine or timer exists per
// connection or per room: the directory has the one check timer
// (time.AfterFunc) of the node's periodic position check. An actor's
// messages are processed on a goroutine of protoactor's dispatcher that
// exists only while its mailbox has messages; connection actors use a
// smaller mailbox of the same semantics (mailbox.go).
//
// # Outbound frames
//
// Every frame an actor queues on a client's socket goes through an outbox
// (outbox.go): connection replies, room fan-out, acks, joined, events and
// the directory's answers for rooms that are gone. The slow-consumer policy
// (a queue over its cap: close 4008, counted in Stats.SlowKicks) is there
// and nowhere else.
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
//     each sender gets exactly one ack{id,room,seq} or
//     error{unavailable,id}, unless its connection is gone. Any other op
//     of a connection with sends queued or in flight (leave, join, flush,
//     history, presence) waits behind them in the room's queue, so left
//     comes after the acks of the sends before the leave.
//   - The room remembers (epoch, last seq delivered) and passes it as known
//     to Broker.PublishBatch, so a bus that lost writes starts a new epoch
//     instead of reusing seqs. A position check (history read for a gap,
//     resync or the periodic check; replays and client history reads only
//     trigger one) that finds the bus below the seq the room had delivered
//     when the read began, in the same epoch, or holding no epoch at all,
//     calls Broker.Rollover; members then get the same reset as after a
//     lost history: joined{recovered:false}, then the new epoch's messages.
//     The periodic check reads history only for a room whose batched
//     position is not exactly the (epoch, last) it delivered
//     (sequencer.current), so a quiet room costs one entry of one pipeline.
//   - joined goes out only after the relay confirmed the subscription. With
//     since: joined, then the replay (seq in (since, last]) from history,
//     then the live frames buffered meanwhile, with no gap and no duplicate.
//   - Presence events are not sent back to the member they are about.
//   - An empty room reports to the directory with the joins it has seen,
//     and only once idle (nothing queued or in flight); the directory stops
//     it only if it forwarded no join since, so a join racing with the stop
//     is never lost, and no publish, presence change or read is cut off.
//   - Every leave, quit (connection stopping) and room stop removes the
//     member from presence, queued behind the presence batch in flight
//     (at a stop, chained after it), so a remove never overtakes its add
//     and none is skipped.
//   - Drain (per connection): reconnect is queued, then the Session stops
//     taking frames (HandleMessage posts under a lock, so every frame taken
//     is in the mailbox ahead of readStopped), every frame taken is served
//     (a join during drain gets error "draining"), each joined room answers
//     an opFlush once it answered the connection's earlier ops, the
//     history/presence request in flight is answered, and only then the
//     connection closes with 1001 (netpoll writes the queue before the close
//     frame).
//   - Writes are coalesced by netpoll's flusher: what is queued on a socket
//     while it waits for the flusher leaves in one writev. Send returning
//     netpoll.ErrQueueFull kicks the connection with 4008, whoever sent.
package actors
