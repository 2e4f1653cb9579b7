package inbound

import (
	"context"
	"encoding/json"
)

// EDUHandler takes one EDU of an inbound transaction. origin is the
// authenticated server that sent the transaction; the handler checks that
// the EDU's content speaks only for that server's users and devices. An
// error is logged and dropped: EDUs have no per-EDU result in the
// transaction's answer.
type EDUHandler func(ctx context.Context, origin string, content json.RawMessage) error

// HandleEDU installs the handler of one EDU type (m.typing, m.receipt,
// m.presence, m.direct_to_device, m.device_list_update,
// m.signing_key_update…). EDUs of types nobody handles are ignored, as the
// spec asks. Call before Routes.
func (s *Server) HandleEDU(eduType string, h EDUHandler) {
	if s.edus == nil {
		s.edus = map[string]EDUHandler{}
	}
	s.edus[eduType] = h
}
