package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// traceMessage is a delivered message as an mbox would keep it: the newest
// Received on top, a Gmail-style X-Received that is not a hop, a header
// without a date, a second hop whose clock is 5 s behind the first, and a
// "Received:" line in the body that is not a header at all.
const traceMessage = "From alice@example.org Tue Sep  3 10:02:06 2024\r\n" +
	"Received: from mx.example.net (mx.example.net [192.0.2.20])\r\n" +
	"\tby mail.example.com (Postfix) with ESMTPS id 4WzT1x2y3z\r\n" +
	"\tfor <bob@example.com>; Tue,  3 Sep 2024 10:02:05 +0200 (CEST)\r\n" +
	"X-Received: by 2002:a05::1 with SMTP id zz; Tue, 3 Sep 2024 01:00:00 -0700\r\n" +
	"Received: this one lost its date\r\n" +
	"Received: from [192.0.2.5] (helo=laptop)\r\n" +
	"\tby mx.example.net with esmtpsa (TLS1.3) tls TLS_AES_256_GCM_SHA384\r\n" +
	"\t(Exim 4.96)\r\n" +
	"\t(envelope-from <alice@example.org>)\r\n" +
	"\tid 1sl3Xc-000AbC-2k;\r\n" +
	"\tTue, 03 Sep 2024 08:00:10 +0000\r\n" +
	"Received: (qmail 4242 invoked by uid 1000); 3 Sep 2024 10:00:15 +0200\r\n" +
	"Subject: hello\r\n" +
	"From: alice@example.org\r\n" +
	"\r\n" +
	"Received: from body.example by nowhere; Tue, 3 Sep 2024 10:00:00 +0000\r\n" +
	"body\r\n"

const traceTable = `HOP  DELAY  DATE                       FROM (HELO)                       SEEN AS                      BY                WITH     ID                FOR
1           2024-09-03 10:00:15 +0200  (qmail 4242 invoked by uid 1000)
2    -5s    2024-09-03 08:00:10 +0000  laptop                            [192.0.2.5]                  mx.example.net    esmtpsa  1sl3Xc-000AbC-2k
3           ?                          MALFORMED (no ';' and date): this one lost its date
4           2024-09-03 10:02:05 +0200  mx.example.net                    mx.example.net [192.0.2.20]  mail.example.com  ESMTPS   4WzT1x2y3z        bob@example.com

total +1m50s from hop 1 to hop 4
`

// runTraceCmd runs `mta trace args...` in-process with stdin as input.
func runTraceCmd(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	stdio := Stdio{In: strings.NewReader(stdin), Out: &out, Err: &errOut}
	err = run(t.Context(), append([]string{"mta", "trace"}, args...), stdio)
	return out.String(), errOut.String(), err
}

func TestTraceTable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "message.eml")
	if err := os.WriteFile(file, []byte(traceMessage), 0o600); err != nil {
		t.Fatal(err)
	}
	lf := strings.ReplaceAll(traceMessage, "\r\n", "\n")
	tests := []struct {
		name, stdin string
		args        []string
	}{
		{"file with CRLF", "", []string{file}},
		{"stdin with LF", lf, nil},
		{"dash reads stdin", traceMessage, []string{"-"}},
		{"header only, no final newline", strings.TrimSuffix(lf[:strings.Index(lf, "\n\n")], "\n"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runTraceCmd(t, tt.stdin, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			if out != traceTable {
				t.Errorf("got:\n%s\nwant:\n%s", out, traceTable)
			}
		})
	}
}

func TestTraceJSON(t *testing.T) {
	out, _, err := runTraceCmd(t, traceMessage, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var hops []struct {
		Hop          int      `json:"hop"`
		Raw          string   `json:"raw"`
		Malformed    string   `json:"malformed"`
		Helo         string   `json:"helo"`
		IP           string   `json:"ip"`
		By           string   `json:"by"`
		With         string   `json:"with"`
		TLS          bool     `json:"tls"`
		Auth         bool     `json:"auth"`
		For          string   `json:"for"`
		Date         string   `json:"date"`
		DelaySeconds *float64 `json:"delay_seconds"`
	}
	if err := json.Unmarshal([]byte(out), &hops); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	if len(hops) != 4 {
		t.Fatalf("got %d hops, want 4:\n%s", len(hops), out)
	}
	for i, h := range hops {
		if h.Hop != i+1 {
			t.Errorf("hops[%d].hop = %d, want %d", i, h.Hop, i+1)
		}
	}
	if h := hops[1]; h.Helo != "laptop" || h.IP != "192.0.2.5" || !h.TLS || !h.Auth ||
		h.DelaySeconds == nil || *h.DelaySeconds != -5 || h.Date != "2024-09-03T08:00:10Z" {
		t.Errorf("hop 2 = %+v, want laptop [192.0.2.5] esmtpsa, -5 s after hop 1", h)
	}
	if h := hops[2]; h.Malformed == "" || h.Raw != "this one lost its date" || h.DelaySeconds != nil {
		t.Errorf("hop 3 = %+v, want malformed with its raw text and no delay", h)
	}
	if h := hops[3]; h.By != "mail.example.com" || h.For != "bob@example.com" || h.DelaySeconds != nil {
		t.Errorf("hop 4 = %+v, want by mail.example.com for bob, no delay after a malformed hop", h)
	}
}

func TestTraceEdges(t *testing.T) {
	tests := []struct {
		name, stdin string
		args        []string
		out, errMsg string
		code        int
	}{
		{name: "no Received headers", stdin: "Subject: x\n\nbody\n", out: "no Received headers\n"},
		{name: "no Received headers as JSON", stdin: "Subject: x\n\n", args: []string{"--json"}, out: "[]\n"},
		{name: "empty input", stdin: "", out: "no Received headers\n"},
		{
			name:  "field name in any case, white space before the colon",
			stdin: "RECEIVED : by b.example id 2; 3 Sep 2024 10:00:01 +0000\nreceived:by a.example id 1; 3 Sep 2024 10:00:00 +0000\n\n",
			out: "HOP  DELAY  DATE                       FROM (HELO)  SEEN AS  BY         WITH  ID  FOR\n" +
				"1           2024-09-03 10:00:00 +0000                        a.example        1\n" +
				"2    +1s    2024-09-03 10:00:01 +0000                        b.example        2\n\n" +
				"total +1s from hop 1 to hop 2\n",
		},
		{name: "two files", args: []string{"a", "b"}, code: exitUsage},
		{name: "missing file", args: []string{filepath.Join(t.TempDir(), "none")}, errMsg: "no such file", code: exitFailure},
		{
			name:  "control characters never reach the terminal",
			stdin: "Received: from \x1b[2J\x1b[31mx.example\x07 (y [192.0.2.1]) by z; 3 Sep 2024 10:00:00 +0000\n\n",
			out: "HOP  DELAY  DATE                       FROM (HELO)          SEEN AS        BY  WITH  ID  FOR\n" +
				"1           2024-09-03 10:00:00 +0000  ?[2J?[31mx.example?  y [192.0.2.1]  z\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runTraceCmd(t, tt.stdin, tt.args...)
			var msg bytes.Buffer
			if code := exitCode(err, &msg); code != tt.code {
				t.Fatalf("exit code %d (%v), want %d", code, err, tt.code)
			}
			if !strings.Contains(msg.String(), tt.errMsg) {
				t.Errorf("error %q does not mention %q", msg.String(), tt.errMsg)
			}
			if tt.code == 0 && out != tt.out {
				t.Errorf("got:\n%q\nwant:\n%q", out, tt.out)
			}
		})
	}
}

func TestTraceHelp(t *testing.T) {
	out, _, err := runTraceCmd(t, "", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "usage: mta trace [--json] [FILE]") || !strings.Contains(out, "-json") {
		t.Errorf("help output:\n%s", out)
	}
}
