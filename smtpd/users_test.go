package smtpd

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"mta/internal/mailaddr"
)

// testHash is bcrypt("secret") at cost 4.
const testHash = "$2a$04$clqB4V6A4Oo7KcqJuX6AfeBhcpq/BY3cWukUcyCkEIAk4GA5CcHXy"

func TestParseUsers(t *testing.T) {
	file := "# submission users\n" +
		"\n" +
		"abc:" + testHash + ":zbird1@163.example, @Own.Example\n" +
		"  # indented comment\n" +
		"zbird@b\u00fccher.example:" + testHash + ":zbird@B\u00fccher.example\n" +
		"nobody:" + testHash + ":\n"
	u, err := ParseUsers([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	list := u.List()
	if len(list) != 3 {
		t.Fatalf("%d users", len(list))
	}
	if got := list[0].Addresses; !slices.Equal(got, []string{"zbird1@163.example", "@own.example"}) {
		t.Errorf("addresses %q", got)
	}
	if got := list[1].Addresses; !slices.Equal(got, []string{"zbird@xn--bcher-kva.example"}) {
		t.Errorf("IDN address %q", got)
	}
	if len(list[2].Addresses) != 0 {
		t.Errorf("user without addresses: %q", list[2].Addresses)
	}
	if usr, ok := u.Lookup("ABC"); !ok || usr.Login != "abc" {
		t.Error("lookup without regard to case")
	}
	again, err := ParseUsers(u.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Marshal(), u.Marshal()) {
		t.Errorf("round trip changed the file:\n%s\n---\n%s", u.Marshal(), again.Marshal())
	}
	if got := string(u.Marshal()); !strings.HasPrefix(got, "# submission users\n\nabc:") || !strings.Contains(got, "\n  # indented comment\n") {
		t.Errorf("comments lost:\n%s", got)
	}
}

func TestParseUsersErrors(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"too few fields", "abc:" + testHash + "\n", "line 1"},
		{"not bcrypt", "abc:secret:a@example.test\n", "not a bcrypt hash"},
		{"bad address", "# c\nabc:" + testHash + ":not-an-address\n", "line 2"},
		{"bad domain", "abc:" + testHash + ":@nodot\n", "line 1"},
		{"duplicate login", "abc:" + testHash + ":\nABC:" + testHash + ":\n", "already on line 1"},
		{"space in login", "a b:" + testHash + ":\n", "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseUsers([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestUserOwns(t *testing.T) {
	u, err := NewUser("abc", testHash, []string{"zbird1@163.example", "@own.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"zbird1@163.example", true},
		{"ZBIRD1@163.EXAMPLE", true},
		{"zbird2@163.example", false},
		{"anyone@own.example", true},
		{"anyone@sub.own.example", false},
		{"abc@163.example", false},
	} {
		a, err := mailaddr.Parse(tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := u.Owns(a); got != tc.want {
			t.Errorf("Owns(%s) = %v", tc.addr, got)
		}
	}
}

func TestUsersEdit(t *testing.T) {
	u, err := ParseUsers([]byte("# keep me\nabc:" + testHash + ":a@example.test\n"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := HashPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("pw")) != nil {
		t.Error("hash does not match its password")
	}
	nu, err := NewUser("new", h, []string{"n@example.test"})
	if err != nil {
		t.Fatal(err)
	}
	u.Put(nu)
	repl, _ := NewUser("ABC", h, []string{"b@example.test"})
	u.Put(repl)
	want := "# keep me\nABC:" + h + ":b@example.test\nnew:" + h + ":n@example.test\n"
	if got := string(u.Marshal()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if err := u.Delete("abc"); err != nil {
		t.Fatal(err)
	}
	if err := u.Delete("abc"); err == nil {
		t.Error("deleted a missing user")
	}
	if got := string(u.Marshal()); got != "# keep me\nnew:"+h+":n@example.test\n" {
		t.Errorf("after Delete:\n%s", got)
	}
}

// FuzzParseUsers: whatever parses marshals to a file that parses to the
// same users.
func FuzzParseUsers(f *testing.F) {
	f.Add([]byte("# c\nabc:" + testHash + ":a@example.test,@own.example\n"))
	f.Add([]byte("x:" + testHash + ":\r\n\n\n"))
	f.Add([]byte("a:b:c:d\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := ParseUsers(data)
		if err != nil {
			return
		}
		out := u.Marshal()
		again, err := ParseUsers(out)
		if err != nil {
			t.Fatalf("marshalled file does not parse: %v\n%q", err, out)
		}
		if !bytes.Equal(again.Marshal(), out) {
			t.Fatalf("not stable:\n%q\n%q", out, again.Marshal())
		}
		if len(again.List()) != len(u.List()) {
			t.Fatal("users lost")
		}
	})
}
