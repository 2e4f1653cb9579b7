package inbound

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// Fetcher makes signed federation requests to other servers
// (client.Client): what the transaction handler fetches missing events,
// auth chains and state from.
type Fetcher interface {
	SignedGetJSON(ctx context.Context, destination, path string, out any) error
	SignedPostJSON(ctx context.Context, destination, path string, body, out any) error
}

// EventVerifier checks the signatures of an event (serverkeys.Keyring).
type EventVerifier interface {
	VerifyEventSignatures(ctx context.Context, ev *events.Event) error
}

// SendOptions is what PUT /send needs.
type SendOptions struct {
	// Remote stores the transaction's events. Nil answers every PDU with
	// an error (the remote event path does not exist in this build).
	Remote   rooms.RemoteWriter
	Fetch    Fetcher
	Verifier EventVerifier
	// DB keeps the answers of transactions (federation_inbound_txns).
	DB *storage.DB
	// Deadline bounds the processing of one transaction, fetches
	// included; 0 means DefaultTxnDeadline.
	Deadline time.Duration
	// Limits bound what one transaction may make this server fetch; zero
	// fields take the defaults.
	Limits FetchLimits
}

// DefaultTxnDeadline bounds the processing of a transaction: past it, the
// PDUs not yet stored are answered with an error, so that an origin cannot
// keep the server fetching.
const DefaultTxnDeadline = 2 * time.Minute

// The spec's limits on a transaction.
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
)

type sendHandler struct {
	opts  SendOptions
	txns  *txnStore
	locks originLocks
}

// WithSend serves PUT /_matrix/federation/v1/send/{txnId}; without it the
// endpoint is not mounted.
func (s *Server) WithSend(o SendOptions) *Server {
	if o.Deadline <= 0 {
		o.Deadline = DefaultTxnDeadline
	}
	o.Limits.defaults()
	s.send = &sendHandler{opts: o, txns: &txnStore{db: o.DB, now: s.cfg.Now}}
	return s
}

// inboundTxn is the body of PUT /send. PDUs and EDUs stay raw: each is
// checked on its own, so one bad PDU or EDU does not fail the others.
type inboundTxn struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []json.RawMessage `json:"edus"`
}

type inboundEDU struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// parseTransaction decodes and checks a transaction body: a body that is
// not JSON is M_NOT_JSON; JSON that is not an object or of the wrong shape, without an
// origin, or with more PDUs or EDUs than the spec allows is M_BAD_JSON
// (Synapse answers the count limits with a bare 400 too).
func parseTransaction(body []byte) (*inboundTxn, error) {
	body = bytes.TrimSpace(body)
	if !json.Valid(body) {
		return nil, mxhttp.NotJSON("Content not JSON.")
	}
	if body[0] != '{' {
		return nil, mxhttp.BadJSON("Content must be a JSON object.")
	}
	var txn inboundTxn
	if err := json.Unmarshal(body, &txn); err != nil {
		return nil, mxhttp.BadJSON("Invalid transaction: %v", err)
	}
	if txn.Origin == "" {
		return nil, mxhttp.BadJSON("Transaction without origin")
	}
	if len(txn.PDUs) > maxTxnPDUs {
		return nil, mxhttp.BadJSON("Transaction has %d PDUs, the limit is %d", len(txn.PDUs), maxTxnPDUs)
	}
	if len(txn.EDUs) > maxTxnEDUs {
		return nil, mxhttp.BadJSON("Transaction has %d EDUs, the limit is %d", len(txn.EDUs), maxTxnEDUs)
	}
	return &txn, nil
}

// pduResult is one PDU's entry in the answer: {} or {"error": …}.
type pduResult struct {
	Error string `json:"error,omitempty"`
}

type sendResponse struct {
	PDUs map[string]pduResult `json:"pdus"`
}

// PUT /_matrix/federation/v1/send/{txnId}
func (s *Server) putSend(w http.ResponseWriter, r *http.Request) error {
	from, err := origin(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	txnID := r.PathValue("txnId")
	// The authenticator has read the body within its limit.
	body, err := mxhttp.ReadBody(r, 1<<62)
	if err != nil {
		return err
	}
	txn, err := parseTransaction(body)
	if err != nil {
		return err
	}
	if txn.Origin != from {
		return mxhttp.Forbidden("Transaction origin %s is not the authenticated server %s", txn.Origin, from)
	}
	unlock, err := s.send.locks.lock(ctx, from, txnID)
	if err != nil {
		return err
	}
	defer unlock()
	resp, err := s.answerTxn(ctx, from, txnID, txn)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(resp)
	return nil
}

// claimPoll is how often a transaction that another worker is processing
// is looked at again.
const claimPoll = 250 * time.Millisecond

// answerTxn returns the stored answer of a transaction seen before, or
// processes it and stores its answer.
func (s *Server) answerTxn(ctx context.Context, from, txnID string, txn *inboundTxn) ([]byte, error) {
	h := s.send
	for {
		// A claim older than the processing deadline was abandoned.
		stale := s.cfg.Now().Add(-h.opts.Deadline - time.Minute)
		resp, claimed, err := h.txns.claim(ctx, from, txnID, stale)
		if err != nil {
			return nil, err
		}
		if resp != nil {
			return resp, nil
		}
		if claimed {
			break
		}
		// Another worker processes it (a fleet routes /send by origin, so
		// only across a routing change): wait for its answer.
		t := time.NewTimer(claimPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	// The processing outlives a sender that hung up: its retry is then
	// answered from the stored result instead of starting over.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.opts.Deadline)
	defer cancel()
	results, err := s.processTxn(pctx, from, txn)
	if err != nil {
		if rerr := h.txns.release(context.WithoutCancel(ctx), from, txnID); rerr != nil {
			s.log.Warn("release inbound transaction", "origin", from, "txn_id", txnID, "err", rerr)
		}
		return nil, fmt.Errorf("process transaction %s of %s: %w", txnID, from, err)
	}
	resp, err := json.Marshal(sendResponse{PDUs: results})
	if err != nil {
		return nil, fmt.Errorf("encode answer of transaction %s of %s: %w", txnID, from, err)
	}
	if err := h.txns.finish(context.WithoutCancel(ctx), from, txnID, resp); err != nil {
		// The events are stored; a retry is processed again and finds them
		// duplicates.
		s.log.Warn("record inbound transaction", "origin", from, "txn_id", txnID, "err", err)
	}
	return resp, nil
}

// processTxn handles a transaction's PDUs and, meanwhile, its EDUs. An
// error means the transaction could not be processed at all (the
// database): the sender should retry it.
func (s *Server) processTxn(ctx context.Context, from string, txn *inboundTxn) (map[string]pduResult, error) {
	edusDone := make(chan struct{})
	go func() {
		defer close(edusDone)
		s.dispatchEDUs(ctx, from, txn.EDUs)
	}()
	results, err := s.processPDUs(ctx, from, txn.PDUs)
	<-edusDone
	if err == nil {
		for _, r := range results {
			if r.Error == "" {
				s.metrics.pdu("accepted")
			} else {
				s.metrics.pdu("error")
			}
		}
	}
	return results, err
}

// dispatchEDUs hands each EDU to its type's handler; EDUs of unknown types
// are ignored and a handler's failure is only logged, as the spec has no
// per-EDU answer.
func (s *Server) dispatchEDUs(ctx context.Context, from string, edus []json.RawMessage) {
	for i, raw := range edus {
		var e inboundEDU
		if err := json.Unmarshal(raw, &e); err != nil {
			s.log.Info("dropped malformed EDU", "origin", from, "index", i, "err", err)
			s.metrics.edu("malformed")
			continue
		}
		h := s.edus[e.Type]
		if h == nil {
			s.metrics.edu("ignored")
			continue
		}
		if err := s.runEDU(ctx, h, from, e.Content); err != nil {
			s.log.Warn("EDU not handled", "origin", from, "edu_type", e.Type, "err", err)
			s.metrics.edu("failed")
			continue
		}
		s.metrics.edu("handled")
	}
}

// runEDU runs a handler, turning a panic into an error: it runs outside
// the request's goroutine, where no middleware would catch it.
func (s *Server) runEDU(ctx context.Context, h EDUHandler, from string, content json.RawMessage) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return h(ctx, from, content)
}

// processPDUs checks each PDU on its own (room, format, signatures, content
// hash), then stores the good ones room by room, fetching what they
// reference and the server does not have.
func (s *Server) processPDUs(ctx context.Context, from string, pdus []json.RawMessage) (map[string]pduResult, error) {
	results := map[string]pduResult{}
	byRoom := map[string][]*events.Event{}
	var order []string
	for i, raw := range pdus {
		ev, id, err := s.checkPDU(ctx, raw)
		if err != nil {
			if ctx.Err() == nil && !isPDUError(err) {
				return nil, err
			}
			if id == "" {
				// Without an id nothing in the answer can name it.
				s.log.Info("dropped PDU", "origin", from, "index", i, "err", err)
				s.metrics.pdu("dropped")
				continue
			}
			results[id] = pduResult{Error: err.Error()}
			continue
		}
		id = ev.EventID()
		if _, dup := results[id]; dup || slices.ContainsFunc(byRoom[ev.RoomID()], func(e *events.Event) bool { return e.EventID() == id }) {
			continue
		}
		if byRoom[ev.RoomID()] == nil {
			order = append(order, ev.RoomID())
		}
		byRoom[ev.RoomID()] = append(byRoom[ev.RoomID()], ev)
	}
	budget := newFetchBudget(s.send.opts.Limits)
	for _, roomID := range order {
		evs := byRoom[roomID]
		errs, err := s.processRoom(ctx, from, roomID, evs, budget)
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			results[ev.EventID()] = pduResult{Error: errs[ev.EventID()]}
		}
	}
	return results, nil
}

// pduError is a problem of one PDU (answered in its result), as opposed
// to a failure of the server.
type pduError struct{ msg string }

func (e *pduError) Error() string { return e.msg }

func pduErrorf(format string, args ...any) error { return &pduError{msg: fmt.Sprintf(format, args...)} }

func isPDUError(err error) bool {
	var pe *pduError
	return errors.As(err, &pe)
}

// checkPDU parses a PDU of a room known here and checks its signatures and
// content hash, redacting it when the hash does not match (the spec: the
// event was altered after its origin hashed it, and is kept redacted). id
// names the PDU in the answer when it can be known even though err is
// set.
func (s *Server) checkPDU(ctx context.Context, raw json.RawMessage) (ev *events.Event, id string, err error) {
	ev, id, err = parsePDU(raw, func(roomID string) (*events.RoomVersion, error) {
		ok, err := s.store.RoomExists(ctx, roomID)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, pduErrorf("unknown room %s", roomID)
		}
		// A room known only through an invite or a departed user is not
		// one others may build state in here.
		if in, err := s.store.HostsJoined(ctx, roomID, s.cfg.ServerName); err != nil {
			return nil, err
		} else if !in {
			return nil, pduErrorf("this server has no user joined to room %s", roomID)
		}
		return s.store.RoomVersion(ctx, roomID)
	})
	if err != nil {
		return nil, id, err
	}
	ev, err = s.checkEvent(ctx, ev)
	return ev, id, err
}

// parsePDU reads a PDU's room, asks version for the room's version, and
// parses the PDU for it. Failures are pduErrors unless version fails
// otherwise. When the PDU is malformed, id is still its event id if that
// can be computed.
func parsePDU(raw json.RawMessage, version func(roomID string) (*events.RoomVersion, error)) (*events.Event, string, error) {
	var head struct {
		RoomID  json.RawMessage `json:"room_id"`
		EventID json.RawMessage `json:"event_id"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, "", pduErrorf("malformed PDU: %v", err)
	}
	var roomID, givenID string
	_ = json.Unmarshal(head.EventID, &givenID)
	if err := json.Unmarshal(head.RoomID, &roomID); err != nil || roomID == "" {
		return nil, givenID, pduErrorf("PDU without a room_id")
	}
	rv, err := version(roomID)
	if err != nil {
		return nil, givenID, err
	}
	ev, err := events.Parse(raw, rv)
	if err != nil {
		return nil, malformedID(raw, rv, givenID), pduErrorf("malformed PDU: %v", err)
	}
	if ev.RoomID() != roomID {
		return nil, ev.EventID(), pduErrorf("PDU of room %s parsed as of room %s", roomID, ev.RoomID())
	}
	return ev, ev.EventID(), nil
}

// malformedID is the id of a PDU that did not parse, when its reference
// hash can be computed (room versions 3+) or it carries one (1 and 2).
func malformedID(raw []byte, rv *events.RoomVersion, given string) string {
	if rv.Format == events.FormatV1 {
		return given
	}
	h, err := events.ReferenceHash(raw, rv)
	if err != nil {
		return ""
	}
	if rv.Format == events.FormatV2 {
		return "$" + base64.RawStdEncoding.EncodeToString(h)
	}
	return "$" + base64.RawURLEncoding.EncodeToString(h)
}

// checkEvent verifies an event's signatures and content hash; an event
// whose content hash fails comes back redacted.
func (s *Server) checkEvent(ctx context.Context, ev *events.Event) (*events.Event, error) {
	if err := s.send.opts.Verifier.VerifyEventSignatures(ctx, ev); err != nil {
		if ctx.Err() != nil {
			return nil, pduErrorf("signatures not checked in time: %v", err)
		}
		return nil, pduErrorf("bad signatures: %v", err)
	}
	if err := events.CheckContentHash(ev); err != nil {
		red, rerr := ev.Redact()
		if rerr != nil {
			return nil, pduErrorf("content hash mismatch and cannot redact: %v", rerr)
		}
		s.log.Info("content hash mismatch: keeping the event redacted", "event_id", ev.EventID(), "err", err)
		return red, nil
	}
	return ev, nil
}

// processRoom stores one room's PDUs of the transaction and returns the
// error message of each PDU that failed. The origin must be allowed by the
// room's server ACL.
func (s *Server) processRoom(ctx context.Context, from, roomID string, evs []*events.Event, budget *fetchBudget) (map[string]string, error) {
	fail := func(msg string) map[string]string {
		out := map[string]string{}
		for _, ev := range evs {
			out[ev.EventID()] = msg
		}
		return out
	}
	aclEv, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.server_acl", "")
	if err != nil {
		if ctx.Err() != nil {
			return fail("not processed in time"), nil
		}
		return nil, fmt.Errorf("server ACL of %s: %w", roomID, err)
	}
	if aclEv != nil && !parseServerACL(aclEv.Event.Content()).allows(from) {
		return fail(fmt.Sprintf("server %s is banned from room %s by its server ACL", from, roomID)), nil
	}
	rf := &roomFetch{s: s, origin: from, roomID: roomID, rv: evs[0].Version(), budget: budget}
	return rf.persist(ctx, evs)
}
