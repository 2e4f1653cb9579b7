//go:build !goolm

package e2e_test

import "testing"

// testFederationE2EE needs mautrix's crypto, built with the goolm tag
// (scripts/test always sets it); federation_e2ee_test.go has the suite.
func testFederationE2EE(t *testing.T, _ *fedPair) {
	t.Skip("end-to-end encryption needs the goolm build tag (scripts/test sets it)")
}
