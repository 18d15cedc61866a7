package main

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"

	"parley/relay"
)

// busCheckTimeout bounds the start-up probe that explains a down bus.
const busCheckTimeout = 3 * time.Second

// logBusState says at start where the bus is and whether it answers, so a
// wrong or unreachable Redis shows in the first lines of the log rather
// than in a user's failed join. A down bus is logged at error level with
// Redis's own reason (refused, timeout, "DB index is out of range" for a
// db number Redis does not have, auth), and the node still starts: the
// broker comes up by itself when Redis answers.
func logBusState(log *slog.Logger, b *relay.Redis, redisURL, cluster, sentinel string) {
	where := []any{}
	switch {
	case redisURL != "":
		where = append(where, "redis", redactURL(redisURL))
	case cluster != "":
		where = append(where, "redis_cluster", cluster)
	default:
		where = append(where, "redis_sentinel", sentinel)
	}
	if b.Stats().Up {
		log.Info("bus: redis up", where...)
		return
	}
	reason := "no answer to PING"
	if redisURL != "" {
		reason = probeURL(redisURL).Error()
	}
	log.Error("bus: REDIS UNREACHABLE: joins and sends fail with \"unavailable\" until it answers; check the address, port, db number and password",
		append(where, "reason", reason)...)
}

// probeURL pings the Redis of url once with a fresh client and returns why
// it failed (go-redis runs AUTH and SELECT on connect, so a bad password or
// db number shows here).
func probeURL(u string) error {
	opt, err := redis.ParseURL(u)
	if err != nil {
		return err
	}
	opt.MaxRetries, opt.DialerRetries = -1, 1
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), busCheckTimeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return err
	}
	return errAnsweredLater
}

// errAnsweredLater: the probe succeeded after the broker's first one failed.
//
//lint:ignore ST1005 Redis is a name; the text is logged as a sentence.
var errAnsweredLater = errors.New("Redis answers now; the bus comes up by itself")

// redactURL hides a password in a Redis URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
