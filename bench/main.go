// Command bench is a load generator for Matrix homeservers. It speaks only
// the Client-Server API over HTTP, so it measures any server at a base URL
// (Ganglion, Synapse, Dendrite, …), registering its own users with open
// registration (m.login.dummy) or Synapse's shared-secret admin API.
//
//	go run ./bench -url http://127.0.0.1:8008 -scenario all
//	go run ./bench -url http://w1:8008,http://w2:8008 -scenario send,fanout -pid 1234,1240
//	go run ./bench -report results.jsonl -pgbench-tps 6000   (markdown from saved JSON lines)
//
// Each scenario registers fresh users (localparts start with -prefix),
// builds its rooms (the setup, not measured), then runs its measured phase.
// stdout gets one JSON object per scenario as it finishes; stderr gets a
// progress line every -progress and a table at the end.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Scenario names, in the order "all" runs them.
const (
	scSend        = "send"
	scFanout      = "fanout"
	scInitialSync = "initial_sync"
	scJoin        = "join"
	scMessages    = "messages"
	scRegister    = "register"
	scKeysQuery   = "keys_query"
	scKeysClaim   = "keys_claim"
	scMedia       = "media"
)

var allScenarios = []string{scSend, scFanout, scInitialSync, scJoin, scMessages, scRegister, scKeysQuery, scKeysClaim, scMedia}

// extraScenarios run only when named: push_send compares server
// configurations rather than measure one; search and userdir have a setup
// far larger than their measured phase.
var extraScenarios = []string{scPushSend, scSearch, scUserdir, scFederation}

// Registration modes.
const (
	regOpen         = "open"
	regSharedSecret = "shared-secret"
)

// options is the parsed command line.
type options struct {
	urls         []string
	scenarios    []string
	registerMode string
	sharedSecret string
	pids         []int
	prefix       string
	label        string
	timeout      time.Duration
	scenarioTime time.Duration
	progress     time.Duration
	concurrency  int
	table        bool

	pprofURLs    []string
	pprofSeconds int
	pprofDir     string

	sendUsers, sendRooms, sendMessages int
	fanoutMembers, fanoutMessages      int
	fanoutWait                         time.Duration
	syncRooms, syncEvents, syncRepeats int
	joinUsers, joinBatch               int
	messagesEvents, messagesLimit      int
	registerUsers, logins              int
	pushMembers, pushMessages          int
	keysUsers, keysDevices, keysRepeat int
	mediaMiB, mediaRepeats             int
	seedConcurrency                    int
	searchMessages, searchRooms        int
	searchSenders, searchQueries       int
	userdirUsers, userdirRooms         int
	userdirQueries                     int
	// federation: the second homeserver and the offered load.
	remoteURL          string
	federationMessages int
	federationRate     float64

	// Report mode: render these JSON-lines files as markdown and exit.
	reportFiles []string
	pgbenchTPS  float64
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run is the whole command: main and the smoke test both call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if len(o.reportFiles) > 0 {
		return writeReport(stdout, o.reportFiles, o.pgbenchTPS)
	}
	r := newRunner(o, stderr)
	defer r.c.close()
	fmt.Fprintf(stderr, "bench: %s against %s, users %s-*, scenarios %s\n",
		labelOr(o.label, "run"), strings.Join(o.urls, ","), o.prefix, strings.Join(o.scenarios, ","))
	var results []*Result
	for _, name := range o.scenarios {
		if ctx.Err() != nil {
			break
		}
		res := r.runScenario(ctx, name)
		results = append(results, res)
		if err := writeJSONLine(stdout, res); err != nil {
			return err
		}
	}
	tableOut := stderr
	if o.table {
		tableOut = stdout
	}
	writeTable(tableOut, results)
	failed := 0
	for _, res := range results {
		if res.Errors > 0 || res.Fatal != "" {
			failed++
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d scenarios had errors", failed, len(results))
	}
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var urls, scenarios, pids, pprofURLs, report string
	fs.StringVar(&urls, "url", "http://127.0.0.1:8008", "homeserver base URL; a comma-separated list spreads clients over several processes (client i uses url[i % n])")
	fs.StringVar(&scenarios, "scenario", "all", "comma-separated scenarios: "+strings.Join(allScenarios, ", ")+", or all; and "+strings.Join(extraScenarios, ", ")+", run only when named")
	fs.StringVar(&o.registerMode, "register", regOpen, "how users are created: open (/register with m.login.dummy) or shared-secret (/_synapse/admin/v1/register)")
	fs.StringVar(&o.sharedSecret, "shared-secret", "", "registration_shared_secret for -register shared-secret (setting it implies that mode)")
	fs.StringVar(&pids, "pid", "", "server PID(s), comma-separated: peak RSS (VmHWM, summed) is reported per scenario")
	fs.StringVar(&o.prefix, "prefix", "", "localpart prefix of the users this run creates (default: random)")
	fs.StringVar(&o.label, "label", "", "name of the deployment under test, copied into every result")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "timeout of each request (long-polls get their poll time on top)")
	fs.DurationVar(&o.scenarioTime, "scenario-timeout", 10*time.Minute, "bound on one whole scenario, setup included")
	fs.DurationVar(&o.progress, "progress", 5*time.Second, "interval of progress lines on stderr (0: none)")
	fs.IntVar(&o.concurrency, "concurrency", 8, "parallel requests in setup phases and in the register scenario")
	fs.BoolVar(&o.table, "table", false, "print the final table on stdout after the JSON lines instead of on stderr")

	fs.StringVar(&pprofURLs, "pprof", "", "base URL(s) of the server's listener with the pprof resource, comma-separated: CPU and heap profiles of each measured phase are fetched from /debug/pprof/")
	fs.IntVar(&o.pprofSeconds, "pprof-seconds", 10, "length of each CPU profile (it starts with the measured phase; a shorter phase leaves idle time in it)")
	fs.StringVar(&o.pprofDir, "pprof-dir", ".", "directory for the profiles")

	fs.IntVar(&o.sendUsers, "send-users", 20, "send: users, split evenly across the rooms")
	fs.IntVar(&o.sendRooms, "send-rooms", 5, "send: rooms")
	fs.IntVar(&o.sendMessages, "send-messages", 20, "send: messages per user")
	fs.IntVar(&o.fanoutMembers, "fanout-members", 100, "fanout: members holding a long-poll /sync")
	fs.IntVar(&o.fanoutMessages, "fanout-messages", 50, "fanout: messages sent, one at a time")
	fs.DurationVar(&o.fanoutWait, "fanout-wait", 30*time.Second, "fanout: how long to wait for every member to receive a message before sending the next")
	fs.IntVar(&o.syncRooms, "sync-rooms", 50, "initial_sync: rooms the user is in")
	fs.IntVar(&o.syncEvents, "sync-events", 100, "initial_sync: messages per room")
	fs.IntVar(&o.syncRepeats, "sync-repeats", 5, "initial_sync: full initial syncs measured (the median is the figure)")
	fs.IntVar(&o.joinUsers, "join-users", 1000, "join: users joining one public room, one at a time")
	fs.IntVar(&o.joinBatch, "join-batch", 100, "join: joins per reported batch")
	fs.IntVar(&o.messagesEvents, "messages-events", 2000, "messages: messages in the room")
	fs.IntVar(&o.messagesLimit, "messages-limit", 100, "messages: limit of each /messages page")
	fs.IntVar(&o.registerUsers, "register-users", 50, "register: registrations")
	fs.IntVar(&o.logins, "logins", 50, "register: password logins (of the users just registered)")
	fs.IntVar(&o.pushMembers, "push-members", 1000, "push_send: members of the room (default push rules), the sender included")
	fs.IntVar(&o.pushMessages, "push-messages", 200, "push_send: messages sent one at a time (each one's latency is a sample)")
	fs.IntVar(&o.keysUsers, "keys-users", 100, "keys_query: users queried in one /keys/query; keys_claim: devices claimed in one /keys/claim")
	fs.IntVar(&o.keysDevices, "keys-devices", 5, "keys_query and keys_claim: devices per user")
	fs.IntVar(&o.keysRepeat, "keys-repeats", 50, "keys_query and keys_claim: requests measured (p50/p99 are the figures)")
	fs.IntVar(&o.mediaMiB, "media-mib", 10, "media: size of the file uploaded and downloaded, in MiB")
	fs.IntVar(&o.mediaRepeats, "media-repeats", 5, "media: uploads (and downloads) measured")
	fs.IntVar(&o.seedConcurrency, "seed-concurrency", 32, "search and userdir: parallel requests registering users, joining and setting profiles")
	fs.IntVar(&o.searchMessages, "search-messages", 100000, "search: messages of generated text in the searcher's rooms")
	fs.IntVar(&o.searchRooms, "search-rooms", 5, "search: rooms the messages are spread over (the searcher is in all)")
	fs.IntVar(&o.searchSenders, "search-senders", 40, "search: users sending the messages at once, split evenly across the rooms")
	fs.IntVar(&o.searchQueries, "search-queries", 200, "search: searches measured, one at a time (one and two words, by rank and by recent)")
	fs.IntVar(&o.userdirUsers, "userdir-users", 10000, "userdir: users with display names, in public rooms")
	fs.IntVar(&o.userdirRooms, "userdir-rooms", 10, "userdir: public rooms the users are split across")
	fs.IntVar(&o.userdirQueries, "userdir-queries", 200, "userdir: user directory searches measured, one at a time")

	fs.StringVar(&o.remoteURL, "remote-url", "", "federation: base URL of a second homeserver that federates with the first -url; its user joins the first's room over federation and /syncs for the messages")
	fs.IntVar(&o.federationMessages, "federation-messages", 1000, "federation: messages sent on the first server (each one's send-to-remote-sync time is a sample)")
	fs.Float64Var(&o.federationRate, "federation-rate", 100, "federation: messages per second offered, paced")

	fs.StringVar(&report, "report", "", "render these JSON-lines result files (comma-separated) as markdown on stdout and exit")
	fs.Float64Var(&o.pgbenchTPS, "pgbench-tps", 0, "with -report: PostgreSQL's single-row insert rate measured by pgbench, for the send target")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if report != "" {
		o.reportFiles = splitList(report)
		return o, nil
	}

	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	for _, u := range splitList(urls) {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			bad("-url: %q is not an http(s) base URL", u)
			continue
		}
		o.urls = append(o.urls, strings.TrimRight(u, "/"))
	}
	if len(o.urls) == 0 {
		bad("-url: no base URL")
	}
	for _, u := range splitList(pprofURLs) {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			bad("-pprof: %q is not an http(s) base URL", u)
			continue
		}
		o.pprofURLs = append(o.pprofURLs, strings.TrimRight(u, "/"))
	}
	for _, s := range splitList(scenarios) {
		switch {
		case s == "all":
			for _, a := range allScenarios {
				if !slices.Contains(o.scenarios, a) {
					o.scenarios = append(o.scenarios, a)
				}
			}
		case slices.Contains(allScenarios, s) || slices.Contains(extraScenarios, s):
			if !slices.Contains(o.scenarios, s) {
				o.scenarios = append(o.scenarios, s)
			}
		default:
			bad("-scenario: unknown scenario %q (want %s or all)", s, strings.Join(append(slices.Clone(allScenarios), extraScenarios...), ", "))
		}
	}
	if len(o.scenarios) == 0 {
		bad("-scenario: none given")
	}
	explicitMode := false
	fs.Visit(func(f *flag.Flag) { explicitMode = explicitMode || f.Name == "register" })
	if o.sharedSecret != "" && !explicitMode {
		o.registerMode = regSharedSecret
	}
	switch o.registerMode {
	case regOpen:
	case regSharedSecret:
		if o.sharedSecret == "" {
			bad("-register shared-secret: -shared-secret is required")
		}
	default:
		bad("-register: %q is neither %s nor %s", o.registerMode, regOpen, regSharedSecret)
	}
	for _, p := range splitList(pids) {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			bad("-pid: %q is not a process id", p)
			continue
		}
		o.pids = append(o.pids, n)
	}
	if o.prefix == "" {
		var b [3]byte
		_, _ = rand.Read(b[:])
		o.prefix = "b" + hex.EncodeToString(b[:])
	}
	for _, c := range o.prefix {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			bad("-prefix: %q may hold only a-z, 0-9, '.', '_' and '-' (it starts Matrix localparts)", o.prefix)
			break
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"timeout", o.timeout}, {"scenario-timeout", o.scenarioTime}, {"fanout-wait", o.fanoutWait}} {
		if d.v <= 0 {
			bad("-%s: must be positive, got %s", d.name, d.v)
		}
	}
	if o.remoteURL != "" {
		pu, err := url.Parse(o.remoteURL)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			bad("-remote-url: %q is not an http(s) base URL", o.remoteURL)
		}
		o.remoteURL = strings.TrimRight(o.remoteURL, "/")
	}
	if o.federationRate <= 0 {
		bad("-federation-rate: must be positive, got %v", o.federationRate)
	}
	if o.progress < 0 {
		bad("-progress: must not be negative")
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"concurrency", o.concurrency}, {"pprof-seconds", o.pprofSeconds},
		{"send-users", o.sendUsers}, {"send-rooms", o.sendRooms}, {"send-messages", o.sendMessages},
		{"fanout-members", o.fanoutMembers}, {"fanout-messages", o.fanoutMessages},
		{"sync-rooms", o.syncRooms}, {"sync-events", o.syncEvents}, {"sync-repeats", o.syncRepeats},
		{"join-users", o.joinUsers}, {"join-batch", o.joinBatch},
		{"messages-events", o.messagesEvents}, {"messages-limit", o.messagesLimit},
		{"register-users", o.registerUsers}, {"logins", o.logins},
		{"push-members", o.pushMembers}, {"push-messages", o.pushMessages},
		{"keys-users", o.keysUsers}, {"keys-devices", o.keysDevices}, {"keys-repeats", o.keysRepeat},
		{"media-mib", o.mediaMiB}, {"media-repeats", o.mediaRepeats},
		{"seed-concurrency", o.seedConcurrency},
		{"search-messages", o.searchMessages}, {"search-rooms", o.searchRooms},
		{"search-senders", o.searchSenders}, {"search-queries", o.searchQueries},
		{"userdir-users", o.userdirUsers}, {"userdir-rooms", o.userdirRooms}, {"userdir-queries", o.userdirQueries},
		{"federation-messages", o.federationMessages},
	} {
		if n.v < 1 {
			bad("-%s: must be at least 1, got %d", n.name, n.v)
		}
	}
	if o.sendRooms > o.sendUsers {
		bad("-send-rooms: %d rooms need at least as many users, got -send-users %d", o.sendRooms, o.sendUsers)
	}
	if o.searchRooms > o.searchSenders {
		bad("-search-rooms: %d rooms need at least as many senders, got -search-senders %d", o.searchRooms, o.searchSenders)
	}
	if o.userdirRooms > o.userdirUsers {
		bad("-userdir-rooms: %d rooms need at least as many users, got -userdir-users %d", o.userdirRooms, o.userdirUsers)
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	return o, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func labelOr(label, def string) string {
	if label == "" {
		return def
	}
	return label
}
