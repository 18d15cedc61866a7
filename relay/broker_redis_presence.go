package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// AddPresence records m in room's presence hash and publishes
// member_joined on the room channel (one script). The first member of this
// node in room also adds room to the node's room set, which the survivors
// read to clean up after this node if it dies.
func (r *Redis) AddPresence(ctx context.Context, room string, m Member) error {
	if err := rdsCheckRoom(room); err != nil {
		return err
	}
	if m.Node == "" {
		m.Node = r.cfg.NodeID
	}
	r.mu.Lock()
	members := r.presence[room]
	first := len(members) == 0
	if members == nil {
		members = map[string]Member{}
		r.presence[room] = members
	}
	members[m.Session] = m
	r.unleaveLocked(room, m.Session)
	r.mu.Unlock()
	if err := r.addPresence(ctx, room, m, first); err != nil {
		r.mu.Lock()
		if cur, ok := r.presence[room][m.Session]; ok && cur == m {
			delete(r.presence[room], m.Session)
			if len(r.presence[room]) == 0 {
				delete(r.presence, room)
			}
			// The script may have run before the error (a timeout): the
			// keeper removes the member, announcing member_left only if it
			// was recorded, so a failed add leaves no ghost.
			r.leaveLocked(room, m)
		}
		r.mu.Unlock()
		return err
	}
	return nil
}

// leaveLocked records a removal for the keeper to retry. Lock should be
// held.
func (r *Redis) leaveLocked(room string, m Member) {
	if r.closed {
		return
	}
	if r.leaving[room] == nil {
		r.leaving[room] = map[string]Member{}
	}
	r.leaving[room][m.Session] = m
}

// unleaveLocked forgets a pending removal of session (it is present again).
// Lock should be held.
func (r *Redis) unleaveLocked(room, session string) {
	if set := r.leaving[room]; set != nil {
		delete(set, session)
		if len(set) == 0 {
			delete(r.leaving, room)
		}
	}
}

// nodeKeysTTL is the TTL of this node's own keys (its room set; the shared
// heartbeat set too), refreshed by every heartbeat: long enough for the
// survivors to clean up after a dead node, short enough that nothing
// stays once every node is gone.
func (r *Redis) nodeKeysTTL() time.Duration { return 4 * r.cfg.PresenceTimeout }

// presenceTTL is the TTL of a room's presence hash, refreshed by every
// add and by the keeper for the rooms this node has members in.
func (r *Redis) presenceTTL() time.Duration { return max(r.cfg.HistoryTTL, r.cfg.PresenceTimeout) }

func (r *Redis) addPresence(ctx context.Context, room string, m Member, first bool) error {
	if first {
		key := rdsNodeRoomsKey(r.cfg.NodeID)
		_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.SAdd(ctx, key, room)
			p.PExpire(ctx, key, r.nodeKeysTTL())
			return nil
		})
		if err != nil {
			return r.unavailable("add presence", room, err)
		}
	}
	b, err := json.Marshal(rdsMember{Session: m.Session, Name: m.Name, Node: m.Node})
	if err != nil {
		return fmt.Errorf("relay: redis add presence %q: %w", room, err)
	}
	err = rdsPresenceAddScript.Run(ctx, r.client, []string{rdsPresKey(room), rdsChannel(room)},
		m.Session, b, r.pubCmd, r.presenceTTL().Milliseconds()).Err()
	if err != nil {
		return r.unavailable("add presence", room, err)
	}
	return nil
}

// RemovePresence removes m (by session) from room's presence and, if it was
// there, publishes member_left (one script, so member_left is announced at
// most once per member). The member leaves this node's list at once: it is
// never announced again. If Redis cannot be reached the removal is kept
// and retried by the keeper until it succeeds.
func (r *Redis) RemovePresence(ctx context.Context, room string, m Member) error {
	if err := rdsCheckRoom(room); err != nil {
		return err
	}
	r.mu.Lock()
	if members := r.presence[room]; members != nil {
		delete(members, m.Session)
		if len(members) == 0 {
			delete(r.presence, room)
		}
	}
	r.mu.Unlock()
	if err := r.removePresence(ctx, room, m); err != nil {
		r.mu.Lock()
		if _, back := r.presence[room][m.Session]; !back {
			r.leaveLocked(room, m)
		}
		r.mu.Unlock()
		return r.unavailable("remove presence", room, err)
	}
	return nil
}

// removePresence runs the remove script and, if this node has no member
// left in room, takes room out of the node's room set.
func (r *Redis) removePresence(ctx context.Context, room string, m Member) error {
	err := rdsPresenceRemoveScript.Run(ctx, r.client, []string{rdsPresKey(room), rdsChannel(room)},
		m.Session, r.pubCmd).Err()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.unleaveLocked(room, m.Session)
	last := len(r.presence[room]) == 0 && len(r.leaving[room]) == 0
	r.mu.Unlock()
	if last {
		// Best effort: a stale entry only costs the reaper one empty scan.
		_ = r.client.SRem(ctx, rdsNodeRoomsKey(r.cfg.NodeID), room).Err()
	}
	return nil
}

// retryLeaving runs the removals that failed, for the keeper.
func (r *Redis) retryLeaving(ctx context.Context) {
	r.mu.Lock()
	all := appendRoomMembers(nil, r.leaving)
	r.mu.Unlock()
	for _, e := range all {
		if err := r.removePresence(ctx, e.room, e.m); err != nil {
			r.log.Debug("redis presence removal retry", "room", e.room, "err", err)
			return
		}
	}
}

// refreshPresence renews the TTL of the presence hashes of the rooms this
// node has members in, so a member who stays joined longer than the TTL
// without anyone joining after them is not forgotten.
func (r *Redis) refreshPresence(ctx context.Context) {
	r.mu.Lock()
	rooms := make([]string, 0, len(r.presence))
	for room := range r.presence {
		rooms = append(rooms, room)
	}
	r.mu.Unlock()
	ttl := r.presenceTTL()
	for len(rooms) > 0 {
		n := min(len(rooms), 500)
		_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, room := range rooms[:n] {
				p.PExpire(ctx, rdsPresKey(room), ttl)
			}
			return nil
		})
		if err != nil {
			r.log.Debug("redis presence refresh", "err", err)
			return
		}
		rooms = rooms[n:]
	}
}

// Presence lists room's members whose node is live (heartbeat within 4/5 of
// PresenceTimeout, by the Redis clock).
func (r *Redis) Presence(ctx context.Context, room string) ([]Member, error) {
	if err := rdsCheckRoom(room); err != nil {
		return nil, err
	}
	live, err := rdsLiveNodesScript.Run(ctx, r.client, []string{rdsNodesKey}, r.deadMS).StringSlice()
	if err != nil {
		return nil, r.unavailable("presence", room, err)
	}
	liveSet := make(map[string]bool, len(live))
	for _, n := range live {
		liveSet[n] = true
	}
	vals, err := r.client.HVals(ctx, rdsPresKey(room)).Result()
	if err != nil {
		return nil, r.unavailable("presence", room, err)
	}
	out := make([]Member, 0, len(vals))
	for _, v := range vals {
		var mb rdsMember
		if err := json.Unmarshal([]byte(v), &mb); err != nil {
			continue
		}
		if liveSet[mb.Node] {
			out = append(out, Member{Session: mb.Session, Name: mb.Name, Node: mb.Node})
		}
	}
	return out, nil
}

// keep is the keeper goroutine: it probes Redis every ProbeInterval and
// heartbeats every PresenceTimeout/5 (claiming and cleaning up dead nodes).
func (r *Redis) keep() {
	defer r.wg.Done()
	probe := time.NewTicker(r.cfg.ProbeInterval)
	defer probe.Stop()
	hb := time.NewTicker(r.cfg.PresenceTimeout / 5)
	defer hb.Stop()
	refresh := time.NewTicker(r.presenceTTL() / 4)
	defer refresh.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-probe.C:
			r.probe()
		case <-hb.C:
			if !r.hbPaused.Load() {
				r.heartbeat()
			}
		case <-refresh.C:
			ctx, cancel := context.WithTimeout(r.ctx, r.cfg.PresenceTimeout)
			r.refreshPresence(ctx)
			cancel()
		}
	}
}

func (r *Redis) probe() {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.DialTimeout+r.cfg.IOTimeout)
	defer cancel()
	err := r.client.Ping(ctx).Err()
	if err != nil && r.ctx.Err() != nil {
		return // closing
	}
	ok := err == nil
	r.setState(&ok, 0, err)
}

// heartbeat records this node as live and cleans up after the nodes this
// call claimed as dead. If this node was not listed (Redis lost its data, or
// the others declared it dead) its members are announced again.
func (r *Redis) heartbeat() {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.PresenceTimeout)
	defer cancel()
	res, err := rdsHeartbeatScript.Run(ctx, r.client, []string{rdsNodesKey}, r.cfg.NodeID, r.deadMS,
		r.nodeKeysTTL().Milliseconds()).Slice()
	if err != nil {
		if r.ctx.Err() == nil {
			r.nErrors.Add(1)
			r.lastErrorAt.Store(time.Now().UnixMilli())
			r.log.Debug("redis heartbeat", "err", err)
		}
		return
	}
	if len(res) != 2 {
		return
	}
	if added, _ := res[0].(int64); added == 1 {
		r.reannounce(ctx)
	} else {
		// Keep this node's room set alive as long as the node is.
		_ = r.client.PExpire(ctx, rdsNodeRoomsKey(r.cfg.NodeID), r.nodeKeysTTL()).Err()
	}
	r.retryLeaving(ctx)
	dead, _ := res[1].([]any)
	for _, d := range dead {
		if node, ok := d.(string); ok && node != r.cfg.NodeID {
			r.reap(ctx, node)
		}
	}
}

// reannounce adds every local member again.
func (r *Redis) reannounce(ctx context.Context) {
	r.mu.Lock()
	all := appendRoomMembers(nil, r.presence)
	r.mu.Unlock()
	if len(all) > 0 {
		r.log.Info("redis presence re-announced", "members", len(all))
	}
	seen := map[string]bool{}
	for _, e := range all {
		if err := r.addPresence(ctx, e.room, e.m, !seen[e.room]); err != nil {
			r.log.Debug("redis re-announce", "room", e.room, "err", err)
		}
		seen[e.room] = true
		// A member that left while this ran (its removal found nothing to
		// remove yet) is removed again, so it is not left behind.
		r.mu.Lock()
		_, still := r.presence[e.room][e.m.Session]
		r.mu.Unlock()
		if !still {
			if err := r.removePresence(ctx, e.room, e.m); err != nil {
				r.log.Debug("redis re-announce: remove departed", "room", e.room, "err", err)
			}
		}
	}
}

// reap removes every member of the dead node, one room at a time (rooms
// may live in different cluster slots), publishing member_left for each.
// This node won the claim in the heartbeat script, so nobody else does it.
func (r *Redis) reap(ctx context.Context, node string) {
	key := rdsNodeRoomsKey(node)
	rooms, err := r.client.SMembers(ctx, key).Result()
	if err != nil {
		r.log.Warn("redis reap: list rooms", "dead_node", node, "err", err)
		return
	}
	total := 0
	for _, room := range rooms {
		n, err := rdsPresenceReapScript.Run(ctx, r.client, []string{rdsPresKey(room), rdsChannel(room)}, node, r.pubCmd).Int()
		if err != nil {
			r.log.Warn("redis reap", "dead_node", node, "room", room, "err", err)
			continue
		}
		total += n
	}
	_ = r.client.Del(ctx, key).Err()
	r.log.Info("redis reaped dead node", "dead_node", node, "rooms", len(rooms), "members", total)
}

// leave removes this node's members (announcing member_left) and its
// heartbeat, for a graceful Close.
func (r *Redis) leave(ctx context.Context) {
	r.mu.Lock()
	all := appendRoomMembers(appendRoomMembers(nil, r.presence), r.leaving)
	clear(r.presence)
	clear(r.leaving)
	r.mu.Unlock()
	var errs []error
	for _, e := range all {
		errs = append(errs, rdsPresenceRemoveScript.Run(ctx, r.client, []string{rdsPresKey(e.room), rdsChannel(e.room)},
			e.m.Session, r.pubCmd).Err())
	}
	errs = append(errs, r.client.Del(ctx, rdsNodeRoomsKey(r.cfg.NodeID)).Err())
	errs = append(errs, r.client.ZRem(ctx, rdsNodesKey, r.cfg.NodeID).Err())
	if err := errors.Join(errs...); err != nil {
		r.log.Debug("redis leave", "err", err)
	}
}

// rdsSlot is the Redis Cluster slot of key (CRC16/XMODEM of the hash tag).
func rdsSlot(key string) int {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for j := 0; j < 8; j++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// roomMember is one entry of a room -> session -> member map.
type roomMember struct {
	room string
	m    Member
}

// appendRoomMembers appends every entry of byRoom to out, so the caller can
// release the lock before making Redis calls for them. Lock should be held.
func appendRoomMembers(out []roomMember, byRoom map[string]map[string]Member) []roomMember {
	for room, members := range byRoom {
		for _, m := range members {
			out = append(out, roomMember{room, m})
		}
	}
	return out
}
