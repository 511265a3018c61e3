package spool_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"mta/spool"
)

// The life of a message: smtpd streams the body and enqueues it (250 only
// after Enqueue returns), delivery claims the due recipient, tries it, and
// records the outcome; the delivered message retires.
func Example() {
	dir, err := os.MkdirTemp("", "spool-example")
	if err != nil {
		panic(err)
	}
	defer func() { _ = os.RemoveAll(dir) }() // a temporary directory
	s, err := spool.Open(dir, spool.Options{})
	if err != nil {
		panic(err)
	}
	defer func() { _ = s.Close() }() // the example ends here
	ctx := context.Background()

	// smtpd: during DATA.
	id := spool.NewID()
	w, err := s.NewBody(id)
	if err != nil {
		panic(err)
	}
	defer func() { _ = w.Abort() }() // a no-op once enqueued
	_, _ = w.Write([]byte("Subject: hello\r\n\r\nHi.\r\n"))
	env := &spool.Envelope{
		Sender:     "alice@example.org",
		Recipients: []spool.Recipient{{Addr: "bob@example.net", Domain: "example.net"}},
	}
	if err := s.Enqueue(ctx, id, env, w); err != nil {
		panic(err) // smtpd answers 4xx here
	}

	// delivery: claim what is due, committing a lease first.
	now := time.Now()
	tasks, err := s.Claim(ctx, now, 50, func(spool.Task) time.Time { return now.Add(10 * time.Minute) })
	if err != nil {
		panic(err)
	}
	for _, task := range tasks {
		err := s.Record(ctx, spool.Update{Results: []spool.Result{{
			ID: task.ID, Rcpt: task.Rcpt, State: spool.Delivered,
			Attempt: spool.Attempt{Time: now, Host: "mx.example.net", Code: 250, Text: "ok"},
		}}})
		if err != nil {
			panic(err)
		}
	}

	m, err := s.Message(id)
	if err != nil {
		panic(err)
	}
	r := m.Envelope.Recipients[0]
	fmt.Println(strings.Join([]string{r.Addr, r.State.String(), fmt.Sprint("retired=", m.Retired)}, " "))
	// Output: bob@example.net delivered retired=true
}
