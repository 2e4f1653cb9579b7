package accounts

import "time"

// SetClock replaces the service's clock (token expiry tests).
func SetClock(s *Service, now func() time.Time) { s.now = now }
