package main

import (
	"testing"
	"time"

	"mta/spool"
)

func TestLastReply(t *testing.T) {
	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		a    spool.Attempt
		want string
	}{
		{"reply", spool.Attempt{Time: at, Code: 451, Enhanced: "4.3.0", Text: "try later"}, "451 4.3.0 try later"},
		{"no reply (DNS)", spool.Attempt{Time: at, Enhanced: "5.1.2", Text: "domain does not exist (NXDOMAIN)"}, "5.1.2 domain does not exist (NXDOMAIN)"},
		{"none yet", spool.Attempt{}, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rs []spool.Recipient
			if !tc.a.Time.IsZero() {
				rs = []spool.Recipient{{Attempts: []spool.Attempt{tc.a}}}
			}
			if got := lastReply(rs); got != tc.want {
				t.Errorf("lastReply = %q, want %q", got, tc.want)
			}
		})
	}
}
