package sagastate_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/sagabox/sagabox/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runOrchestratorChild())
	}
	code := testenv.Run(m)
	if code == 0 {
		// Everything the tests started (orchestrators, relays, participants, consumers)
		// must have stopped.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
