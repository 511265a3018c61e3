package delivery_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mta/delivery"
	"mta/internal/mailaddr"
	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/spool"
)

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// dsnZone routes example.test to 127.0.0.2 and the senders' domain to
// 127.0.0.4, where DSNs arrive.
const dsnZone = oneMXZone + `
sender.test. 300 IN MX 10 mx.sender.test.
mx.sender.test. 300 IN A 127.0.0.4
`

// parsedDSN is what Python's email package reads from a DSN.
type parsedDSN struct {
	ContentType   string              `json:"content_type"`
	ReportType    string              `json:"report_type"`
	Parts         []string            `json:"parts"`
	From          string              `json:"from"`
	AutoSubmitted string              `json:"auto_submitted"`
	PerMessage    map[string]string   `json:"per_message"`
	PerRecipient  []map[string]string `json:"per_recipient"`
	Returned      string              `json:"returned"`
}

const pyParse = `
import email, email.policy, json, sys
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
parts = m.get_payload()
out = {"content_type": m.get_content_type(), "report_type": m.get_param("report-type"),
       "parts": [p.get_content_type() for p in parts], "from": str(m["From"]),
       "auto_submitted": str(m["Auto-Submitted"])}
blocks = parts[1].get_payload()
out["per_message"] = {k: str(v) for k, v in blocks[0].items()}
out["per_recipient"] = [{k: str(v) for k, v in b.items()} for b in blocks[1:]]
ret = parts[2]
out["returned"] = ret.get_payload(decode=True).decode("utf-8", "replace") if ret.get_content_type() == "text/rfc822-headers" else ret.as_string()
print(json.dumps(out))
`

func parseWithPython(t *testing.T, msg []byte) parsedDSN {
	t.Helper()
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skipf("%s not installed: cannot check the DSN with an independent parser", py)
	}
	cmd := exec.CommandContext(t.Context(), py, "-c", pyParse)
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python could not read the DSN: %v\n%s", err, msg)
	}
	var p parsedDSN
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	return p
}

func TestDSNFailureReadByPython(t *testing.T) {
	w := newWorld(t, setup{zone: dsnZone, hosts: map[string]peer.Behaviour{
		"127.0.0.2": {RcptReplies: map[string]peer.Reply{"gone@example.test": {Code: 550, Enhanced: "5.1.1", Text: "no such user"}}},
		"127.0.0.4": {},
	}})
	id := w.send("s@sender.test", []string{"gone@example.test", "here@example.test"}, body7, func(e *spool.Envelope) {
		e.EnvID = "env-42"
		e.Recipients[0].ORcpt = "rfc822;Gone@Example.test"
	})
	w.waitStates(id, spool.Failed, spool.Delivered)
	sender := w.hosts["127.0.0.4"]
	testpeer.WaitHost(t, sender, "the DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
	dsn := sender.Messages()[0]
	if dsn.From != "" || len(dsn.To) != 1 || dsn.To[0] != "s@sender.test" {
		t.Errorf("DSN envelope from <%s> to %v, want <> to s@sender.test", dsn.From, dsn.To)
	}
	p := parseWithPython(t, dsn.Data)
	if p.ContentType != "multipart/report" || p.ReportType != "delivery-status" ||
		!slices.Equal(p.Parts, []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}) {
		t.Errorf("structure %+v", p)
	}
	if !strings.Contains(p.From, "MAILER-DAEMON@"+ourHost) || p.AutoSubmitted != "auto-replied" {
		t.Errorf("From %q, Auto-Submitted %q", p.From, p.AutoSubmitted)
	}
	if p.PerMessage["Reporting-MTA"] != "dns; "+ourHost || p.PerMessage["Original-Envelope-Id"] != "env-42" ||
		p.PerMessage["Arrival-Date"] == "" {
		t.Errorf("per-message fields %v", p.PerMessage)
	}
	if len(p.PerRecipient) != 1 {
		t.Fatalf("per-recipient blocks %v, want only the failed recipient", p.PerRecipient)
	}
	r := p.PerRecipient[0]
	want := map[string]string{
		"Original-Recipient": "rfc822;Gone@Example.test", "Final-Recipient": "rfc822; gone@example.test",
		"Action": "failed", "Status": "5.1.1", "Remote-MTA": "dns; mx1.example.test",
		"Diagnostic-Code": "smtp; 550 5.1.1 no such user",
	}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("%s = %q, want %q", k, r[k], v)
		}
	}
	if r["Last-Attempt-Date"] == "" {
		t.Errorf("no Last-Attempt-Date")
	}
	if !strings.Contains(p.Returned, "Subject: hello") || strings.Contains(p.Returned, "Hello there") {
		t.Errorf("returned part %q: want the headers only", p.Returned)
	}
}

func TestDSNGlobalForSMTPUTF8(t *testing.T) {
	w := newWorld(t, setup{zone: dsnZone, hosts: map[string]peer.Behaviour{
		"127.0.0.2": {Rcpt: &peer.Reply{Code: 550, Enhanced: "5.1.1"}}, "127.0.0.4": {},
	}})
	id := w.send("dörte@sender.test", []string{"x@example.test"}, body7, func(e *spool.Envelope) { e.SMTPUTF8 = true })
	w.waitStates(id, spool.Failed)
	sender := w.hosts["127.0.0.4"]
	testpeer.WaitHost(t, sender, "the DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
	dsn := sender.Messages()[0]
	if !dsn.Opts.UTF8 {
		t.Errorf("DSN to a UTF-8 address sent without SMTPUTF8")
	}
	p := parseWithPython(t, dsn.Data)
	if p.ReportType != "global-delivery-status" || len(p.Parts) < 3 || p.Parts[1] != "message/global-delivery-status" ||
		p.Parts[2] != "message/global-headers" {
		t.Errorf("structure %+v, want RFC 6533 global types", p)
	}
}

func TestDSNDelayOnceAfterWarning(t *testing.T) {
	busy := peer.Behaviour{Rcpt: &peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "later"}}
	w := newWorld(t, setup{zone: dsnZone, hosts: map[string]peer.Behaviour{"127.0.0.2": busy, "127.0.0.4": {}}})
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	w.waitAttempts(id, 0, 1)
	sender := w.hosts["127.0.0.4"]
	if n := len(sender.Messages()); n != 0 {
		t.Fatalf("%d DSNs before the warning time", n)
	}
	w.retry(4*time.Hour + time.Minute)
	r := w.waitAttempts(id, 0, 2)
	if !r.DelayNotified {
		t.Errorf("recipient not marked as notified")
	}
	testpeer.WaitHost(t, sender, "the delay DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
	p := parseWithPython(t, sender.Messages()[0].Data)
	if len(p.PerRecipient) != 1 {
		t.Fatalf("per-recipient blocks %v", p.PerRecipient)
	}
	pr := p.PerRecipient[0]
	retryUntil := w.message(id).Envelope.Arrival.Add(5 * 24 * time.Hour).Format(time.RFC1123Z)
	if pr["Action"] != "delayed" || pr["Status"] != "4.3.0" || pr["Will-Retry-Until"] != retryUntil ||
		pr["Diagnostic-Code"] != "smtp; 451 4.3.0 later" || pr["Last-Attempt-Date"] == "" {
		t.Errorf("delay DSN per-recipient fields %v, want delayed 4.3.0 until %s", pr, retryUntil)
	}
	w.retry(2 * time.Hour)
	w.waitAttempts(id, 0, 3)
	if n := len(sender.Messages()); n != 1 {
		t.Errorf("%d DSNs, want the delay warning once", n)
	}
}

// TestDSNDelayOncePerMessage: recipients delayed at two destinations get
// one delay DSN between them, reporting both, though the two attempts
// that reach the warning time run side by side.
func TestDSNDelayOncePerMessage(t *testing.T) {
	busy := peer.Behaviour{Rcpt: &peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "later"}}
	zone := dsnZone + "other.test. 300 IN MX 10 mx.other.test.\nmx.other.test. 300 IN A 127.0.0.3\n"
	w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.2": busy, "127.0.0.3": busy, "127.0.0.4": {}}})
	id := w.send("s@sender.test", []string{"x@example.test", "y@other.test"}, body7)
	w.waitAttempts(id, 0, 1)
	w.waitAttempts(id, 1, 1)
	w.retry(4*time.Hour + time.Minute)
	w.waitAttempts(id, 0, 2)
	w.waitAttempts(id, 1, 2)
	sender := w.hosts["127.0.0.4"]
	testpeer.WaitHost(t, sender, "the delay DSN", func(h *peer.Host) bool { return len(h.Messages()) >= 1 })
	for _, r := range w.message(id).Envelope.Recipients {
		if !r.DelayNotified {
			t.Errorf("%s not marked as notified", r.Addr)
		}
	}
	p := parseWithPython(t, sender.Messages()[0].Data)
	var got []string
	for _, pr := range p.PerRecipient {
		got = append(got, pr["Final-Recipient"]+" "+pr["Action"]+" "+pr["Status"])
	}
	slices.Sort(got)
	if want := []string{"rfc822; x@example.test delayed 4.3.0", "rfc822; y@other.test delayed 4.3.0"}; !slices.Equal(got, want) {
		t.Errorf("delay DSN reports %q, want %q", got, want)
	}
	// Another round of attempts sends nothing more.
	w.retry(2 * time.Hour)
	w.waitAttempts(id, 0, 3)
	w.waitAttempts(id, 1, 3)
	if n := len(sender.Messages()); n != 1 {
		t.Errorf("%d delay DSNs for one message, want 1", n)
	}
}

func TestDSNNotifyPassedOnOrRelayed(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		tests := []struct {
			name    string
			hop     peer.Behaviour
			relayed bool // we owe a "relayed" DSN
		}{
			{"hop_with_DSN_gets_the_parameters", peer.Behaviour{}, false},
			{"hop_without_DSN_relayed_notice", peer.Behaviour{NoDSN: true}, true},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				w := newWorld(t, setup{lockStep: lockStep, zone: dsnZone, hosts: map[string]peer.Behaviour{"127.0.0.2": tc.hop, "127.0.0.4": {}}})
				id := w.send("s@sender.test", []string{"x@example.test"}, body7, func(e *spool.Envelope) {
					e.EnvID, e.Ret = "env-7", spool.RetFull
					e.Recipients[0].Notify = spool.NotifySuccess | spool.NotifyFailure
					e.Recipients[0].ORcpt = "rfc822;x@example.test"
				})
				w.waitStates(id, spool.Delivered)
				got := w.hosts["127.0.0.2"].Messages()[0]
				if !tc.relayed {
					ro := got.RcptOpts[0]
					if got.Opts.EnvelopeID != "env-7" || got.Opts.Return != smtp.DSNReturnFull ||
						!slices.Equal(ro.Notify, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}) ||
						ro.OriginalRecipient != "x@example.test" {
						t.Errorf("DSN parameters not passed on: mail %+v rcpt %+v", got.Opts, ro)
					}
				}
				sender := w.hosts["127.0.0.4"]
				if tc.relayed {
					testpeer.WaitHost(t, sender, "the relayed DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
					if d := string(sender.Messages()[0].Data); !contains(d, "Action: relayed", "Remote-MTA: dns; mx1.example.test") {
						t.Errorf("relayed DSN:\n%s", d)
					}
				} else if n := len(sender.Messages()); n != 0 {
					t.Errorf("%d DSNs from us, want none: the hop reports itself", n)
				}
			})
		}
	})
}

func TestDSNNeverForNullSenderOrDSN(t *testing.T) {
	w := newWorld(t, setup{zone: dsnZone, hosts: map[string]peer.Behaviour{
		"127.0.0.2": {Rcpt: &peer.Reply{Code: 550, Enhanced: "5.1.1"}}, "127.0.0.4": {},
	}})
	null := w.send("", []string{"x@example.test"}, body7)
	dsn := w.send("", []string{"y@example.test"}, body7, func(e *spool.Envelope) { e.DSN = true })
	w.waitStates(null, spool.Failed)
	w.waitStates(dsn, spool.Failed)
	c, err := w.sp.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if c.Messages != 0 {
		t.Errorf("%d live messages: a DSN was generated", c.Messages)
	}
}

func TestBouncerOwesNothing(t *testing.T) {
	b := delivery.Bouncer(delivery.DSNConfig{Hostname: ourHost})
	failed := spool.Recipient{Addr: "x@example.test", State: spool.Failed}
	never := failed
	never.Notify = spool.NotifyNever
	tests := []struct {
		name string
		env  spool.Envelope
	}{
		{"null_sender", spool.Envelope{Recipients: []spool.Recipient{failed}}},
		{"a_DSN", spool.Envelope{Sender: "s@sender.test", DSN: true, Recipients: []spool.Recipient{failed}}},
		{"notify_never", spool.Envelope{Sender: "s@sender.test", Recipients: []spool.Recipient{never}}},
		{"all_delivered", spool.Envelope{Sender: "s@sender.test", Recipients: []spool.Recipient{{Addr: "x@example.test", State: spool.Delivered}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			read := false
			body := func() ([]byte, error) { read = true; return []byte(body7), nil }
			nm, err := b(&spool.Message{ID: spool.NewID(), Envelope: tc.env}, body)
			if err != nil || nm != nil {
				t.Errorf("Bouncer = %v, %v; want no DSN", nm, err)
			}
			if read {
				t.Error("the body was read for a message that owes no DSN")
			}
		})
	}
}

// A bounce to a sender in a local domain (cron's root@ourhost) goes to the
// alias target, not back to us.
func TestDSNToLocalSenderFollowsAliases(t *testing.T) {
	aliases, err := mailaddr.NewAliases(map[string][]string{"root": {"admin@sender.test"}}, []string{"local.test"})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, setup{zone: dsnZone, aliases: aliases, hosts: map[string]peer.Behaviour{
		"127.0.0.2": {Rcpt: &peer.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}},
		"127.0.0.4": {},
	}})
	id := w.send("root@local.test", []string{"gone@example.test"}, body7)
	w.waitStates(id, spool.Failed)
	sender := w.hosts["127.0.0.4"]
	testpeer.WaitHost(t, sender, "the DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
	if got := sender.Messages()[0].To; len(got) != 1 || got[0] != "admin@sender.test" {
		t.Errorf("DSN went to %v, want the alias target admin@sender.test", got)
	}
}

// TestDSNDelayNotWhenNotifyExcludesIt: NOTIFY=FAILURE asks for no delay
// notice, and NOTIFY=NEVER for none at all.
func TestDSNDelayNotWhenNotifyExcludesIt(t *testing.T) {
	for _, notify := range []spool.Notify{spool.NotifyFailure, spool.NotifyNever} {
		t.Run(fmt.Sprint(notify), func(t *testing.T) {
			busy := peer.Behaviour{Rcpt: &peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "later"}}
			w := newWorld(t, setup{zone: dsnZone, hosts: map[string]peer.Behaviour{"127.0.0.2": busy, "127.0.0.4": {}}})
			id := w.send("s@sender.test", []string{"x@example.test"}, body7, func(e *spool.Envelope) { e.Recipients[0].Notify = notify })
			w.waitAttempts(id, 0, 1)
			w.retry(4*time.Hour + time.Minute)
			if r := w.waitAttempts(id, 0, 2); r.DelayNotified {
				t.Errorf("recipient marked as notified")
			}
			c, err := w.sp.Counts()
			if err != nil {
				t.Fatal(err)
			}
			if c.Messages != 1 || len(w.hosts["127.0.0.4"].Messages()) != 0 {
				t.Errorf("%d live messages, %d at the sender's host: a delay DSN was made", c.Messages, len(w.hosts["127.0.0.4"].Messages()))
			}
		})
	}
}

// TestDSNReturnFullCutAt50KB: with RET=FULL the failure DSN returns the
// message, cut at a line end within 50 KB.
func TestDSNReturnFullCutAt50KB(t *testing.T) {
	w := newWorld(t, setup{zone: dsnZone, hosts: map[string]peer.Behaviour{
		"127.0.0.2": {Rcpt: &peer.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}}, "127.0.0.4": {},
	}})
	var body strings.Builder
	body.WriteString(body7)
	for i := 0; body.Len() < 200*1024; i++ {
		fmt.Fprintf(&body, "line %06d %s\r\n", i, strings.Repeat("x", 60))
	}
	id := w.send("s@sender.test", []string{"x@example.test"}, body.String(), func(e *spool.Envelope) { e.Ret = spool.RetFull })
	w.waitStates(id, spool.Failed)
	sender := w.hosts["127.0.0.4"]
	testpeer.WaitHost(t, sender, "the DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
	data := sender.Messages()[0].Data
	if p := parseWithPython(t, data); len(p.Parts) != 3 || p.Parts[2] != "message/rfc822" {
		t.Fatalf("parts %v, want the message returned as message/rfc822", p.Parts)
	}
	// The part as sent: the CRLF before the closing delimiter belongs to
	// the delimiter (RFC 2046 §5.1.1).
	_, ret, _ := strings.Cut(string(data), "Content-Type: message/rfc822\r\n\r\n")
	ret = ret[:max(strings.LastIndex(ret, "\r\n--"), 0)]
	if len(ret) > 50*1024 || len(ret) < 49*1024 || !strings.HasPrefix(body.String(), ret) || !strings.HasSuffix(ret, "x\r\n") {
		t.Errorf("returned %d octets ending %q; want the message's first whole lines, up to 50 KB", len(ret), ret[max(0, len(ret)-20):])
	}
}

// TestDSNToOwnDomainThroughRoute: the operator's own domain has us as its
// MX (mail to it would loop back), and a route to the inbound server; a
// bounce to a sender there goes by the route and arrives.
func TestDSNToOwnDomainThroughRoute(t *testing.T) {
	zone := oneMXZone + `
own.test. 300 IN MX 10 ` + ourHost + `.
` + ourHost + `. 300 IN A 127.0.0.1
`
	w := newWorld(t, setup{zone: zone, noStart: true, hosts: map[string]peer.Behaviour{
		"127.0.0.2": {Rcpt: &peer.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}},
		"127.0.0.4": {}, // the inbound server
	}})
	cfg := w.cfg
	cfg.Routes = map[string]delivery.NextHop{"own.test": {Hosts: []string{fmt.Sprintf("[127.0.0.4]:%d", w.port)}, TLS: delivery.TLSOpportunistic}}
	w = w.replace(cfg)
	id := w.send("cron@own.test", []string{"gone@example.test"}, body7)
	w.waitStates(id, spool.Failed)
	inbound := w.hosts["127.0.0.4"]
	testpeer.WaitHost(t, inbound, "the DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
	dsn := inbound.Messages()[0]
	if dsn.From != "" || len(dsn.To) != 1 || dsn.To[0] != "cron@own.test" || !contains(string(dsn.Data), "Action: failed", "Status: 5.1.1") {
		t.Errorf("DSN from <%s> to %v:\n%s", dsn.From, dsn.To, dsn.Data)
	}
}
