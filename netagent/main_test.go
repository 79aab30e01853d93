package netagent

import (
	"os"
	"testing"

	"github.com/govnet/govnet/hsm/hsmtest"
)

// TestMain removes the SoftHSM2 tokens the tests made, once every test
// (and its controller and tokens) is done.
func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}
