package deployments

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// page is one browser tab on the chat page.
type page struct {
	t    *testing.T
	ctx  context.Context
	name string
}

// eval runs js in the page and stores its result (JSON) in out.
func (p *page) eval(js string, out any) error {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](js))
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

// browser starts Debian's Chromium, headless, the way a CI box can run it:
// no sandbox (no user namespaces in containers), no background traffic.
func browser(t *testing.T) context.Context {
	t.Helper()
	chrome := need(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// wait polls js (a boolean expression) until it is true.
func (p *page) wait(what, js string, timeout time.Duration) {
	p.t.Helper()
	eventually(p.t, timeout, func() error {
		var ok bool
		if err := p.eval(js, &ok); err != nil {
			return err
		}
		if !ok {
			var log string
			_ = p.eval(`[...document.querySelectorAll('#log li, #notice')].slice(-6).map(e => e.textContent).join(" | ")`, &log)
			return fmt.Errorf("%s: %s not yet (page log: %s)", p.name, what, log)
		}
		return nil
	})
}

// node is the node the page says it is on.
func (p *page) node() string {
	var n string
	if err := p.eval(`document.getElementById('node').dataset.node || ""`, &n); err != nil {
		p.t.Fatalf("%s: read the node: %v", p.name, err)
	}
	return n
}

// say types text and sends it, as a user would.
func (p *page) say(text string) {
	p.t.Helper()
	js := fmt.Sprintf(`(() => { const t = document.getElementById('text'); t.value = %q;
		t.dispatchEvent(new Event('input')); document.getElementById('composer').requestSubmit(); return true })()`, text)
	var ok bool
	if err := p.eval(js, &ok); err != nil {
		p.t.Fatalf("%s say: %v", p.name, err)
	}
}

// shown is what the page's log shows: each message's seq and text, in order.
type shownMsg struct {
	Seq  int    `json:"seq"`
	Text string `json:"text"`
	Own  bool   `json:"own"`
}

func (p *page) shown() []shownMsg {
	var out []shownMsg
	if err := p.eval(`[...document.querySelectorAll('#log li.msg')].map(li => ({seq: +li.dataset.seq,
		text: li.querySelector('.text').textContent, own: li.classList.contains('own')}))`, &out); err != nil {
		p.t.Fatalf("%s: read log: %v", p.name, err)
	}
	return out
}

// TestBrowserChatAndDrain drives Debian's Chromium (headless). A refused
// name is reported as the node's reason. Two pages
// open the chat page through HAProxy, land on different nodes, chat and see
// each other in presence. Then one page's node is drained: that page
// resumes on the other node and shows every message exactly once, in
// order (the page used to show the last messages again after a reconnect).
func TestBrowserChatAndDrain(t *testing.T) {
	c := startCluster(t, 2)
	url := fmt.Sprintf("http://127.0.0.1:%d/", c.port)
	bctx := browser(t)

	open := func(name string) *page {
		ctx, cancel := chromedp.NewContext(bctx) // a new tab
		t.Cleanup(cancel)
		p := &page{t: t, ctx: ctx, name: name}
		// The first action on a tab's context opens the tab, and ending that
		// context would close it: open it without a timeout.
		if err := chromedp.Do(ctx); err != nil {
			t.Fatalf("%s: open a tab: %v", name, err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		defer rcancel()
		if err := chromedp.Do(rctx,
			chromedp.Navigate(url),
			chromedp.WaitVisible(chromedp.ID("name")),
			chromedp.SetValue(chromedp.ID("name"), name),
			chromedp.Click(chromedp.ID("connect")),
		); err != nil {
			t.Fatalf("%s: open the page: %v", name, err)
		}
		p.wait("online", `document.getElementById('status').textContent === 'online' && !!document.getElementById('node').dataset.node`, 20*time.Second)
		return p
	}
	refusedNameSaysWhy(t, bctx, url)
	alice := open("alice")
	bob := open("bob")
	if alice.node() == bob.node() {
		t.Fatalf("both pages on %s; leastconn should have put them on different nodes", alice.node())
	}
	// Presence: each page lists both.
	for _, p := range []*page{alice, bob} {
		p.wait("both in presence", `(() => { const m = [...document.querySelectorAll('#members li')].map(li => li.firstChild.textContent);
			return m.includes('alice') && m.includes('bob') })()`, 15*time.Second)
	}
	alice.say("hello from alice")
	bob.say("hi from bob")
	for _, p := range []*page{alice, bob} {
		p.wait("both messages", `document.querySelectorAll('#log li.msg').length === 2`, 15*time.Second)
	}
	for _, m := range alice.shown() {
		if m.Own != (m.Text == "hello from alice") {
			t.Errorf("alice's page: %q own=%v; only her own message should be set apart", m.Text, m.Own)
		}
	}

	// Drain bob's node while alice keeps talking.
	bobNode := bob.node()
	var wg sync.WaitGroup
	wg.Add(1)
	var drainErr error
	var drainOut []byte
	go func() {
		defer wg.Done()
		drainOut, drainErr = c.script("drain", bobNode)
	}()
	for i := 1; i <= 12; i++ {
		alice.say(fmt.Sprintf("during drain %d", i))
		time.Sleep(400 * time.Millisecond) // a person typing, not a sync point
	}
	wg.Wait()
	if drainErr != nil {
		t.Fatalf("drain %s: %v\n%s", bobNode, drainErr, drainOut)
	}
	bob.wait("back online on another node", fmt.Sprintf(`document.getElementById('status').textContent === 'online' &&
		document.getElementById('node').dataset.node !== %q`, bobNode), 30*time.Second)
	bob.say("bob is back")
	alice.say("welcome back")
	want := 2 + 12 + 2
	for _, p := range []*page{alice, bob} {
		p.wait("every message", fmt.Sprintf(`document.querySelectorAll('#log li.msg').length >= %d`, want), 20*time.Second)
	}
	a, b := alice.shown(), bob.shown()
	for _, got := range [][]shownMsg{a, b} {
		seqs := make([]int, len(got))
		for i, m := range got {
			seqs[i] = m.Seq
		}
		if len(got) != want || !slices.IsSorted(seqs) || len(slices.Compact(slices.Clone(seqs))) != len(seqs) {
			t.Errorf("a page shows %d messages, seqs %v; want %d, each once, in order", len(got), seqs, want)
		}
	}
	texts := func(ms []shownMsg) string {
		var s []string
		for _, m := range ms {
			s = append(s, fmt.Sprintf("%d:%s", m.Seq, m.Text))
		}
		return strings.Join(s, ", ")
	}
	if texts(a) != texts(b) {
		t.Errorf("the pages differ:\nalice: %s\nbob:   %s", texts(a), texts(b))
	}
	// Bob's presence shows alice and himself on his new node.
	bob.wait("presence after the move", fmt.Sprintf(`(() => { const m = [...document.querySelectorAll('#members li')];
		return m.some(li => li.firstChild.textContent === 'bob' && li.dataset.node !== %q) && m.some(li => li.firstChild.textContent === 'alice') })()`, bobNode), 15*time.Second)
	t.Logf("bob moved from %s to %s; both pages show %d messages once each", bobNode, bob.node(), len(b))
}

// refusedNameSaysWhy: a name the node refuses is shown as the node's
// reason, once, instead of "disconnected (1006)" forever.
func refusedNameSaysWhy(t *testing.T, bctx context.Context, url string) {
	ctx, cancelTab := chromedp.NewContext(bctx)
	defer cancelTab()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatal(err)
	}
	p := &page{t: t, ctx: ctx, name: "refused"}
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	if err := chromedp.Do(rctx,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.ID("name")),
		// maxlength stops a user at 32 characters; a script sets more.
		chromedp.SetValue(chromedp.ID("name"), strings.Repeat("x", 40)),
		chromedp.Click(chromedp.ID("connect")),
	); err != nil {
		t.Fatal(err)
	}
	p.wait("the refusal", `!document.getElementById('notice').hidden && document.getElementById('notice').textContent.includes('bad name')`, 20*time.Second)
	var state struct {
		Status  string `json:"status"`
		CanJoin bool   `json:"canJoin"`
	}
	if err := p.eval(`({status: document.getElementById('status').textContent, canJoin: !document.getElementById('connect').disabled})`, &state); err != nil {
		t.Fatal(err)
	}
	if state.Status != "offline" || !state.CanJoin {
		t.Errorf("after a refusal: status %q, join button enabled %v; want offline and a form to fix the name", state.Status, state.CanJoin)
	}
}
