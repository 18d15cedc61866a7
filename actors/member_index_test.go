package actors

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/asynkron/protoactor-go/actor"
)

// indexRoom is a room with only its members and their indexes, as the
// room actor sets them up (roomInit).
func indexRoom() *room {
	r := &room{}
	r.byName.byName = true
	return r
}

func testMember(conn, name string) *member {
	return &member{sess: &Session{pid: &actor.PID{Address: "nonhost", Id: conn}, id: "s-" + conn}, name: name}
}

// checkIndexes checks every lookup of r against want (conn id -> name of
// the members in the room) and holders (name -> conn id of the member
// holding it).
func checkIndexes(t *testing.T, r *room, want, holders map[string]string, gone []string) {
	t.Helper()
	if len(r.members) != len(want) {
		t.Fatalf("%d members, want %d", len(r.members), len(want))
	}
	for conn, name := range want {
		i, ok := r.byConn.find(r.members, conn)
		if !ok || r.members[i].sess.pid.Id != conn || r.members[i].name != name {
			t.Fatalf("byConn %q: %v %v, want the member named %q", conn, i, ok, name)
		}
	}
	for _, conn := range gone {
		if i, ok := r.byConn.find(r.members, conn); ok {
			t.Fatalf("byConn %q (gone) found position %d (%q)", conn, i, r.members[i].sess.pid.Id)
		}
	}
	for name, conn := range holders {
		i, ok := r.byName.find(r.members, name)
		switch {
		case conn == "" && ok:
			t.Fatalf("byName %q found %q, want nobody", name, r.members[i].sess.pid.Id)
		case conn != "" && (!ok || r.members[i].sess.pid.Id != conn):
			t.Fatalf("byName %q: %v %v, want %q", name, i, ok, conn)
		}
	}
	if r.byConn.n != len(want) {
		t.Fatalf("byConn holds %d slots, want %d", r.byConn.n, len(want))
	}
}

// TestMemberIndexes drives the room's member indexes (addMember,
// dropMember, byConn and byName lookups) through each rule, then a long
// churn against a plain map model.
func TestMemberIndexes(t *testing.T) {
	type step struct {
		add, drop string // "conn/name" to add, conn to drop
	}
	cases := []struct {
		name    string
		steps   []step
		want    map[string]string // conn -> name
		holders map[string]string // name -> conn ("" nobody)
		gone    []string          // conns whose ops must find nothing
	}{
		{
			name:    "two members, the first leaves: the other moves and is still found",
			steps:   []step{{add: "c1/alice"}, {add: "c2/bob"}, {drop: "c1"}},
			want:    map[string]string{"c2": "bob"},
			holders: map[string]string{"alice": "", "bob": "c2"},
			gone:    []string{"c1"},
		},
		{
			name:    "two members, the last leaves",
			steps:   []step{{add: "c1/alice"}, {add: "c2/bob"}, {drop: "c2"}},
			want:    map[string]string{"c1": "alice"},
			holders: map[string]string{"alice": "c1", "bob": ""},
			gone:    []string{"c2"},
		},
		{
			name:    "a stale op of a gone connection finds nothing, not the new holder of its name",
			steps:   []step{{add: "c1/alice"}, {drop: "c1"}, {add: "c3/alice"}},
			want:    map[string]string{"c3": "alice"},
			holders: map[string]string{"alice": "c3"},
			gone:    []string{"c1"},
		},
		{
			name:    "the room empties and fills again",
			steps:   []step{{add: "c1/alice"}, {drop: "c1"}, {add: "c2/bob"}, {drop: "c2"}, {add: "c1/alice"}},
			want:    map[string]string{"c1": "alice"},
			holders: map[string]string{"alice": "c1", "bob": ""},
			gone:    []string{"c2"},
		},
		{
			// Token auth lets one name join twice: the latest holds it,
			// and its leaving frees it (as the map it replaces did).
			name:    "a repeated name: the latest holds it until it leaves",
			steps:   []step{{add: "c1/ann"}, {add: "c2/ann"}, {add: "c3/bob"}, {drop: "c2"}},
			want:    map[string]string{"c1": "ann", "c3": "bob"},
			holders: map[string]string{"ann": "", "bob": "c3"},
			gone:    []string{"c2"},
		},
		{
			name:    "a repeated name: an earlier holder leaving frees nothing",
			steps:   []step{{add: "c1/ann"}, {add: "c2/ann"}, {drop: "c1"}},
			want:    map[string]string{"c2": "ann"},
			holders: map[string]string{"ann": "c2"},
			gone:    []string{"c1"},
		},
		{
			name:    "dropping an unknown connection changes nothing",
			steps:   []step{{add: "c1/alice"}, {drop: "c9"}},
			want:    map[string]string{"c1": "alice"},
			holders: map[string]string{"alice": "c1"},
			gone:    []string{"c9"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := indexRoom()
			for _, s := range tc.steps {
				if s.add != "" {
					var conn, name string
					fmt.Sscanf(s.add, "%2s/%s", &conn, &name)
					r.addMember(testMember(conn, name))
					continue
				}
				if i, ok := r.byConn.find(r.members, s.drop); ok {
					r.dropMember(i)
				}
			}
			checkIndexes(t, r, tc.want, tc.holders, tc.gone)
		})
	}

	t.Run("churn against a map", func(t *testing.T) {
		// Enough members to grow and shrink the tables many times, and
		// few enough names that joins and leaves keep colliding.
		rnd := rand.New(rand.NewPCG(1, 2))
		r := indexRoom()
		want, holders := map[string]string{}, map[string]string{}
		var gone []string
		next := 0
		for step := range 60000 {
			if len(want) == 0 || step%20000 < 11000 && rnd.IntN(10) < 6 || step%20000 >= 11000 && rnd.IntN(10) < 4 {
				next++
				conn, name := fmt.Sprintf("c%d", next), fmt.Sprintf("n%d", rnd.IntN(3000))
				r.addMember(testMember(conn, name))
				want[conn], holders[name] = name, conn
			} else {
				m := r.members[rnd.IntN(len(r.members))]
				conn := m.sess.pid.Id
				i, ok := r.byConn.find(r.members, conn)
				if !ok || r.members[i] != m {
					t.Fatalf("step %d: member %q not found", step, conn)
				}
				r.dropMember(i)
				delete(want, conn)
				if holders[m.name] == conn {
					holders[m.name] = ""
				}
				gone = append(gone, conn)
			}
			if step%997 == 0 || step == 59999 {
				checkIndexes(t, r, want, holders, gone)
				gone = gone[:0]
			}
		}
	})
}

// TestMemberSize keeps a member entry in the 80-byte size class.
func TestMemberSize(t *testing.T) {
	if n := unsafe.Sizeof(member{}); n > 80 {
		t.Fatalf("member is %d bytes, want at most 80", n)
	}
}
