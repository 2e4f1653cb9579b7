package keys

import "time"

// SetClock replaces the service's clock (upload order in claim tests).
func SetClock(s *Service, now func() time.Time) { s.now = now }
