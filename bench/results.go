package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Result is one scenario's outcome: one JSON line on stdout.
type Result struct {
	Scenario string         `json:"scenario"`
	Label    string         `json:"label,omitempty"`
	URLs     []string       `json:"urls"`
	Prefix   string         `json:"prefix"`
	Started  time.Time      `json:"started"`
	Params   map[string]any `json:"params"`
	// SetupS is the unmeasured set-up (registering users, filling rooms);
	// DurationS is the measured phase, over which Rate is Ops per second.
	SetupS    float64      `json:"setup_s"`
	DurationS float64      `json:"duration_s"`
	Ops       int          `json:"ops"`
	Rate      float64      `json:"rate"`
	Unit      string       `json:"unit"`
	LatencyMS *Percentiles `json:"latency_ms"`
	// Extra holds the scenario's own figures (fanout's missed and
	// duplicates, join's batches, messages' exactness, logins/s, …).
	Extra        map[string]any `json:"extra,omitempty"`
	Errors       int            `json:"errors"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	// Fatal is set when the scenario could not run to its end (a setup
	// request failed, the scenario timed out).
	Fatal string `json:"fatal,omitempty"`
	// PeakRSSMiB is VmHWM summed over -pid; RSSScope says whether it was
	// reset at the scenario's start ("scenario") or is the peak since the
	// process started ("process").
	PeakRSSMiB float64  `json:"peak_rss_mib,omitempty"`
	RSSScope   string   `json:"rss_scope,omitempty"`
	Profiles   []string `json:"profiles,omitempty"`
}

// Percentiles of a latency distribution in milliseconds, from the exact
// sorted samples (nearest rank).
type Percentiles struct {
	N    int     `json:"n"`
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
}

func percentiles(d []time.Duration) *Percentiles {
	if len(d) == 0 {
		return nil
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, v := range s {
		sum += v
	}
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return ms(s[min(max(i, 0), len(s)-1)])
	}
	return &Percentiles{N: len(s), Min: ms(s[0]), Mean: ms(sum / time.Duration(len(s))),
		P50: rank(50), P95: rank(95), P99: rank(99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64      { return round2(float64(d) / float64(time.Millisecond)) }
func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }
func round2(f float64) float64        { return math.Round(f*100) / 100 }

// samples collects latencies from several goroutines.
type samples struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *samples) add(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d = append(s.d, d)
}

func (s *samples) all() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.d)
}

func writeJSONLine(w io.Writer, res *Result) error {
	b, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode result of %s: %w", res.Scenario, err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// decoded is res as a reader of the JSON line sees it, so tables are
// rendered the same way during a run and from saved files.
func decoded(res *Result) *Result {
	b, err := json.Marshal(res)
	if err != nil {
		return res
	}
	var out Result
	if json.Unmarshal(b, &out) != nil {
		return res
	}
	return &out
}

// num reads a number from a decoded Extra.
func num(m map[string]any, key string) (float64, bool) {
	f, ok := m[key].(float64)
	return f, ok
}

// p50Of reads the p50 of a decoded Percentiles in Extra.
func p50Of(m map[string]any, key string) (float64, bool) {
	p, ok := m[key].(map[string]any)
	if !ok {
		return 0, false
	}
	return num(p, "p50")
}

// notes is the table's last column: the scenario's own figures.
func notes(r *Result) string {
	if r.Fatal != "" {
		return "FATAL: " + truncate([]byte(r.Fatal), 120)
	}
	e := r.Extra
	var parts []string
	add := func(format string, a ...any) { parts = append(parts, fmt.Sprintf(format, a...)) }
	switch r.Scenario {
	case scFanout:
		missed, _ := num(e, "missed")
		dups, _ := num(e, "duplicates")
		add("missed %.0f, duplicates %.0f", missed, dups)
		if p, ok := p50Of(e, "send_latency_ms"); ok {
			add("send p50 %.1f ms", p)
		}
	case scInitialSync:
		if m, ok := num(e, "median_ms"); ok {
			add("median %.1f ms", m)
		}
		if b, ok := num(e, "median_bytes"); ok {
			add("%.0f KiB", b/1024)
		}
		if n, ok := num(e, "rooms_in_sync"); ok {
			add("%.0f rooms", n)
		}
	case scJoin:
		f, ok1 := num(e, "first_batch_ms")
		l, ok2 := num(e, "last_batch_ms")
		if ok1 && ok2 {
			add("first batch %.0f ms, last %.0f ms", f, l)
		}
		if x, ok := num(e, "last_first_ratio"); ok {
			add("last/first %.2f×", x)
		}
	case scMessages:
		if exact, _ := e["exact"].(bool); exact {
			add("exact")
		} else {
			missing, _ := num(e, "missing")
			dups, _ := num(e, "duplicates")
			add("NOT EXACT (missing %.0f, duplicates %.0f)", missing, dups)
		}
		if p, ok := num(e, "pages"); ok {
			add("%.0f pages", p)
		}
	case scSearch:
		for _, k := range []string{"one_word_rank", "one_word_recent", "two_words_rank", "two_words_recent"} {
			if p, ok := p50Of(e, k+"_ms"); ok {
				add("%s p50 %.1f ms", k, p)
			}
		}
		if c, ok := num(e, "median_count"); ok {
			add("median count %.0f", c)
		}
		if v, ok := num(e, "seed_messages_per_s"); ok {
			add("seeded at %.0f messages/s", v)
		}
	case scUserdir:
		for _, k := range []string{"prefix1", "prefix3", "first_name", "full_name"} {
			if p, ok := p50Of(e, k+"_ms"); ok {
				add("%s p50 %.1f ms", k, p)
			}
		}
		if v, ok := num(e, "directory_catch_up_s"); ok {
			add("directory caught up in %.1f s", v)
		}
	case scFederation:
		missed, _ := num(e, "missed")
		dups, _ := num(e, "duplicates")
		add("missed %.0f, duplicates %.0f", missed, dups)
		if v, ok := num(e, "offered_rate_per_s"); ok {
			add("offered %.0f/s", v)
		}
		if p, ok := p50Of(e, "send_latency_ms"); ok {
			add("send p50 %.1f ms", p)
		}
	case scRegister:
		if l, ok := num(e, "logins_per_s"); ok {
			add("logins %.1f/s", l)
		}
		if p, ok := p50Of(e, "login_latency_ms"); ok {
			add("login p50 %.1f ms", p)
		}
	}
	if r.Errors > 0 && len(r.ErrorSamples) > 0 {
		add("first error: %s", truncate([]byte(r.ErrorSamples[0]), 100))
	}
	return strings.Join(parts, "; ")
}

func latencyCols(p *Percentiles) [4]string {
	if p == nil {
		return [4]string{"-", "-", "-", "-"}
	}
	f := func(v float64) string { return fmt.Sprintf("%.1f", v) }
	return [4]string{f(p.P50), f(p.P95), f(p.P99), f(p.Max)}
}

func rssCol(r *Result) string {
	if r.PeakRSSMiB == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", r.PeakRSSMiB)
}

// writeTable prints the results as an aligned table.
func writeTable(w io.Writer, results []*Result) {
	if len(results) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tlabel\tops\trate\tunit\tp50 ms\tp95 ms\tp99 ms\tmax ms\terrors\tpeak RSS MiB\tnotes")
	for _, r := range results {
		r = decoded(r)
		l := latencyCols(r.LatencyMS)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Scenario, labelOr(r.Label, "-"), r.Ops, r.Rate, r.Unit,
			l[0], l[1], l[2], l[3], r.Errors, rssCol(r), notes(r))
	}
	tw.Flush()
}

// readResults reads JSON lines, skipping anything else (a -table, a log).
func readResults(path string) ([]*Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	var out []*Result
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] != '{' {
			continue
		}
		var r Result
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		out = append(out, &r)
	}
	return out, sc.Err()
}

func paramsCol(p map[string]any) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, p[k]))
	}
	return strings.Join(parts, " ")
}

// writeReport renders saved results as markdown: a table per label, then
// the targets with each figure and whether it is met.
func writeReport(w io.Writer, files []string, pgbenchTPS float64) error {
	var all []*Result
	for _, f := range files {
		rs, err := readResults(f)
		if err != nil {
			return err
		}
		all = append(all, rs...)
	}
	var labels []string
	byLabel := map[string][]*Result{}
	for _, r := range all {
		l := labelOr(r.Label, "-")
		if _, ok := byLabel[l]; !ok {
			labels = append(labels, l)
		}
		byLabel[l] = append(byLabel[l], r)
	}
	for _, l := range labels {
		fmt.Fprintf(w, "### %s\n\n", l)
		fmt.Fprintln(w, "| scenario | size | ops | rate | p50 ms | p95 ms | p99 ms | max ms | errors | peak RSS MiB | notes |")
		fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
		for _, r := range byLabel[l] {
			c := latencyCols(r.LatencyMS)
			fmt.Fprintf(w, "| %s | %s | %d | %.1f %s | %s | %s | %s | %s | %d | %s | %s |\n", r.Scenario, paramsCol(r.Params), r.Ops,
				r.Rate, r.Unit, c[0], c[1], c[2], c[3], r.Errors, rssCol(r), strings.ReplaceAll(notes(r), "|", "/"))
		}
		fmt.Fprintln(w)
	}
	writeTargets(w, labels, byLabel, pgbenchTPS)
	writeRouterCost(w, byLabel)
	return nil
}

// tableHead writes a section title and a markdown table's header rows.
func tableHead(w io.Writer, title, header, align string) {
	fmt.Fprintf(w, "### %s\n\n%s\n%s\n", title, header, align)
}

func sameParams(a, b *Result) bool { return fmt.Sprint(a.Params) == fmt.Sprint(b.Params) }

// writeRouterCost compares the fleet through the router with the same
// fleet reached directly, scenario by scenario: what the router adds.
func writeRouterCost(w io.Writer, byLabel map[string][]*Result) {
	routed, direct := byLabel["fleet"], byLabel["fleet-direct"]
	if len(routed) == 0 || len(direct) == 0 {
		return
	}
	tableHead(w, "Router vs direct (same fleet, same load)",
		"| scenario | rate direct | rate via router | p50 ms direct | p50 ms via router | p99 ms direct | p99 ms via router |",
		"|---|--:|--:|--:|--:|--:|--:|")
	for _, r := range routed {
		for _, d := range direct {
			if d.Scenario != r.Scenario || r.LatencyMS == nil || d.LatencyMS == nil || !sameParams(r, d) {
				continue
			}
			name := r.Scenario
			if m, ok := num(r.Params, "members"); ok && m >= 1000 {
				name = fmt.Sprintf("%s (%.0f members)", r.Scenario, m)
			}
			fmt.Fprintf(w, "| %s | %.1f %s | %.1f %s | %.1f | %.1f | %.1f | %.1f |\n", name, d.Rate, d.Unit, r.Rate, r.Unit,
				d.LatencyMS.P50, r.LatencyMS.P50, d.LatencyMS.P99, r.LatencyMS.P99)
		}
	}
	fmt.Fprintln(w)
}

// writeTargets checks the figures against the Benchmarks issue's targets.
// Sizes are shown because the targets are stated for the default sizes.
func writeTargets(w io.Writer, labels []string, byLabel map[string][]*Result, pgbenchTPS float64) {
	type row struct{ target, label, figure, met string }
	var rows []row
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	// A fan-out with 1,000 or more members is the scale check ("no
	// errors"); the latency and ratio targets are for the default size.
	large := func(r *Result) bool {
		m, _ := num(r.Params, "members")
		return r.Scenario == scFanout && m >= 1000
	}
	find := func(label, scenario string) *Result {
		for _, r := range byLabel[label] {
			if r.Scenario == scenario && r.Fatal == "" && !large(r) {
				return r
			}
		}
		return nil
	}
	for _, l := range labels {
		for _, r := range byLabel[l] {
			if r.Fatal != "" {
				rows = append(rows, row{r.Scenario + " runs to its end", l, "did not finish: " + strings.ReplaceAll(truncate([]byte(r.Fatal), 100), "|", "/"), yes(false)})
			}
		}
		fleet := strings.HasPrefix(l, "fleet")
		// The throughput targets are stated for PostgreSQL deployments.
		onPostgres := !strings.Contains(l, "sqlite")
		if r := find(l, scSend); r != nil && r.LatencyMS != nil {
			if onPostgres {
				rows = append(rows, row{"send ≥ 1,000 messages/s", l, fmt.Sprintf("%.0f messages/s", r.Rate), yes(r.Rate >= 1000)})
			}
			if pgbenchTPS > 0 && onPostgres {
				rows = append(rows, row{"send ≥ 0.3 × pgbench inserts/s", l,
					fmt.Sprintf("%.2f × %.0f", r.Rate/pgbenchTPS, pgbenchTPS), yes(r.Rate >= 0.3*pgbenchTPS)})
			}
			rows = append(rows, row{"send p99 < 50 ms", l, fmt.Sprintf("%.1f ms", r.LatencyMS.P99), yes(r.LatencyMS.P99 < 50)})
		}
		if r := find(l, scFanout); r != nil && r.LatencyMS != nil {
			limit := 50.0
			if fleet {
				limit = 100
			}
			rows = append(rows, row{fmt.Sprintf("fanout p99 < %.0f ms, no errors (%v members)", limit, r.Params["members"]), l,
				fmt.Sprintf("%.1f ms, %d errors", r.LatencyMS.P99, r.Errors), yes(r.LatencyMS.P99 < limit && r.Errors == 0)})
		}
		for _, r := range byLabel[l] {
			if large(r) && r.Fatal == "" {
				missed, _ := num(r.Extra, "missed")
				rows = append(rows, row{fmt.Sprintf("fanout: %v syncing members without errors", r.Params["members"]), l,
					fmt.Sprintf("%d errors, %.0f missed; p99 %.1f ms", r.Errors, missed, r.LatencyMS.P99), yes(r.Errors == 0 && missed == 0)})
			}
		}
		if r := find(l, scInitialSync); r != nil && r.LatencyMS != nil {
			rows = append(rows, row{"initial_sync median < 150 ms", l, fmt.Sprintf("%.1f ms", r.LatencyMS.P50), yes(r.LatencyMS.P50 < 150)})
		}
		if r := find(l, scJoin); r != nil {
			if x, ok := num(r.Extra, "last_first_ratio"); ok {
				rows = append(rows, row{fmt.Sprintf("join: last batch ≤ 2 × first (%v users)", r.Params["users"]), l, fmt.Sprintf("%.2f×", x), yes(x <= 2)})
			}
		}
		if r := find(l, scMessages); r != nil {
			exact, _ := r.Extra["exact"].(bool)
			rows = append(rows, row{"messages exact", l, fmt.Sprint(exact), yes(exact)})
			if onPostgres {
				rows = append(rows, row{"messages ≥ 20,000 events/s", l, fmt.Sprintf("%.0f events/s", r.Rate), yes(r.Rate >= 20000)})
			}
		}
		// Issue 12: key query and claim on the PostgreSQL monolith.
		for _, sc := range []string{scKeysQuery, scKeysClaim} {
			if r := find(l, sc); r != nil && r.LatencyMS != nil && l == "postgres" {
				rows = append(rows, row{fmt.Sprintf("%s p50 < 20 ms (%v)", sc, paramsText(r.Params)), l,
					fmt.Sprintf("%.1f ms (p99 %.1f)", r.LatencyMS.P50, r.LatencyMS.P99), yes(r.LatencyMS.P50 < 20)})
			}
		}
		// Issue 14: search and the user directory at their stated sizes.
		if r := find(l, scSearch); r != nil && r.LatencyMS != nil && onPostgres {
			n, _ := num(r.Params, "messages")
			rows = append(rows, row{fmt.Sprintf("search p50 < 50 ms (%.0f messages)", n), l,
				fmt.Sprintf("%.1f ms (p99 %.1f)", r.LatencyMS.P50, r.LatencyMS.P99), yes(r.LatencyMS.P50 < 50 && n >= 100000)})
		}
		if r := find(l, scUserdir); r != nil && r.LatencyMS != nil {
			n, _ := num(r.Params, "users")
			rows = append(rows, row{fmt.Sprintf("userdir p50 < 20 ms (%.0f users)", n), l,
				fmt.Sprintf("%.1f ms (p99 %.1f)", r.LatencyMS.P50, r.LatencyMS.P99), yes(r.LatencyMS.P50 < 20 && n >= 10000)})
		}
		// Issue 15: messages sent on one server reach a syncing client on
		// the other.
		if r := find(l, scFederation); r != nil && r.LatencyMS != nil {
			missed, _ := num(r.Extra, "missed")
			rows = append(rows, row{fmt.Sprintf("federation p50 < 100 ms at %v messages/s, none missed", r.Params["rate_per_s"]), l,
				fmt.Sprintf("%.1f ms (p99 %.1f), %.0f missed", r.LatencyMS.P50, r.LatencyMS.P99, missed), yes(r.LatencyMS.P50 < 100 && missed == 0)})
		}
		// Issue 13: media through the router, with little memory.
		if r := find(l, scMedia); r != nil && l == "fleet" {
			up, _ := num(r.Extra, "upload_mib_per_s")
			down, _ := num(r.Extra, "download_mib_per_s")
			rows = append(rows, row{fmt.Sprintf("media ≥ 200 MiB/s both ways via the router (%v MiB)", r.Params["mib"]), l,
				fmt.Sprintf("up %.0f, down %.0f MiB/s", up, down), yes(up >= 200 && down >= 200)})
			if g, ok := num(r.Extra, "rss_growth_mib"); ok {
				rows = append(rows, row{"media: peak RSS growth < 32 MiB", l, fmt.Sprintf("%.1f MiB", g), yes(g < 32)})
			}
		}
		peak := 0.0
		for _, r := range byLabel[l] {
			if !large(r) { // the RSS target is for the default sizes
				peak = max(peak, r.PeakRSSMiB)
			}
		}
		// The federation pair's figure sums two servers: not comparable.
		if peak > 0 && l != scFederation {
			rows = append(rows, row{"peak server RSS < 100 MiB", l, fmt.Sprintf("%.0f MiB", peak), yes(peak < 100)})
		}
		if fleet && l != "fleet-direct" {
			for _, r := range byLabel[l] {
				m := find("postgres", r.Scenario)
				if m == nil || m.Rate == 0 || r.Fatal != "" || large(r) {
					continue
				}
				rows = append(rows, row{fmt.Sprintf("%s: fleet ≥ 0.8 × monolith (postgres)", r.Scenario), l,
					fmt.Sprintf("%.2f×", r.Rate/m.Rate), yes(r.Rate >= 0.8*m.Rate)})
			}
		}
	}
	if len(rows) == 0 {
		return
	}
	tableHead(w, "Targets", "| target | deployment | figure | met |", "|---|---|--:|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.target, r.label, r.figure, r.met)
	}
	fmt.Fprintln(w)
}

// paramsText is a result's parameters as "k v, k v" in key order.
func paramsText(p map[string]any) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %v", k, p[k])
	}
	return strings.Join(parts, ", ")
}
