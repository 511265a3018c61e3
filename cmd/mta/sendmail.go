package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// sendmailArgs are the options of the sendmail command line that mta
// understands (sendmail(8) / Postfix's sendmail(1)).
type sendmailArgs struct {
	extract   bool   // -t
	ignoreDot bool   // -i, -oi
	sender    string // -f
	// nullSender: -f '<>' (or -f ''), the null reverse-path, which only a
	// trusted user gets.
	nullSender bool
	fullName   string // -F
	config     string // -C
	rcpts      []string
}

// parseSendmailArgs reads sendmail-style options: "-f addr" and "-faddr"
// both work, unknown -o and -b options used by other MTAs' callers are
// ignored, "--" ends options.
func parseSendmailArgs(args []string) (sendmailArgs, error) {
	var a sendmailArgs
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			a.rcpts = append(a.rcpts, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			a.rcpts = append(a.rcpts, arg)
			continue
		}
		opt, val := arg[1:2], arg[2:]
		switch {
		case arg == "-t":
			a.extract = true
		case arg == "-i" || arg == "-oi":
			a.ignoreDot = true
		case opt == "f" || opt == "r" || opt == "F" || opt == "C":
			if val == "" {
				if i+1 >= len(args) {
					return a, fmt.Errorf("option %s needs a value", arg)
				}
				i++
				val = args[i]
			}
			switch opt {
			case "f", "r":
				a.sender = strings.Trim(val, "<>")
				a.nullSender = a.sender == ""
			case "F":
				a.fullName = val
			case "C":
				a.config = val
			}
		case opt == "o" || opt == "v" || arg == "-bm" || arg == "-U" || opt == "N" || opt == "R" || opt == "V" || opt == "X" || opt == "B":
			// -oem, -odi, -v, -N, -R, -V, -B...: accepted for
			// compatibility, nothing to do here. -N/-R/-V/-X/-B take a
			// value only in their attached form.
		case opt == "b":
			return a, fmt.Errorf("mode %s is not supported (only -bm, the default)", arg)
		default:
			return a, fmt.Errorf("unknown option %s", arg)
		}
	}
	return a, nil
}

func runSendmail(ctx context.Context, args []string, stdio Stdio) error {
	for _, a := range args {
		if a == "--help" || a == "-h" {
			fmt.Fprintln(stdio.Out, "usage: mta sendmail [-t] [-i] [-oi] [-f sender] [-F name] [-C config] [rcpt...]")
			fmt.Fprintln(stdio.Out, "Reads a message from standard input and queues it (also when invoked as \"sendmail\").")
			return nil
		}
	}
	a, err := parseSendmailArgs(args)
	if err != nil {
		return exitf(exitUsage, "sendmail: %v", err)
	}
	cfg, err := clientConfig(a.config)
	if err != nil {
		return exitf(exitConfig, "sendmail: %v", err)
	}
	login := currentLogin()
	origin := cfg.MyOrigin
	if origin == "" {
		origin = cfg.Hostname
	}
	msg, err := readSendmailInput(stdio.In, a.ignoreDot)
	if err != nil {
		return exitf(exitTempFail, "sendmail: reading the message: %v", err)
	}
	sub, err := buildSubmission(a, msg, login, origin, time.Now())
	if err != nil {
		return exitf(exitDataErr, "sendmail: %v", err)
	}
	return deliverSubmission(ctx, cfg, sub, stdio)
}

// submission is a message ready for the submit socket or the maildrop.
type submission struct {
	From  string // envelope sender; "" lets the daemon choose login@myorigin
	Rcpts []string
	Data  []byte // CRLF lines
	// OwnSender: From is login@myorigin as this side computed it, not a
	// -f; when the daemon disagrees (553) it is left to the daemon.
	OwnSender bool
}

// maxLineOctets is RFC 5322 §2.1.1's limit, without the CRLF.
const maxLineOctets = 998

// readSendmailInput reads stdin, turning LF line ends into CRLF; unless
// ignoreDot, a line with a single "." ends the message. A line longer than
// RFC 5322 allows is broken (folded in the header) rather than refused:
// cron's output must not be lost to one long line.
func readSendmailInput(r io.Reader, ignoreDot bool) ([]byte, error) {
	var out bytes.Buffer
	br := bufio.NewReader(r)
	inHeader := true
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			if !ignoreDot && string(line) == "." {
				break
			}
			if len(line) == 0 {
				inHeader = false
			}
			writeWrapped(&out, line, inHeader)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}

// writeWrapped writes line with CRLF, in pieces of at most maxLineOctets;
// in the header each further piece starts with a space, folding the field.
func writeWrapped(out *bytes.Buffer, line []byte, inHeader bool) {
	for len(line) > maxLineOctets {
		out.Write(line[:maxLineOctets])
		out.WriteString("\r\n")
		line = line[maxLineOctets:]
		if inHeader {
			line = append([]byte{' '}, line...)
		}
	}
	out.Write(line)
	out.WriteString("\r\n")
}

// buildSubmission takes the envelope from the arguments (and with -t from
// To/Cc/Bcc), drops Bcc, and adds From, Date and Message-ID when missing.
func buildSubmission(a sendmailArgs, data []byte, login, origin string, now time.Time) (*submission, error) {
	head, body := splitHeader(data)
	hdr, err := mail.ReadMessage(bytes.NewReader(append(append([]byte{}, head...), "\r\n"...)))
	var fields mail.Header
	if err == nil {
		fields = hdr.Header
	} else {
		fields = mail.Header{}
	}
	rcpts := qualifyAll(a.rcpts, origin)
	if a.extract {
		for _, key := range []string{"To", "Cc", "Bcc"} {
			for _, v := range fields[key] {
				list, err := headerAddresses(v)
				if err != nil {
					return nil, fmt.Errorf("%s header: %v", key, err)
				}
				for _, ad := range list {
					rcpts = append(rcpts, qualify(ad, origin))
				}
			}
		}
		head = dropHeader(head, "Bcc")
	}
	if len(rcpts) == 0 {
		return nil, errors.New("no recipients (give addresses or use -t)")
	}
	// Without -f the sender is the user, as sendmail has it; an empty
	// MAIL FROM would be the null reverse-path for a trusted user (no
	// bounce could ever come back).
	sender, own := qualify(a.sender, origin), false
	if sender == "" && !a.nullSender {
		sender, own = login+"@"+origin, true
	}
	var extra strings.Builder
	if len(fields["From"]) == 0 {
		from := sender
		if from == "" {
			from = login + "@" + origin
		}
		addr := mail.Address{Name: a.fullName, Address: from}
		fmt.Fprintf(&extra, "From: %s\r\n", encodeAddress(addr))
	}
	if len(fields["Date"]) == 0 {
		fmt.Fprintf(&extra, "Date: %s\r\n", now.Format(time.RFC1123Z))
	}
	if len(fields["Message-Id"]) == 0 {
		fmt.Fprintf(&extra, "Message-ID: <%s.%s@%s>\r\n", now.UTC().Format("20060102150405"), randomHex(8), origin)
	}
	out := append([]byte(extra.String()), head...)
	out = append(out, "\r\n"...)
	out = append(out, body...)
	return &submission{From: sender, Rcpts: dedupe(rcpts), Data: out, OwnSender: own}, nil
}

// splitHeader splits a CRLF message at its first empty line; the header
// keeps its final CRLF, the body excludes the separator.
func splitHeader(data []byte) (head, body []byte) {
	if bytes.HasPrefix(data, []byte("\r\n")) {
		return nil, data[2:]
	}
	if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
		return data[:i+2], data[i+4:]
	}
	return data, nil
}

// dropHeader removes every field named name (with its folded lines).
func dropHeader(head []byte, name string) []byte {
	var out []byte
	skipping := false
	for _, line := range bytes.SplitAfter(head, []byte("\r\n")) {
		if len(line) == 0 {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if !skipping {
				out = append(out, line...)
			}
			continue
		}
		k, _, _ := bytes.Cut(line, []byte(":"))
		skipping = strings.EqualFold(strings.TrimSpace(string(k)), name)
		if !skipping {
			out = append(out, line...)
		}
	}
	return out
}

// headerAddresses reads an address-list header; like sendmail it also takes
// bare local names ("To: root"), which RFC 5322 parsers refuse.
func headerAddresses(v string) ([]string, error) {
	var out []string
	if list, err := mail.ParseAddressList(v); err == nil {
		for _, a := range list {
			out = append(out, a.Address)
		}
		return out, nil
	}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if a, err := mail.ParseAddress(f); err == nil {
			out = append(out, a.Address)
			continue
		}
		if strings.ContainsAny(f, " \t<>@\"") {
			return nil, fmt.Errorf("cannot read address %q", f)
		}
		out = append(out, f)
	}
	return out, nil
}

// encodeAddress formats a From field; mail.Address quotes or
// RFC 2047-encodes the name as needed.
func encodeAddress(a mail.Address) string {
	if a.Name == "" {
		return "<" + a.Address + ">"
	}
	return a.String()
}

// qualify appends @origin to a bare local name, as sendmail does.
func qualify(addr, origin string) string {
	if addr == "" || strings.Contains(addr, "@") {
		return addr
	}
	return addr + "@" + origin
}

func qualifyAll(addrs []string, origin string) []string {
	var out []string
	for _, a := range addrs {
		for _, f := range strings.Split(a, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, qualify(strings.Trim(f, "<>"), origin))
			}
		}
	}
	return out
}

func dedupe(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		k := strings.ToLower(s)
		if !seen[k] {
			seen[k] = true
			out = append(out, s)
		}
	}
	return out
}

func currentLogin() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return fmt.Sprint(os.Getuid())
}

// senderNotOwned is the daemon's 553 5.7.1 "sender address not owned": the
// one refusal after which an empty MAIL FROM lets it choose the user's own
// sender. Any other 553 (a malformed address, say) is final: retried empty
// for a trusted user, it would go out with the null sender.
func senderNotOwned(se *smtp.SMTPError) bool {
	return se.Code == 553 && se.EnhancedCode == smtp.EnhancedCode{5, 7, 1}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand never fails on Linux
	return hex.EncodeToString(b)
}

// deliverSubmission hands the message to the daemon over the submit
// socket; when the daemon cannot take it (down, or a temporary failure) it
// goes to the maildrop, imported at the daemon's next start. Only when
// both fail does sendmail exit 75 (EX_TEMPFAIL): cron output is never lost.
func deliverSubmission(ctx context.Context, cfg *Config, sub *submission, stdio Stdio) error {
	d := clientDirs(cfg)
	err := submitOverSocket(ctx, submitSocketPaths(cfg, d), sub)
	var se *smtp.SMTPError
	if errors.As(err, &se) && senderNotOwned(se) && sub.OwnSender {
		// Our idea of login@myorigin is not the daemon's (another
		// config): let it choose.
		own := *sub
		own.From = ""
		err = submitOverSocket(ctx, submitSocketPaths(cfg, d), &own)
	}
	if errors.As(err, &se) && !se.Temporary() {
		code := exitDataErr
		if se.EnhancedCode[1] == 7 {
			code = exitNoPerm // e.g. -f for a sender this user may not use
		}
		return exitf(code, "sendmail: refused: %d %d.%d.%d %s", se.Code,
			se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	if err == nil {
		return nil
	}
	var name string
	var derr error
	for _, dir := range maildropPaths(cfg, d) {
		if name, derr = writeMaildrop(dir, sub, time.Now()); derr == nil {
			break
		}
	}
	if derr != nil {
		return exitf(exitTempFail, "sendmail: daemon unavailable (%v) and maildrop failed (%v)", err, derr)
	}
	fmt.Fprintf(stdio.Err, "sendmail: daemon unavailable (%v); message kept in %s for its next start\n", err, name)
	return nil
}

// submitSocketPaths is where the daemon's submit socket is: the runtime
// directory, and the systemd unit's /run/mta when the config names no
// directory (no /etc/mta/mta.yaml: the defaults would look in ./mta-data).
// A config that names its directories is never second-guessed: a message
// must not reach another daemon than the one configured.
func submitSocketPaths(cfg *Config, d dirs) []string {
	paths := []string{filepath.Join(d.Runtime, submitSocket)}
	if cfg.StateDir == "" && cfg.RuntimeDir == "" && d.Runtime != "/run/mta" {
		paths = append(paths, "/run/mta/"+submitSocket)
	}
	return paths
}

// maildropPaths are the maildrops to try, like submitSocketPaths: the
// state directory's, and the systemd unit's when the config names none.
func maildropPaths(cfg *Config, d dirs) []string {
	paths := []string{filepath.Join(d.State, maildropSubdir)}
	if cfg.StateDir == "" && cfg.RuntimeDir == "" && d.State != "/var/lib/mta" {
		paths = append(paths, "/var/lib/mta/"+maildropSubdir)
	}
	return paths
}

// submitOverSocket speaks SMTP to the daemon's submit socket, which learns
// our uid from the socket itself.
func submitOverSocket(ctx context.Context, paths []string, sub *submission) error {
	var conn net.Conn
	var err error
	for _, p := range paths {
		var d net.Dialer
		if conn, err = d.DialContext(ctx, "unix", p); err == nil {
			break
		}
	}
	if err != nil {
		return err
	}
	return submitOverConn(ctx, conn, sub)
}

// submitOverConn runs one SMTP transaction for sub on conn and closes it.
func submitOverConn(ctx context.Context, conn net.Conn, sub *submission) error {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Minute)) // a stuck daemon must not hang cron
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return err
	}
	if err := c.Mail(sub.From, &smtp.MailOptions{UTF8: needsUTF8(sub)}); err != nil {
		return err
	}
	for _, r := range sub.Rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(sub.Data); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	// The message is queued: a QUIT that fails or stalls changes nothing,
	// and must not hold cron (or the maildrop import) long.
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_ = c.Quit()
	return nil
}

func needsUTF8(sub *submission) bool {
	for _, s := range append([]string{sub.From}, sub.Rcpts...) {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return true
			}
		}
	}
	return false
}
