package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"ganglion/internal/app"
	"ganglion/internal/config"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// Target is an instance that `ganglion status` asks.
type Target struct {
	Name string
	// Role is the expected role ("" if unknown), shown when it is down.
	Role string
	// Replication locates the status endpoint; nil when the instance has
	// no replication listener, in which case only HealthURL is probed.
	Replication *config.InstanceLocation
	HealthURL   string
}

// TargetsFromPlan lists the instances of a deployment.
func TargetsFromPlan(p *Plan) []Target {
	out := make([]Target, 0, len(p.Instances))
	for _, in := range p.Instances {
		out = append(out, Target{Name: in.Name, Role: in.Role, Replication: in.Replication, HealthURL: in.HealthURL})
	}
	return out
}

// TargetsFromConfig lists the instances of a shared config's instance_map,
// main first.
func TargetsFromConfig(cfg *config.Config) []Target {
	names := slices.Sorted(maps.Keys(cfg.InstanceMap))
	slices.SortStableFunc(names, func(a, b string) int {
		return boolInt(canonical(b) == config.MainInstance) - boolInt(canonical(a) == config.MainInstance)
	})
	out := make([]Target, 0, len(names))
	for _, n := range names {
		loc := cfg.InstanceMap[n]
		t := Target{Name: canonical(n), Replication: &loc}
		if t.Name == config.MainInstance {
			t.Role = config.RoleMain
		}
		out = append(out, t)
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Report is one instance's answer.
type Report struct {
	Instance string `json:"instance"`
	Up       bool   `json:"up"`
	Error    string `json:"error,omitempty"`
	// Status is the instance's status report as it sent it; absent when
	// it is down or has no replication listener.
	Status json.RawMessage `json:"status,omitempty"`
}

// parsed decodes Status (nil if absent or undecodable).
func (r Report) parsed() *app.Status {
	if len(r.Status) == 0 {
		return nil
	}
	var st app.Status
	if json.Unmarshal(r.Status, &st) != nil {
		return nil
	}
	return &st
}

// QueryStatus asks every target, concurrently, for its status, each
// within timeout (retries of refused connections included).
func QueryStatus(ctx context.Context, targets []Target, secret string, timeout time.Duration) []Report {
	locs := map[string]config.InstanceLocation{}
	for _, t := range targets {
		if t.Replication != nil {
			locs[t.Name] = *t.Replication
		}
	}
	// A name no instance has, so the client never refuses a call as one to
	// itself.
	client := replication.NewClient(replication.InstanceLookup(locs), secret, "ganglion-status", nil,
		slog.New(slog.DiscardHandler))
	defer client.CloseIdleConnections()
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()

	reports := make([]Report, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() {
			r := Report{Instance: t.Name}
			switch {
			case t.Replication != nil:
				var raw json.RawMessage
				err := client.Call(ctx, t.Name, app.StatusEndpoint, nil, nil, &raw,
					replication.WithBudget(timeout), replication.WithAttemptTimeout(timeout))
				if err == nil {
					var st app.Status
					if err = json.Unmarshal(raw, &st); err == nil {
						r.Up, r.Status = true, raw
					} else {
						err = fmt.Errorf("decode status: %w", err)
					}
				}
				if err != nil {
					r.Error = describe(err)
				}
			case t.HealthURL != "":
				pctx, cancel := context.WithTimeout(ctx, timeout)
				err := probe(pctx, hc, t.HealthURL)
				cancel()
				if err != nil {
					r.Error = err.Error()
				} else {
					r.Up = true
				}
			default:
				r.Error = "no listener to ask"
			}
			reports[i] = r
		})
	}
	wg.Wait()
	return reports
}

// describe shortens the error of an unreachable instance to its cause
// ("unreachable: connection refused"); the client's full chain of retries
// is noise in a status table.
func describe(err error) string {
	msg := err.Error()
	if !errors.Is(err, replication.ErrUnavailable) {
		return msg
	}
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return "unreachable: " + msg
}

// Down counts the reports of instances that did not answer.
func Down(reports []Report) int {
	n := 0
	for _, r := range reports {
		if !r.Up {
			n++
		}
	}
	return n
}

// WriteStatusTable prints one line per instance, then per stream and
// writer the writer's own position and how far each instance is behind it,
// then each instance's request rate and p99 latency since it started.
func WriteStatusTable(w io.Writer, targets []Target, reports []Report) error {
	return WriteStatusTableWithRates(w, targets, reports, RequestRates(nil, reports, 0))
}

// WriteStatusTableWithRates is WriteStatusTable with rates computed by the
// caller (from two samples: see RequestRates).
func WriteStatusTableWithRates(w io.Writer, targets []Target, reports []Report, rates []Rate) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tROLE\tSTATE\tUPTIME\tREDIS\tWRITES")
	var errs []string
	for i, r := range reports {
		role, state, uptime, redis, writes := targets[i].Role, "down", "-", "-", "-"
		if role == "" {
			role = "?"
		}
		if r.Up {
			state = "up"
		}
		if st := r.parsed(); st != nil {
			role = st.Role
			uptime = (time.Duration(st.UptimeSec) * time.Second).String()
			if st.Redis != nil {
				redis = fmt.Sprintf("disconnected, %d reconnects", st.Redis.Reconnects)
				if st.Redis.Connected {
					redis = fmt.Sprintf("connected, %d reconnects", st.Redis.Reconnects)
				}
			}
			var ws []string
			for _, s := range st.WrittenHere {
				if s != string(streams.Caches) {
					ws = append(ws, s)
				}
			}
			if len(ws) > 0 {
				writes = strings.Join(ws, ",")
			}
		} else if r.Up {
			state = "up (health only)"
		}
		if r.Error != "" {
			errs = append(errs, fmt.Sprintf("%s: %s", r.Instance, r.Error))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Instance, role, state, uptime, redis, writes)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	lag := lagRows(reports)
	if len(lag.rows) > 0 {
		fmt.Fprintln(w, "\nLag behind each writer (the writer's own position minus the instance's view of it):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "STREAM\tWRITER\tPOSITION\t%s\n", strings.Join(lag.columns, "\t"))
		for _, row := range lag.rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", row.stream, row.writer, row.position, strings.Join(row.lags, "\t"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if err := WriteRateTable(w, rates); err != nil {
		return err
	}
	if len(errs) > 0 {
		fmt.Fprintln(w, "\nErrors:")
		for _, e := range errs {
			fmt.Fprintln(w, "  "+e)
		}
	}
	return nil
}

type lagTable struct {
	columns []string // instances that reported positions
	rows    []lagRow
}

type lagRow struct {
	stream, writer, position string
	lags                     []string // per column
}

// lagRows builds the lag table. Writers are those that report writing a
// stream, plus any writer another instance tracks (so a writer that is
// down still shows up). The caches stream is left out: every instance
// writes its own.
func lagRows(reports []Report) lagTable {
	var t lagTable
	byName := map[string]*app.Status{}
	writers := map[string]map[string]bool{} // stream → writers
	addWriter := func(s, w string) {
		if s == string(streams.Caches) {
			return
		}
		if writers[s] == nil {
			writers[s] = map[string]bool{}
		}
		writers[s][w] = true
	}
	for _, r := range reports {
		st := r.parsed()
		if st == nil {
			continue
		}
		t.columns = append(t.columns, r.Instance)
		byName[r.Instance] = st
		for _, s := range st.WrittenHere {
			addWriter(s, r.Instance)
		}
		for s, m := range st.Positions {
			for w := range m {
				addWriter(s, w)
			}
		}
	}
	for _, s := range orderStreams(slices.Collect(maps.Keys(writers))) {
		for _, w := range slices.Sorted(maps.Keys(writers[s])) {
			row := lagRow{stream: s, writer: w, position: "down"}
			own, ownKnown := int64(0), false
			if st := byName[w]; st != nil {
				own, ownKnown = st.Positions[s][w], true
				row.position = strconv.FormatInt(own, 10)
			}
			for _, c := range t.columns {
				view, ok := byName[c].Positions[s][w]
				switch {
				case c == w:
					row.lags = append(row.lags, "-")
				case !ownKnown:
					row.lags = append(row.lags, "?")
				case !ok && own == 0:
					// Nothing written yet, so nothing to have missed.
					row.lags = append(row.lags, "0")
				case !ok:
					row.lags = append(row.lags, "?") // never heard from the writer
				default:
					row.lags = append(row.lags, strconv.FormatInt(own-view, 10))
				}
			}
			t.rows = append(t.rows, row)
		}
	}
	return t
}

// orderStreams sorts stream names in config order, unknown ones last.
func orderStreams(names []string) []string {
	known := streamNames()
	slices.SortFunc(names, func(a, b string) int {
		ia, ib := slices.Index(known, a), slices.Index(known, b)
		if ia < 0 {
			ia = len(known)
		}
		if ib < 0 {
			ib = len(known)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	return names
}
