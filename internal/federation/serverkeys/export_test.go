package serverkeys

// FlightWaiters is how many callers joined the fetch of server's keys in
// progress (0 when none is).
func (k *Keyring) FlightWaiters(server string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if f := k.flights[server]; f != nil {
		return f.waiters
	}
	return 0
}
