package actors

import (
	"runtime"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// connMailbox is the mailbox of connection actors: protoactor's unbounded
// mailbox semantics (system messages first, suspension, the dispatcher's
// throughput, a panic escalated to the supervisor) in a smaller shape. It
// lives as long as its connection, idle nearly all that time, so what it
// holds while empty matters: one 80-byte struct, where protoactor's
// lock-free mailbox holds ~170 bytes (the struct, two queues, and the last
// node each queue keeps). A message costs one node, freed once taken.
// Posting takes a mutex, held for a few instructions: fan-out never posts
// to a connection's mailbox, so it sees one client's frames and a few
// answers from rooms.
//
// Ownership: mu guards the two queues, running and suspended (any poster,
// and the dispatcher goroutine that holds running); invoker and dispatcher
// are set once by RegisterHandlers, before the first message.
type connMailbox struct {
	mu         sync.Mutex
	user, sys  mailQueue
	running    bool // a goroutine of the dispatcher is processing
	suspended  bool // user messages wait (a failure is being handled)
	invoker    actor.MessageInvoker
	dispatcher actor.Dispatcher
}

// mailQueue is a FIFO of messages; guarded by connMailbox.mu.
type mailQueue struct{ head, tail *mailNode }

type mailNode struct {
	next *mailNode
	msg  any
}

func (q *mailQueue) push(msg any) {
	n := &mailNode{msg: msg}
	if q.tail == nil {
		q.head = n
	} else {
		q.tail.next = n
	}
	q.tail = n
}

func (q *mailQueue) pop() (any, bool) {
	n := q.head
	if n == nil {
		return nil, false
	}
	q.head = n.next
	if q.head == nil {
		q.tail = nil
	}
	return n.msg, true
}

// newConnMailbox is the actor.MailboxProducer of connection actors.
func newConnMailbox() actor.Mailbox { return &connMailbox{} }

// PostUserMessage queues a user message and schedules processing.
func (m *connMailbox) PostUserMessage(msg any) {
	m.mu.Lock()
	m.user.push(msg)
	m.scheduleLocked()
}

// PostSystemMessage queues a system message (processed before any user
// message) and schedules processing.
func (m *connMailbox) PostSystemMessage(msg any) {
	m.mu.Lock()
	m.sys.push(msg)
	m.scheduleLocked()
}

// scheduleLocked starts processing unless it runs already; it unlocks mu.
func (m *connMailbox) scheduleLocked() {
	if m.running {
		m.mu.Unlock()
		return
	}
	m.running = true
	m.mu.Unlock()
	m.dispatcher.Schedule(m.process)
}

// RegisterHandlers is called once, before the first message.
func (m *connMailbox) RegisterHandlers(invoker actor.MessageInvoker, dispatcher actor.Dispatcher) {
	m.invoker, m.dispatcher = invoker, dispatcher
}

// Start is called once the actor is spawned; nothing to do.
func (m *connMailbox) Start() {}

// UserMessageCount is how many user messages wait.
func (m *connMailbox) UserMessageCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for q := m.user.head; q != nil; q = q.next {
		n++
	}
	return n
}

// next takes the next message to process: a system message, else a user
// message unless suspended. With none it ends the run (running = false)
// under the same lock a post takes, so no message is left unscheduled.
func (m *connMailbox) next() (msg any, sys, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if msg, ok = m.sys.pop(); ok {
		return msg, true, true
	}
	if !m.suspended {
		if msg, ok = m.user.pop(); ok {
			return msg, false, true
		}
	}
	m.running = false
	return nil, false, false
}

// process runs on the dispatcher's goroutine until the mailbox is empty,
// yielding the processor every Throughput messages.
func (m *connMailbox) process() {
	for {
		if !m.run() {
			return
		}
	}
}

// run processes messages until none is left (false) or one panicked
// (true: the failure went to the supervisor, and processing goes on with
// whatever it sends, a suspension first).
func (m *connMailbox) run() (panicked bool) {
	var msg any
	defer func() {
		if r := recover(); r != nil {
			m.invoker.EscalateFailure(r, msg)
			panicked = true
		}
	}()
	t := m.dispatcher.Throughput()
	for i := 0; ; i++ {
		if i > t {
			i = 0
			runtime.Gosched()
		}
		var sys, ok bool
		msg, sys, ok = m.next()
		if !ok {
			return false
		}
		if !sys {
			m.invoker.InvokeUserMessage(msg)
			continue
		}
		switch msg.(type) {
		case *actor.SuspendMailbox:
			m.mu.Lock()
			m.suspended = true
			m.mu.Unlock()
		case *actor.ResumeMailbox:
			m.mu.Lock()
			m.suspended = false
			m.mu.Unlock()
		default:
			m.invoker.InvokeSystemMessage(msg)
		}
	}
}
