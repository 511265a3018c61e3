package main

import (
	"os"
	"testing"
)

// asMTAEnv makes the test binary act as the mta binary: tests that need
// the daemon as a real child process run os.Executable() with this set
// (see testDaemon), so no separate build is needed and a -race test run
// runs a race-checked daemon.
const asMTAEnv = "MTA_TEST_RUN_AS_MTA"

func TestMain(m *testing.M) {
	if os.Getenv(asMTAEnv) == "1" {
		main() // exits
	}
	// A -race binary sleeps a second at exit by default; every child this
	// test binary starts as mta (daemons, client commands) inherits this.
	_ = os.Setenv("GORACE", "atexit_sleep_ms=0 "+os.Getenv("GORACE")) // failing only costs time
	os.Exit(m.Run())
}
