// Package relay is the bus side of a Parley node: the Broker contract
// (broker.go), its implementations (the in-process memory broker in
// broker_memory.go, the Redis broker in broker_redis*.go) and the relay actor
// (relay.go) that sits between room actors and the Broker. Fault injection
// for tests lives in package relaytest, a wrapper around any Broker; the
// brokers themselves have no test hooks.
//
// # Ownership
//
//   - A Broker owns its rooms' sequence numbers, epochs, history windows,
//     idempotency records, presence sets and subscriptions. The memory broker guards all of them
//     with one mutex (Memory.mu) and calls the Handler while holding it, so
//     deliveries of one room reach the handler in seq order; the handler must
//     not block and must not call back into the broker.
//   - The relay actor (one per node) owns the node's subscriptions: which
//     room is subscribed, which room actor (PID) receives its deliveries and
//     which broker call is in flight for it. Only its Receive touches that
//     state. It never blocks: every broker call runs on a transient goroutine
//     and its result comes back to the actor as a message. At most one
//     subscribe/unsubscribe call is in flight per room, so calls for one room
//     reach the broker in the order the actor decided them.
//   - The Redis broker's goroutines: one receive loop per subscriber
//     connection (one on a single server or Sentinel, one per hash slot in
//     use on a Cluster: sharded pub/sub cannot mix slots on one
//     connection), and one keeper that probes Redis, heartbeats this node,
//     reaps dead nodes' presence and retries this node's failed presence
//     removals. Each receive loop alone reads its
//     PubSub and never blocks on the Handler. The doc comment on type Redis
//     lists what each goroutine owns.
//   - The Handler the relay installs on the Broker only posts to the relay
//     actor's mailbox; it runs on the broker's goroutines.
//
// # Messages
//
// Room actors send *Subscribe and *Unsubscribe to the relay; the relay
// answers *Subscribed and forwards *Delivery, *PresenceDelivery and *Resync
// to the room actor that currently owns the room.
package relay
