// Package conformance is the node's WebSocket conformance suite: go tests
// that start a real node on 127.0.0.1 and speak to it with raw bytes on a
// TCP socket (no client library to hide anything), modelled on the
// Autobahn|Testsuite case groups 1–7 and 9 and on RFC 6455 §5 (framing) and
// §7 (closing), run against both endpoints: / (plain text, where a text
// message comes back as itself, like Autobahn's echo server) and /ws (JSON,
// where a send comes back as a message frame, and ping as pong).
//
// Where Parley's policy differs from Autobahn's echo server it is said in
// the case: binary messages are refused with 1003 (a chat carries text),
// and messages above --max-message-size with 1009.
//
// The package has no code outside its tests.
package conformance
