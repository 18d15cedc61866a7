package main

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func printIdle(w io.Writer, r *idleResult) {
	fmt.Fprintf(w, "%s: %s, %d process(es)\n", r.Mode, strings.Join(r.URLs, " "), r.Processes)
	fmt.Fprintf(w, "%8s %8s %7s %10s %8s %12s %12s %11s %12s\n",
		"target", "opened", "errors", "conn/s", "alive", "node RSS MiB", "heap in MiB", "goroutines", "client MiB")
	rows := r.Steps
	if r.Baseline != nil {
		rows = append([]idleStep{*r.Baseline}, rows...)
	}
	for _, s := range rows {
		fmt.Fprintf(w, "%8d %8d %7d %10.0f %8d %12.1f %12.1f %11d %12.1f\n",
			s.Target, s.Opened, s.Errors, s.Rate, s.Alive, mib(s.NodeRSS), mib(s.NodeHeapInuse), s.NodeGoroutines, mib(s.ClientRSS))
	}
	for _, s := range r.Slopes {
		fmt.Fprintf(w, "slope %d → %d: %.2f KiB RSS per connection (heap in use %.2f KiB)\n", s.From, s.To, s.KiBPerConn, s.HeapKiB)
	}
	fmt.Fprintf(w, "connect rate %.0f upgrades/s, %d errors, %d alive at the end", r.ConnectRate, r.Errors, r.FinalAlive)
	if r.HoldS > 0 {
		fmt.Fprintf(w, " (after holding %.0f s)", r.HoldS)
	}
	fmt.Fprintln(w)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
}

func printFanout(w io.Writer, r *fanoutResult) {
	fmt.Fprintf(w, "fanout %s: %s%s\n", r.Proto, strings.Join(r.URLs, " "), map[bool]string{true: " (cross-node)"}[r.CrossNode])
	fmt.Fprintf(w, "clients %d (connected %d, connect errors %d, not ready %d), rooms %d, senders %d, %.0f msgs/s for %.1f s, %d-byte payload\n",
		r.Clients, r.Connected, r.ConnectErrors, r.NotReady, r.Rooms, r.Senders, r.Rate, r.DurationS, r.Size)
	fmt.Fprintf(w, "sent %d (skipped %d, errors %d)  expected %d  received %d  loss %d (%.2f %%)  dup %d  out-of-order %d  foreign %d\n",
		r.Sent, r.SendSkipped, r.SendErrors, r.Expected, r.Received, r.Loss, r.LossPct, r.Duplicates, r.OutOfOrder, r.Foreign)
	fmt.Fprintf(w, "deliveries/s %.0f  drain %.1f s  error frames %d  disconnects %d\n", r.DeliveriesPS, r.DrainS, r.ErrorFrames, r.Disconnects)
	l := r.Latency
	fmt.Fprintf(w, "latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (mean %.2f, n=%d)\n", l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean, l.Count)
	for i, p := range r.PerURL {
		fmt.Fprintf(w, "  receivers on %s: p50 %.2f  p99 %.2f  max %.2f  (n=%d)\n", r.URLs[i], p.P50, p.P99, p.Max, p.Count)
	}
	for _, c := range r.NodeCPU {
		fmt.Fprintf(w, "cpu %s: %.0f %%, %.0f write and %.0f read syscalls/s\n", c.Target, c.Pct, c.WritesPS, c.ReadsPS)
	}
	if r.PerWrite > 0 {
		fmt.Fprintf(w, "deliveries per node write syscall: %.2f\n", r.PerWrite)
	}
	fmt.Fprintf(w, "cpu parley-bench: %.0f %% (100 %% = one core)\n", r.SelfCPU)
	for _, n := range r.Nodes {
		fmt.Fprintf(w, "node %s: RSS %.1f MiB, goroutines %d\n", n.Target, mib(n.RSS), n.Goroutines)
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
}

// series is one line of a chart.
type series struct {
	Name   string
	Color  string
	Points [][2]float64
}

// axis describes how values map to a chart axis.
type axis struct {
	Label string
	Log   bool
	Ticks []tick // optional fixed ticks
}

type tick struct {
	V     float64
	Label string
}

// lineChart renders series as an inline SVG line chart.
func lineChart(title string, xa, ya axis, ss []series) template.HTML {
	const W, H, L, R, T, B = 760.0, 320.0, 70.0, 20.0, 30.0, 50.0
	xmin, xmax, ymin, ymax := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	tf := func(a axis, v float64) float64 {
		if a.Log {
			return math.Log10(math.Max(v, 1e-6))
		}
		return v
	}
	for _, s := range ss {
		for _, p := range s.Points {
			x, y := tf(xa, p[0]), tf(ya, p[1])
			xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
			ymin, ymax = math.Min(ymin, y), math.Max(ymax, y)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`, W, H, W, H)
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="14" font-weight="bold">%s</text>`, L, template.HTMLEscapeString(title))
	if math.IsInf(xmin, 0) {
		b.WriteString(`<text x="70" y="160">no data</text></svg>`)
		return template.HTML(b.String())
	}
	if !ya.Log {
		ymin = math.Min(ymin, 0)
	}
	if xmax == xmin {
		xmax = xmin + 1
	}
	if ymax == ymin {
		ymax = ymin + 1
	}
	ymax += (ymax - ymin) * 0.05
	px := func(x float64) float64 { return L + (x-xmin)/(xmax-xmin)*(W-L-R) }
	py := func(y float64) float64 { return H - B - (y-ymin)/(ymax-ymin)*(H-T-B) }
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#888"/>`, L, T, W-L-R, H-T-B)
	// Axis ticks.
	xt := xa.Ticks
	if xt == nil {
		xt = niceTicks(xmin, xmax, xa.Log)
	}
	for _, t := range xt {
		x := tf(xa, t.V)
		if x < xmin-1e-9 || x > xmax+1e-9 {
			continue
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#eee"/>`, px(x), T, px(x), H-B)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`, px(x), H-B+14, template.HTMLEscapeString(t.Label))
	}
	for _, t := range niceTicks(ymin, ymax, ya.Log) {
		y := tf(ya, t.V)
		if y < ymin-1e-9 || y > ymax+1e-9 {
			continue
		}
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#eee"/>`, L, py(y), W-R, py(y))
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`, L-4, py(y)+4, template.HTMLEscapeString(t.Label))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`, (L+W-R)/2, H-12, template.HTMLEscapeString(xa.Label))
	fmt.Fprintf(&b, `<text transform="translate(14,%.0f) rotate(-90)" text-anchor="middle">%s</text>`, (T+H-B)/2, template.HTMLEscapeString(ya.Label))
	for i, s := range ss {
		var pts []string
		for _, p := range s.Points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(tf(xa, p[0])), py(tf(ya, p[1]))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, s.Color, strings.Join(pts, " "))
		for _, p := range pts {
			xy := strings.Split(p, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="2.5" fill="%s"/>`, xy[0], xy[1], s.Color)
		}
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="10" height="10" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`,
			W-R-200, T+8+float64(i)*16, s.Color, W-R-185, T+17+float64(i)*16, template.HTMLEscapeString(s.Name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// niceTicks returns about five round ticks between lo and hi (in axis
// space: log10 values for a log axis).
func niceTicks(lo, hi float64, log bool) []tick {
	var out []tick
	if log {
		for e := math.Floor(lo); e <= math.Ceil(hi) && len(out) < 20; e++ {
			v := math.Pow(10, e)
			out = append(out, tick{V: v, Label: fmtNum(v)})
		}
		return out
	}
	span := hi - lo
	step := math.Pow(10, math.Floor(math.Log10(span/5)))
	for _, m := range []float64{1, 2, 5, 10} {
		if span/(step*m) <= 6 {
			step *= m
			break
		}
	}
	for v := math.Ceil(lo/step) * step; v <= hi && len(out) < 20; v += step {
		out = append(out, tick{V: v, Label: fmtNum(v)})
	}
	return out
}

func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e5)/10)
	case a >= 1e3:
		return fmt.Sprintf("%gk", math.Round(v/1e2)/10)
	case a >= 1 || a == 0:
		return fmt.Sprintf("%g", math.Round(v*10)/10)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

var colors = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}pre{background:#f8f8f8;padding:8px}</style>
</head><body><h1>{{.Title}}</h1><p>{{.When}}</p>
<pre>{{.Text}}</pre>
{{range .Charts}}<div>{{.}}</div>{{end}}
</body></html>`))

type page struct {
	Title  string
	When   string
	Text   string
	Charts []template.HTML
}

func render(p page) ([]byte, error) {
	var b bytes.Buffer
	if err := pageTmpl.Execute(&b, p); err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	return b.Bytes(), nil
}

// percentileX maps a percentile to 1/(1-q) so the tail spreads out on a log axis.
func percentileX(q float64) float64 {
	q = math.Min(q, 99.999)
	return 1 / (1 - q/100)
}

func fanoutHTML(label string, r *fanoutResult) ([]byte, error) {
	var text bytes.Buffer
	printFanout(&text, r)
	pticks := []tick{{percentileX(0), "0%"}, {percentileX(50), "50%"}, {percentileX(90), "90%"},
		{percentileX(99), "99%"}, {percentileX(99.9), "99.9%"}, {percentileX(99.99), "99.99%"}, {percentileX(99.999), "max"}}
	spec := func(name, color string, pts []percentilePoint) series {
		s := series{Name: name, Color: color}
		for _, p := range pts {
			s.Points = append(s.Points, [2]float64{percentileX(p.Percentile), math.Max(p.MS, 0.001)})
		}
		return s
	}
	lat := []series{spec("all receivers", colors[0], r.Spectrum)}
	for i, sp := range r.PerURLSpectra {
		lat = append(lat, spec("receivers on "+r.URLs[i], colors[(i+1)%len(colors)], sp))
	}
	var send, recv series
	send = series{Name: "sends/s", Color: colors[2]}
	recv = series{Name: "deliveries/s", Color: colors[0]}
	for _, t := range r.Timeline {
		send.Points = append(send.Points, [2]float64{t.T, t.SendPS})
		recv.Points = append(recv.Points, [2]float64{t.T, t.DeliverPS})
	}
	title := "parley-bench fanout"
	if label != "" {
		title += " — " + label
	}
	return render(page{
		Title: title, When: time.Now().UTC().Format(time.RFC3339), Text: text.String(),
		Charts: []template.HTML{
			lineChart("Latency by percentile (send → receive)", axis{Label: "percentile", Log: true, Ticks: pticks}, axis{Label: "latency ms (log)", Log: true}, lat),
			lineChart("Throughput over time", axis{Label: "seconds since sending began"}, axis{Label: "per second"}, []series{recv}),
			lineChart("Send rate over time", axis{Label: "seconds since sending began"}, axis{Label: "messages per second"}, []series{send}),
		},
	})
}

func idleHTML(label string, r *idleResult) ([]byte, error) {
	var text bytes.Buffer
	printIdle(&text, r)
	rss := series{Name: "node RSS MiB", Color: colors[0]}
	heap := series{Name: "node heap in use MiB", Color: colors[1]}
	cli := series{Name: "parley-bench RSS MiB", Color: colors[2]}
	rate := series{Name: "upgrades/s", Color: colors[3]}
	rows := r.Steps
	if r.Baseline != nil {
		rows = append([]idleStep{*r.Baseline}, rows...)
	}
	for _, s := range rows {
		x := float64(s.Alive)
		rss.Points = append(rss.Points, [2]float64{x, mib(s.NodeRSS)})
		heap.Points = append(heap.Points, [2]float64{x, mib(s.NodeHeapInuse)})
		cli.Points = append(cli.Points, [2]float64{x, mib(s.ClientRSS)})
	}
	for _, s := range r.Steps {
		rate.Points = append(rate.Points, [2]float64{float64(s.Target), s.Rate})
	}
	title := "parley-bench " + r.Mode
	if label != "" {
		title += " — " + label
	}
	return render(page{
		Title: title, When: time.Now().UTC().Format(time.RFC3339), Text: text.String(),
		Charts: []template.HTML{
			lineChart("Memory by open connections", axis{Label: "open connections"}, axis{Label: "MiB"}, []series{rss, heap, cli}),
			lineChart("Connect rate per step", axis{Label: "connections after the step"}, axis{Label: "upgrades per second"}, []series{rate}),
		},
	})
}
