package sagastate_test

import (
	"os"
	"testing"

	"github.com/sagabox/sagabox/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }
