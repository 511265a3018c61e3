package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"

	"mta/internal/peer"
	"mta/resolver"
)

// exampleZone is served by a loopback DNS server in the examples; a real
// program passes its own servers in Config.Servers.
const exampleZone = `$ORIGIN example.test.
$TTL 3600
@        IN SOA ns hostmaster 1 7200 900 1209600 300
@        IN MX 10 mx1
@        IN MX 20 mx2
mx1      IN A 192.0.2.1
mx1      IN AAAA 2001:db8::1
mx2      IN A 192.0.2.2
nomail   IN MX 0 .
1.2.0.192.in-addr.arpa. IN PTR mx1.example.test.
`

func exampleServer() *peer.DNS {
	d, err := peer.NewDNS(peer.DNSOptions{Zone: exampleZone})
	if err != nil {
		log.Fatal(err)
	}
	return d
}

func ExampleResolver_Route() {
	d := exampleServer()
	defer d.Close()
	r, err := resolver.New(resolver.Config{Servers: []string{d.Addr()}})
	if err != nil {
		log.Fatal(err)
	}
	rt, err := r.Route(context.Background(), "Example.Test.")
	if err != nil {
		log.Fatal(err)
	}
	for _, h := range rt.Hosts {
		fmt.Println(h.Pref, h.Name, h.Addrs)
	}
	fmt.Println(len(rt.Trace), "DNS exchanges")
	// Output:
	// 10 mx1.example.test [192.0.2.1 2001:db8::1]
	// 20 mx2.example.test [192.0.2.2]
	// 5 DNS exchanges
}

func ExampleError() {
	d := exampleServer()
	defer d.Close()
	r, err := resolver.New(resolver.Config{Servers: []string{d.Addr()}})
	if err != nil {
		log.Fatal(err)
	}
	for _, domain := range []string{"nomail.example.test", "missing.example.test"} {
		_, err := r.Route(context.Background(), domain)
		var re *resolver.Error
		if errors.As(err, &re) {
			fmt.Println(domain, re.Permanent, re.Enhanced, errors.Is(err, resolver.ErrNullMX))
		}
	}
	// Output:
	// nomail.example.test true 5.1.10 true
	// missing.example.test true 5.1.2 false
}

func ExampleResolver_LookupPTR() {
	d := exampleServer()
	defer d.Close()
	r, err := resolver.New(resolver.Config{Servers: []string{d.Addr()}})
	if err != nil {
		log.Fatal(err)
	}
	names, err := r.LookupPTR(context.Background(), netip.MustParseAddr("192.0.2.1"))
	fmt.Println(names, err)
	// Output:
	// [mx1.example.test] <nil>
}
