package media

// FetchWaiters reports how many requests wait on the running fetch of
// server/id (0 when none runs): tests of coalescing wait for it.
func (s *Service) FetchWaiters(server, id string) int {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	if c := s.remote.fetches[server+"/"+id]; c != nil {
		return c.waiters
	}
	return 0
}
