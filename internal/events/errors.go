package events

import "errors"

// Error kinds, for errors.Is. Callers map them to protocol behaviour: a
// malformed or oversized event is rejected (M_BAD_JSON / dropped over
// federation); a content hash mismatch means the event is stored redacted;
// a missing or invalid signature means it is rejected.
var (
	ErrMalformedEvent      = errors.New("malformed event")
	ErrEventTooLarge       = errors.New("event too large")
	ErrContentHashMismatch = errors.New("content hash mismatch")
	ErrSignatureMissing    = errors.New("signature missing")
	ErrSignatureInvalid    = errors.New("signature invalid")
)
