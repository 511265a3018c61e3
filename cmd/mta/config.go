package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the daemon's configuration: the YAML file overlaid on
// Default(). Only cmd/mta knows it; serve.go splits it into the packages'
// own Config structs.
type Config struct {
	Hostname      string            `yaml:"hostname"`
	MyOrigin      string            `yaml:"myorigin"`
	StateDir      string            `yaml:"state_dir"`
	RuntimeDir    string            `yaml:"runtime_dir"`
	DrainTimeout  Duration          `yaml:"drain_timeout"`
	LocalDomains  []string          `yaml:"local_domains"`
	Aliases       map[string]string `yaml:"aliases"`
	TrustedNets   []string          `yaml:"trusted_networks"`
	Listeners     Listeners         `yaml:"listeners"`
	TLS           TLSFiles          `yaml:"tls"`
	UsersFile     string            `yaml:"users_file"`
	SendmailTrust []string          `yaml:"sendmail_trusted_users"`
	DKIM          []DKIMKey         `yaml:"dkim"`
	Routes        map[string]Route  `yaml:"routes"`
	Relayhost     *Relayhost        `yaml:"relayhost"`
	TLSPolicies   map[string]string `yaml:"tls_policies"`
	Limits        Limits            `yaml:"limits"`
	Delivery      DeliveryConfig    `yaml:"delivery"`
	DNS           DNSConfig         `yaml:"dns"`
	Spool         SpoolConfig       `yaml:"spool"`
	Metrics       MetricsConfig     `yaml:"metrics"`
	Log           LogConfig         `yaml:"log"`
	Admin         AdminConfig       `yaml:"admin"`
}

// Listeners are the addresses of each kind of SMTP listener; an empty list
// turns that kind off.
type Listeners struct {
	Relay       []string `yaml:"relay"`
	Submission  []string `yaml:"submission"`
	Submissions []string `yaml:"submissions"`
}

// TLSFiles name the server certificate; with none, a self-signed one is
// made once in the state directory.
type TLSFiles struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// DKIMKey signs mail from one sender domain.
type DKIMKey struct {
	Domain   string `yaml:"domain"`
	Selector string `yaml:"selector"`
	KeyFile  string `yaml:"key_file"`
}

// Route overrides the MX lookup for a domain.
type Route struct {
	Hosts []string  `yaml:"hosts"` // host:port, tried in order
	TLS   string    `yaml:"tls"`   // none | opportunistic | require | verify
	Auth  *AuthCred `yaml:"auth"`
	// InsecureSkipVerify must be set explicitly to skip certificate checks
	// on a route whose TLS is verify; the daemon logs it at start.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Relayhost sends all (or the listed) domains through a smarthost.
type Relayhost struct {
	Route   `yaml:",inline"`
	Domains []string `yaml:"domains"` // empty: every domain
}

// AuthCred logs in to a relay; the password lives in a file.
type AuthCred struct {
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
}

// Limits protect the listeners.
type Limits struct {
	MaxMessageBytes       int64 `yaml:"max_message_bytes"`
	MaxRecipients         int   `yaml:"max_recipients"`
	ConnsPerIP            int   `yaml:"conns_per_ip"`
	ConnsTotal            int   `yaml:"conns_total"`
	DataConcurrency       int   `yaml:"data_concurrency"`
	UserMessagesPerDay    int   `yaml:"user_messages_per_day"`
	UserRecipientsPerHour int   `yaml:"user_recipients_per_hour"`
	FromHeaderMustMatch   *bool `yaml:"from_header_must_match"`
}

// DeliveryConfig tunes the delivery engine.
type DeliveryConfig struct {
	MaxConnections     int      `yaml:"max_connections"`
	PerDestination     int      `yaml:"per_destination"`
	RetryMin           Duration `yaml:"retry_min"`
	RetryMax           Duration `yaml:"retry_max"`
	Lifetime           Duration `yaml:"lifetime"`
	DelayWarning       Duration `yaml:"delay_warning"`
	IPFamily           string   `yaml:"ip_family"`
	SourceAddrs        []string `yaml:"source_addresses"`
	AllowPrivateMX     bool     `yaml:"allow_private_mx"`
	Port               int      `yaml:"port"`
	ProxyAddrs         []string `yaml:"proxy_addresses"`
	MaxRcptsPerMessage int      `yaml:"max_recipients_per_transaction"`
	// SessionTimeout, when set, is how long every phase of an outgoing
	// session waits (connect, greeting, each reply, each write); 0 keeps
	// RFC 5321 §4.5.3.2's times.
	SessionTimeout Duration `yaml:"session_timeout"`
	// MaxAddrsPerAttempt and MaxSessionsPerAttempt bound one attempt at a
	// destination: addresses dialled, and sessions that got past EHLO.
	MaxAddrsPerAttempt    int `yaml:"max_addresses_per_attempt"`
	MaxSessionsPerAttempt int `yaml:"max_sessions_per_attempt"`
}

// DNSConfig names the resolvers; empty means /etc/resolv.conf.
type DNSConfig struct {
	Servers []string `yaml:"servers"`
	Timeout Duration `yaml:"timeout"`
}

// SpoolConfig bounds the spool.
type SpoolConfig struct {
	MinFreeBytes    int64    `yaml:"min_free_bytes"`
	RetiredMaxAge   Duration `yaml:"retired_max_age"`
	RetiredMaxCount int      `yaml:"retired_max_count"`
}

// MetricsConfig places the Prometheus endpoint; "" turns it off.
type MetricsConfig struct {
	Address string `yaml:"address"`
}

// LogConfig picks the log format and level.
type LogConfig struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// AdminConfig controls who may use the admin socket.
type AdminConfig struct {
	Group string `yaml:"group"`
}

// Duration is a time.Duration written like "30s" or "5d" in YAML.
type Duration time.Duration

// UnmarshalYAML reads a duration, reporting a bad value with its line
// without stopping the decoding of the rest of the file.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration (e.g. \"30s\", \"5m\", \"4h\", \"5d\")", n.Line, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in Go syntax.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// parseDuration is time.ParseDuration plus a "d" (day) unit, which queue
// lifetimes are usually written in.
func parseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		if _, err := fmt.Sscanf(n, "%d", &days); err != nil || fmt.Sprint(days) != n || days < 0 {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err == nil && d < 0 {
		err = errors.New("negative duration")
	}
	return d, err
}

// LoadConfig reads path and overlays it on Default(). Every problem is
// reported at once, each with its line (unknown keys, bad values) or key
// path (Validate).
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(data, path)
}

var unknownField = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)

// ParseConfig is LoadConfig on bytes; name labels the messages.
func ParseConfig(data []byte, name string) (*Config, error) {
	return parseConfigOnto(Default(), data, name)
}

// parseConfigOnto overlays data on c (the defaults of whoever runs the
// daemon: serve, or the lab) and validates the result.
func parseConfigOnto(c *Config, data []byte, name string) (*Config, error) {
	problems, err := decodeStrict(data, name, c)
	if err != nil {
		return nil, err
	}
	lines := keyLines(data)
	for _, p := range c.Validate() {
		problems = append(problems, withLine(p, lines))
	}
	if len(problems) > 0 {
		return nil, &ConfigError{File: name, Problems: problems}
	}
	return c, nil
}

// decodeStrict decodes YAML into v with unknown keys refused, and returns
// every such problem and bad value with its line and, where the line
// tells, its key path; err is for YAML that cannot be read at all.
func decodeStrict(data []byte, name string, v any) (problems []string, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		idx := indexYAML(data)
		for _, e := range te.Errors {
			problems = append(problems, idx.name(e))
		}
	}
	return problems, nil
}

var lineProblem = regexp.MustCompile(`^line (\d+): (.*)$`)

// name rewrites one of yaml.v3's "line N: ..." problems so it names the
// key: an unknown key with the mapping it is in, a bad value with its
// key path. A line that holds several candidates (a flow mapping) keeps
// the problem as it is.
func (x yamlIndex) name(problem string) string {
	if m := unknownField.FindStringSubmatch(problem); m != nil {
		line, _ := strconv.Atoi(m[1])
		msg := fmt.Sprintf("line %d: unknown key %q", line, m[2])
		var parents []string
		for _, k := range x.keys[line] {
			if k.value == m[2] {
				parents = append(parents, k.parent)
			}
		}
		if len(parents) == 1 && parents[0] != "" {
			msg += " in " + parents[0]
		}
		return msg
	}
	m := lineProblem.FindStringSubmatch(problem)
	if m == nil {
		return problem
	}
	line, _ := strconv.Atoi(m[1])
	kind := yaml.ScalarNode
	if strings.Contains(m[2], "!!seq") {
		kind = yaml.SequenceNode
	} else if strings.Contains(m[2], "!!map") {
		kind = yaml.MappingNode
	}
	var all, paths []string
	for _, n := range x.values[line] {
		if n.kind != kind {
			continue
		}
		all = append(all, n.path)
		// yaml.v3 quotes a bad value in backticks, cut after 7 octets;
		// the Duration type quotes it whole.
		v := n.value
		if strings.Contains(m[2], "`"+v+"`") || strings.Contains(m[2], strconv.Quote(v)) ||
			len(v) > 10 && strings.Contains(m[2], "`"+v[:7]+"...`") {
			paths = append(paths, n.path)
		}
	}
	if len(all) == 1 {
		paths = all
	}
	if len(paths) == 1 {
		return fmt.Sprintf("line %d: %s: %s", line, paths[0], m[2])
	}
	return problem
}

// ConfigError lists every problem found in a config file.
type ConfigError struct {
	File     string
	Problems []string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s: %d problem(s):\n  %s", e.File, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// keyLines maps each key path of a YAML document ("delivery.retry_min",
// "dkim[0].key_file") to the line it is on, so validation problems can
// name their line.
func keyLines(data []byte) map[string]int { return indexYAML(data).lines }

// yamlIndex locates the keys and values of a YAML document: the line of
// each key path, and what is on each line.
type yamlIndex struct {
	lines  map[string]int
	keys   map[int][]yamlEntry // key nodes by line; value is the key
	values map[int][]yamlEntry // value nodes by line, with their key path
}

type yamlEntry struct {
	path, parent, value string
	kind                yaml.Kind
}

func indexYAML(data []byte) yamlIndex {
	x := yamlIndex{lines: map[string]int{}, keys: map[int][]yamlEntry{}, values: map[int][]yamlEntry{}}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return x
	}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + p
				}
				x.lines[p] = k.Line
				x.keys[k.Line] = append(x.keys[k.Line], yamlEntry{path: p, parent: path, value: k.Value, kind: k.Kind})
				x.values[v.Line] = append(x.values[v.Line], yamlEntry{path: p, parent: path, value: v.Value, kind: v.Kind})
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				x.lines[p] = c.Line
				x.values[c.Line] = append(x.values[c.Line], yamlEntry{path: p, parent: path, value: c.Value, kind: c.Kind})
				walk(c, p)
			}
		}
	}
	walk(doc.Content[0], "")
	return x
}

// withLine prefixes a "path: message" problem with the line of the
// longest key path that the file has.
func withLine(problem string, lines map[string]int) string {
	path, _, ok := strings.Cut(problem, ": ")
	for ok && path != "" {
		if l, found := lines[path]; found {
			return fmt.Sprintf("line %d: %s", l, problem)
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return problem
}
