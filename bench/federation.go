package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"
)

// scFederation: two homeservers federating. A user on the first server
// (-url) sends messages at -federation-rate into a room that a user on the
// second server (-remote-url) joined over federation; the second user
// long-polls /sync on its own server. Each sample is one message's time
// from the send request on the first server to the /sync answer on the
// second that carries it (issue 15: p50 < 100 ms at 100 messages/s).
//
// It needs both servers to federate (make_join/send_join for the join,
// inbound /send for the messages); a server that cannot ends the scenario
// in its setup with an error saying which step failed.
const scFederation = "federation"

// federationPollFilter: a generous timeline limit, so a burst never comes
// back limited, and no presence.
const federationPollFilter = `{"room":{"timeline":{"limit":200}},"presence":{"not_types":["*"]}}`

// serverOf is the server name part of a user id.
func serverOf(userID string) string {
	if i := strings.IndexByte(userID, ':'); i >= 0 {
		return userID[i+1:]
	}
	return ""
}

func (s *scenarioRun) federation(ctx context.Context) error {
	msgs, rate := s.o.federationMessages, s.o.federationRate
	s.res.Params = map[string]any{"messages": msgs, "rate_per_s": rate, "remote": s.o.remoteURL}
	if s.o.remoteURL == "" {
		return errors.New("-remote-url is required: the base URL of the second homeserver, which must federate with -url's")
	}
	s.prog.phase("setup: register", 2)
	sender, err := s.register(ctx, s.base(0), fmt.Sprintf("%s-%s-a", s.o.prefix, s.res.Scenario))
	if err != nil {
		return fmt.Errorf("on the first server: %w", err)
	}
	receiver, err := s.register(ctx, s.o.remoteURL, fmt.Sprintf("%s-%s-b", s.o.prefix, s.res.Scenario))
	if err != nil {
		return fmt.Errorf("on the second server: %w", err)
	}
	origin, remote := serverOf(sender.id), serverOf(receiver.id)
	if origin == remote {
		return fmt.Errorf("-url and -remote-url are one server (%s): give the second homeserver's URL", origin)
	}
	s.res.Extra["servers"] = origin + " → " + remote
	roomID, err := s.createRoom(ctx, sender, "public_chat", "bench federation")
	if err != nil {
		return err
	}
	s.prog.phase("setup: join over federation", 1)
	q := url.Values{"server_name": {origin}, "via": {origin}}
	if _, err := s.c.do(ctx, 0, "POST", receiver.base, clientPath("join", roomID)+"?"+q.Encode(), receiver.token, map[string]any{}, nil); err != nil {
		return fmt.Errorf("%s (on %s) joining %s on %s over federation (make_join/send_join): %w", receiver.id, remote, roomID, origin, err)
	}
	ans, _, err := s.sync(ctx, receiver, "", fanoutInitialFilter, 0)
	if err != nil {
		return err
	}
	since := ans.NextBatch

	// Sequence 0 is the warm-up (the first transaction to a destination
	// also fetches keys); 1..msgs are measured.
	tr := newFanoutTracker(1, msgs+1, s.prog)
	var limited int
	pollCtx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	var poll sync.WaitGroup
	poll.Go(func() {
		for pollCtx.Err() == nil {
			ans, _, err := s.sync(pollCtx, receiver, since, federationPollFilter, fanoutPollMS)
			at := time.Now()
			if err != nil {
				if isCanceled(pollCtx, err) {
					return
				}
				s.errs.add(err)
				if pause(pollCtx, 250*time.Millisecond) != nil {
					return
				}
				continue
			}
			since = ans.NextBatch
			room, ok := ans.Rooms.Join[roomID]
			if !ok {
				continue
			}
			if room.Timeline.Limited {
				limited++
			}
			for _, ev := range room.Timeline.Events {
				if ev.Type != "m.room.message" || ev.Sender != sender.id {
					continue
				}
				var c fanoutContent
				if json.Unmarshal(ev.Content, &c) != nil || c.Run != s.o.prefix {
					continue
				}
				tr.deliver(0, c.Seq, at)
			}
		}
	})

	var sendLat samples
	sendOne := func(ctx context.Context, seq int) error {
		t0 := time.Now()
		tr.sent(seq, t0)
		_, err := s.sendMessage(ctx, sender, roomID, fanoutContent{
			MsgType: "m.text", Body: fmt.Sprintf("federation %d", seq), Run: s.o.prefix, Seq: seq})
		if err == nil && seq > 0 {
			sendLat.add(time.Since(t0))
		}
		return err
	}
	s.prog.phase("setup: warm-up message", 0)
	if err := sendOne(ctx, 0); err != nil {
		return err
	}
	if !waitOrDone(ctx, tr.done[0], s.o.fanoutWait) {
		return fmt.Errorf("the first message from %s did not reach %s's /sync on %s within %s (is inbound /send delivering?)",
			origin, receiver.id, remote, s.o.fanoutWait)
	}

	// Paced sends: message i goes at start + i/rate, each in its own
	// request, so a slow send does not lower the offered rate.
	interval := time.Duration(float64(time.Second) / rate)
	var first, lastSent time.Time
	s.measure(ctx, "deliver", msgs, func(ctx context.Context) {
		first = time.Now()
		var sends sync.WaitGroup
		for seq := 1; seq <= msgs && ctx.Err() == nil; seq++ {
			if pause(ctx, time.Until(first.Add(time.Duration(seq-1)*interval))) != nil {
				break
			}
			sends.Go(func() {
				if err := sendOne(ctx, seq); err != nil {
					s.errs.add(err)
				}
			})
		}
		sends.Wait()
		lastSent = time.Now()
		// Everything sent should arrive; wait for the last ones.
		for seq := 1; seq <= msgs; seq++ {
			if !waitOrDone(ctx, tr.done[seq], time.Until(lastSent.Add(s.o.fanoutWait))) {
				break
			}
		}
	})
	stopPoll()
	poll.Wait()

	tr.mu.Lock()
	defer tr.mu.Unlock()
	missed := 0
	for seq := 1; seq <= msgs; seq++ {
		if !tr.sentAt[seq].IsZero() && tr.received[seq] == 0 {
			missed++
		}
	}
	if missed > 0 {
		s.errs.add(fmt.Errorf("%d of %d messages never reached the second server's /sync within %s of the last send", missed, msgs, s.o.fanoutWait))
	}
	if tr.duplicates > 0 {
		s.errs.add(fmt.Errorf("%d messages delivered twice", tr.duplicates))
	}
	var d time.Duration
	if !tr.last.IsZero() {
		d = tr.last.Sub(first)
	}
	s.setResult(len(tr.delays), d, "messages/s", tr.delays)
	s.res.Extra["missed"] = missed
	s.res.Extra["duplicates"] = tr.duplicates
	s.res.Extra["limited_timelines"] = limited
	s.res.Extra["send_latency_ms"] = percentiles(sendLat.all())
	if !lastSent.IsZero() {
		s.res.Extra["offered_rate_per_s"] = round2(float64(msgs) / lastSent.Sub(first).Seconds())
	}
	return ctx.Err()
}
