package main

import (
	"context"
	"fmt"
	"time"
)

// scPushSend: the cost of push evaluation on a send. One user sends, one
// message at a time, into a room of -push-members members who all keep the
// default push rules, so every send is evaluated against every member's
// rules in the persister before it is acknowledged. Run it against a
// server with push.enabled: false too (same machine, same database
// engine): the difference of the send p50s is what evaluation costs.
const scPushSend = "push_send"

func (s *scenarioRun) pushSend(ctx context.Context) error {
	nm, n := s.o.pushMembers, s.o.pushMessages
	s.res.Params = map[string]any{"members": nm, "messages": n}
	users, err := s.users(ctx, nm)
	if err != nil {
		return err
	}
	roomID, err := s.createRoom(ctx, users[0], "public_chat", "bench push")
	if err != nil {
		return err
	}
	s.prog.phase("setup: join the room", nm-1)
	if err := forEach(ctx, nm-1, s.o.concurrency, func(ctx context.Context, i int) error {
		s.prog.add(1)
		return s.joinRoom(ctx, users[i+1], roomID)
	}); err != nil {
		return err
	}
	// A few unmeasured sends warm the persister's caches of the members'
	// rules, as on a server that has been running.
	for k := range 5 {
		if _, err := s.sendMessage(ctx, users[0], roomID, textMessage(fmt.Sprintf("warm-up %d", k))); err != nil {
			return err
		}
	}
	var lat []time.Duration
	d := s.measure(ctx, "push send", n, func(ctx context.Context) {
		for k := 0; k < n && ctx.Err() == nil; k++ {
			t0 := time.Now()
			if _, err := s.sendMessage(ctx, users[0], roomID, textMessage(fmt.Sprintf("push %d", k))); err != nil {
				s.errs.add(err)
				continue
			}
			lat = append(lat, time.Since(t0))
			s.prog.add(1)
		}
	})
	s.setResult(len(lat), d, "messages/s", lat)
	return ctx.Err()
}
