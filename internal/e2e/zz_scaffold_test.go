package e2e_test

import "testing"

// Temporary: the new suites' own code against one server (both "sides").
func TestZZScaffoldFedSuite2(t *testing.T) {
	s := startServer(t, engineSQLite)
	fs := &fedServer{server: s, name: serverName}
	p := &fedPair{a: fs, b: fs}
	t.Run("room_versions", func(t *testing.T) { testFederationRoomVersions(t, p) })
	t.Run("backfill", func(t *testing.T) { testFederationBackfill(t, p) })
	t.Run("e2ee", func(t *testing.T) { testFederationE2EE(t, p) })
}
