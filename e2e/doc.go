// Package e2e holds Parley's end-to-end reliability tests and its chaos soak.
// It has no code outside its tests: they build the real node binary, start
// real redis-server processes (relay/redistest) and node processes on free
// 127.0.0.1 ports, and drive them with the resuming Go client (package
// client) while they inject faults: SIGTERM of a node, SIGSTOP of Redis, a
// Redis restart from its append-only file, cut client connections.
//
// Each test ends by checking what a user would check: every send answered
// (after the client's retries), every acked message in history once and at
// its acked seq, and every client's view of each room equal to history from
// its join on, in order, once. `make soak` runs TestSoak for SOAK_DURATION
// (default 3m); `make test` runs it for 30 seconds.
//
// Ownership: each test goroutine owns its processes and injects the faults
// itself; every simulated user is a client.Client with one goroutine that
// records its events and one that paces its sends (each send waits on its
// own goroutine, so a slow answer does not slow the rate).
package e2e
