package actors

import "hash/maphash"

// indexSeed seeds the hash of every memberIndex: random per process, so
// chosen names cannot be made to collide.
var indexSeed = maphash.MakeSeed()

// memberIndex finds a member's position in room.members by one key of the
// member: its connection's PID id (room.byConn) or its name (room.byName).
// It is an open-addressing hash table with linear probing whose slots hold
// positions, 4 bytes each, at most 3/4 full: ~9 bytes a member, where a
// map[string]int or map[string]*member cost ~55 (heap profile, one room of
// 15,000 members). The keys are not copied: a slot's key is read from the
// member it points to, so the table must change with room.members (insert
// after an append, remove and move before the swap that removes a member).
// Owned by the room actor, like the members.
type memberIndex struct {
	slots  []int32 // position in members + 1; 0 is an empty slot
	n      int     // slots in use
	byName bool    // keyed by member name, else by connection PID id
}

func (x *memberIndex) keyOf(m *member) string {
	if x.byName {
		return m.name
	}
	return m.sess.pid.Id
}

func (x *memberIndex) home(key string) int {
	return int(maphash.String(indexSeed, key) & uint64(len(x.slots)-1))
}

// find returns the position of the member with key.
func (x *memberIndex) find(members []*member, key string) (int, bool) {
	if x.n == 0 {
		return 0, false
	}
	mask := len(x.slots) - 1
	for i := x.home(key); ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			return 0, false
		}
		if x.keyOf(members[s-1]) == key {
			return int(s - 1), true
		}
	}
}

// slotOf returns the slot holding position pos (members[pos] still in
// place), or -1 if none does (byName: another member holds the name).
func (x *memberIndex) slotOf(members []*member, pos int) int {
	if x.n == 0 {
		return -1
	}
	mask := len(x.slots) - 1
	for i := x.home(x.keyOf(members[pos])); ; i = (i + 1) & mask {
		switch x.slots[i] {
		case 0:
			return -1
		case int32(pos + 1):
			return i
		}
	}
}

// set makes members[pos] the one found by its key: it replaces the member
// that had the same key, if any (byName: the latest member to join with a
// name holds it, as names may repeat under token auth).
func (x *memberIndex) set(members []*member, pos int) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.resize(members, max(8, 2*len(x.slots)))
	}
	key := x.keyOf(members[pos])
	mask := len(x.slots) - 1
	i := x.home(key)
	for ; x.slots[i] != 0; i = (i + 1) & mask {
		if x.keyOf(members[x.slots[i]-1]) == key {
			x.slots[i] = int32(pos + 1)
			return
		}
	}
	x.slots[i] = int32(pos + 1)
	x.n++
}

// remove drops position pos (members[pos] still in place), if it is in the
// table: later slots of its probe run shift back, so no lookup stops early.
func (x *memberIndex) remove(members []*member, pos int) {
	i := x.slotOf(members, pos)
	if i < 0 {
		return
	}
	mask := len(x.slots) - 1
	x.slots[i] = 0
	x.n--
	for j := (i + 1) & mask; x.slots[j] != 0; j = (j + 1) & mask {
		// Move slot j into the hole at i unless its home lies in (i, j]
		// (cyclically): then a lookup from its home still reaches it.
		h := x.home(x.keyOf(members[x.slots[j]-1]))
		if (j-h)&mask >= (j-i)&mask {
			x.slots[i], x.slots[j] = x.slots[j], 0
			i = j
		}
	}
	if len(x.slots) > 8 && x.n*8 < len(x.slots) {
		x.resize(members, len(x.slots)/2)
	}
}

// move records that members[from] (still in place) is going to position
// to, if it is in the table.
func (x *memberIndex) move(members []*member, from, to int) {
	if i := x.slotOf(members, from); i >= 0 {
		x.slots[i] = int32(to + 1)
	}
}

func (x *memberIndex) resize(members []*member, size int) {
	old := x.slots
	x.slots = make([]int32, size)
	mask := size - 1
	for _, s := range old {
		if s == 0 {
			continue
		}
		i := x.home(x.keyOf(members[s-1]))
		for x.slots[i] != 0 {
			i = (i + 1) & mask
		}
		x.slots[i] = s
	}
}
