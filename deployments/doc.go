// Package deployments holds no code a program imports: it is the home of the
// files that run Parley behind HAProxy (haproxy/, local/, docker/,
// node.env), and its tests check them and run them for real: HAProxy's
// own config check, docker-compose's, the agreement between the compose file
// and the local cluster, and whole clusters of real node binaries, Redis
// and HAProxy on loopback (chat, rolling restart, kill -9, a real browser).
package deployments
