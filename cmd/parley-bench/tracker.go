package main

// deliveryTracker accounts the messages one receiver got: unique deliveries,
// duplicates, out-of-order arrivals (a message that arrives after a later
// message of the same sender) and messages that do not belong to this run.
// It is owned by one receiver goroutine and is not safe for concurrent use.
type deliveryTracker struct {
	seen [][]uint64 // seen[sender] is a bitset over that sender's seq numbers
	last []uint64   // highest seq seen per sender, +1 (0 = none yet)

	received   uint64 // unique deliveries
	duplicates uint64
	outOfOrder uint64
	foreign    uint64 // frames that are not a message of this run
}

// maxTrackedSeq bounds a bitset so that a bogus seq cannot allocate without limit.
const maxTrackedSeq = 1 << 26

func newDeliveryTracker(senders int) *deliveryTracker {
	return &deliveryTracker{seen: make([][]uint64, senders), last: make([]uint64, senders)}
}

// observe records that message seq of sender arrived and reports whether it
// is a new (unique) delivery.
func (t *deliveryTracker) observe(sender int, seq uint64) bool {
	if sender < 0 || sender >= len(t.seen) || seq >= maxTrackedSeq {
		t.foreign++
		return false
	}
	word, bit := seq/64, uint64(1)<<(seq%64)
	bs := t.seen[sender]
	if word >= uint64(len(bs)) {
		n := max(2*len(bs), int(word)+1)
		grown := make([]uint64, n)
		copy(grown, bs)
		bs = grown
		t.seen[sender] = bs
	}
	if bs[word]&bit != 0 {
		t.duplicates++
		return false
	}
	bs[word] |= bit
	t.received++
	if seq+1 < t.last[sender] {
		t.outOfOrder++
	} else {
		t.last[sender] = seq + 1
	}
	return true
}

// deliveryTotals sums the trackers of all receivers.
type deliveryTotals struct {
	Received   uint64 `json:"received"`
	Duplicates uint64 `json:"duplicates"`
	OutOfOrder uint64 `json:"out_of_order"`
	Foreign    uint64 `json:"foreign"`
}

func (d *deliveryTotals) add(t *deliveryTracker) {
	d.Received += t.received
	d.Duplicates += t.duplicates
	d.OutOfOrder += t.outOfOrder
	d.Foreign += t.foreign
}
