package caddytest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	bbolt "go.etcd.io/bbolt"
)

// readmePath is the README whose Caddyfile examples TestREADMECaddyfiles
// loads; a variable so that the test can point itself at a broken copy.
var readmePath = filepath.Join("..", "README.md")

// readmeExample is one Caddyfile example of the README: a fenced caddy
// block, or a subdirective shown inline.
type readmeExample struct {
	line   int    // where it starts in the README (1-based)
	text   string // as the README shows it (an inline one joined on one line)
	inline bool
}

func (e readmeExample) String() string {
	if e.inline {
		return fmt.Sprintf("README.md:%d `%s`", e.line, e.text)
	}
	return fmt.Sprintf("README.md:%d (the caddy block)", e.line)
}

// placeholderRe is a <placeholder> of a synopsis.
var placeholderRe = regexp.MustCompile(`<[a-z_.]+>`)

// readmePlaceholders are the placeholders an otherwise loadable inline
// example may carry, after the words they follow, with a value a user would
// write; an example with any other placeholder is a synopsis, not a config.
var readmePlaceholders = map[string]string{
	"auth_basic <user>": "auth_basic hooks",
	"jwks <url>":        "jwks https://hooks.example.com/.well-known/jwks.json",
}

// readmeExamples finds the README's Caddyfile examples:
//
//   - every ```caddy block but the synopsis (the one with <placeholders>);
//   - every inline code span, in a table or in prose, whose first word is a
//     subdirective the synopsis lists and that has arguments (`verify stripe
//     {env.S}`, `challenge graph`, `store memory`), or that is
//     `webhook_relay_console` with arguments; a table cell's "(or `a`,
//     `b`)" gives the same line with those schemes;
//
// and returns the inline spans with placeholders other than
// readmePlaceholders apart, as skipped synopses.
func readmeExamples(readme string) (examples []readmeExample, skipped []string, err error) {
	lines := strings.Split(readme, "\n")
	subdirectives := map[string]bool{"webhook_relay_console": true}
	var prose []string // the lines outside fenced blocks, fences blanked
	for i := 0; i < len(lines); i++ {
		fence, isFence := strings.CutPrefix(lines[i], "```")
		if !isFence {
			prose = append(prose, lines[i])
			continue
		}
		start := i
		prose = append(prose, "")
		var body []string
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
			body = append(body, lines[i])
			prose = append(prose, "")
		}
		if i == len(lines) {
			return nil, nil, fmt.Errorf("README.md:%d: fenced block never closed", start+1)
		}
		prose = append(prose, "")
		if strings.TrimSpace(fence) != "caddy" {
			continue
		}
		text := strings.Join(body, "\n") + "\n"
		if placeholderRe.MatchString(text) {
			// the synopsis: its first column names the subdirectives
			for _, l := range body[1:] {
				if f := strings.Fields(l); len(f) > 1 {
					subdirectives[f[0]] = true
				}
			}
			skipped = append(skipped, fmt.Sprintf("README.md:%d (the synopsis)", start+1))
			continue
		}
		examples = append(examples, readmeExample{line: start + 2, text: text})
	}
	if len(subdirectives) < 10 {
		return nil, nil, fmt.Errorf("README.md: no synopsis block listing the subdirectives")
	}

	// Inline code spans may run over a line break, within a paragraph.
	joined := strings.Join(prose, "\n")
	lineAt := func(off int) int { return strings.Count(joined[:off], "\n") + 1 }
	spanRe := regexp.MustCompile("`([^`]+)`")
	orRe := regexp.MustCompile("\\(or ((?:`[a-z_]+`(?:, )?)+)\\)")
	for _, m := range spanRe.FindAllStringSubmatchIndex(joined, -1) {
		span := strings.Join(strings.Fields(joined[m[2]:m[3]]), " ")
		words := strings.Fields(span)
		if len(words) < 2 || !subdirectives[words[0]] {
			continue
		}
		line := lineAt(m[0])
		for ph, val := range readmePlaceholders {
			span = strings.ReplaceAll(span, ph, val)
		}
		if placeholderRe.MatchString(span) || strings.Contains(span, "[") || strings.Contains(span, "|") {
			skipped = append(skipped, fmt.Sprintf("README.md:%d `%s` (a synopsis)", line, span))
			continue
		}
		examples = append(examples, readmeExample{line: line, text: span, inline: true})
		// "(or `openai`, `replicate`)" after a verify line in the same
		// table cell: the same line with those schemes
		if words[0] != "verify" {
			continue
		}
		rest := joined[m[1]:]
		if end := strings.IndexAny(rest, "|\n"); end >= 0 {
			rest = rest[:end]
		}
		if or := orRe.FindStringSubmatch(rest); or != nil {
			for _, alt := range spanRe.FindAllStringSubmatch(or[1], -1) {
				examples = append(examples, readmeExample{line: line, inline: true,
					text: strings.Replace(span, "verify "+words[1], "verify "+alt[1], 1)})
			}
		}
	}
	return examples, skipped, nil
}

// expandOneLineBlocks writes an inline example's one-line blocks as a
// Caddyfile needs them: "verify x {env.S} { a 1; b 2 }" is
//
//	verify x {env.S} {
//		a 1
//		b 2
//	}
//
// (a Caddyfile takes nothing after a block's "{" on its line, and has no
// ";"). The lines come back without indentation.
func expandOneLineBlocks(text string) ([]string, error) {
	head, block, found := strings.Cut(text, " { ")
	if !found {
		return []string{text}, nil
	}
	inner, ok := strings.CutSuffix(block, " }")
	if !ok || strings.Contains(inner, "{ ") {
		return nil, fmt.Errorf("cannot expand %q: one block closing the line expected", text)
	}
	out := []string{head + " {"}
	for _, opt := range strings.Split(inner, ";") {
		if opt = strings.TrimSpace(opt); opt != "" {
			out = append(out, "\t"+opt)
		}
	}
	return append(out, "}"), nil
}

// readmeCaddyfile makes a loadable Caddyfile of an example: a site block as
// it is, anything else in the site or relay it belongs in; automatic HTTPS
// off, so that nothing asks for a certificate. It reports whether the
// example is the Redis store, which is adapted only, and at which line of
// the Caddyfile the example starts.
func readmeCaddyfile(e readmeExample) (cfg string, redis bool, start int, err error) {
	var body []string
	if e.inline {
		if body, err = expandOneLineBlocks(e.text); err != nil {
			return "", false, 0, err
		}
	} else {
		body = strings.Split(strings.TrimSuffix(e.text, "\n"), "\n")
	}
	first := strings.Fields(body[0])
	indent := func(lines []string) []string {
		out := make([]string, len(lines))
		for i, l := range lines {
			if l != "" {
				l = "\t" + l
			}
			out[i] = l
		}
		return out
	}
	relay := func(lines []string) []string {
		return append(append([]string{"webhook_relay /hooks http://127.0.0.1:9/hooks {"}, indent(lines)...), "}")
	}
	site := func(lines []string) []string {
		return append(append([]string{":0 {"}, indent(lines)...), "}")
	}
	const global = "{\n\tauto_https off\n}\n\n" // 4 lines
	var config []string
	switch {
	case len(first) == 2 && first[1] == "{" && strings.Contains(first[0], "."):
		config, start = body, 5 // a site block (hooks.example.com {)
	case first[0] == "webhook_relay" || first[0] == "webhook_relay_console" || first[0] == "log":
		config, start = site(body), 6 // a directive of a site
	default:
		// a line of the relay's block, or its store
		redis = first[0] == "store" && len(first) > 1 && first[1] == "redis"
		config, start = site(relay(body)), 7
	}
	return global + strings.Join(config, "\n") + "\n", redis, start, nil
}

// readmeSecrets gives each {env.NAME} of a Caddyfile a value of the kind
// the line that reads it wants: a Discord public key, a SendGrid one, a
// Standard Webhooks secret, else a word.
func readmeSecrets(t *testing.T, cfg string) {
	t.Helper()
	envRe := regexp.MustCompile(`\{env\.([A-Za-z0-9_]+)\}`)
	for _, line := range strings.Split(cfg, "\n") {
		words := strings.Fields(line)
		kind := ""
		if len(words) > 1 && words[0] == "verify" {
			kind = words[1]
		} else if len(words) > 0 && words[0] == "sign_upstream" {
			kind = "standard_webhooks"
		}
		for _, m := range envRe.FindAllStringSubmatch(line, -1) {
			t.Setenv(m[1], readmeSecret(t, kind))
		}
	}
}

func readmeSecret(t *testing.T, scheme string) string {
	switch scheme {
	case "discord":
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(pub)
	case "sendgrid":
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(der)
	case "standard_webhooks", "openai", "replicate", "svix", "clerk", "resend":
		key := make([]byte, 24)
		rand.Read(key)
		return "whsec_" + base64.StdEncoding.EncodeToString(key)
	}
	return "readme-secret-" + rand.Text()[:8]
}

// TestREADMECaddyfiles loads every Caddyfile example of the README as a
// user would: adapted with no error or warning, then provisioned
// (caddy.Validate: every module, no listener) with plausible secrets, and
// its bolt files closed again afterwards. Each problem names the README
// line.
func TestREADMECaddyfiles(t *testing.T) {
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	// Validate provisions relays by name, as a loaded config does: let no
	// config of an earlier test hold one.
	startCaddy(t, globalOptions)

	for _, p := range readmeProblems(t, string(readme), nil) {
		t.Error(p)
	}
}

// TestREADMECaddyfilesCatchMistakes breaks README lines in a copy and
// checks that the problem found names the line.
func TestREADMECaddyfilesCatchMistakes(t *testing.T) {
	raw, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	startCaddy(t, globalOptions)
	known := map[string]bool{} // the README's own problems, if any
	for _, p := range readmeProblems(t, readme, nil) {
		known[p] = true
	}
	for _, c := range []struct {
		name string
		old  *regexp.Regexp // the README line to break
		new  string         // its replacement ($1... from old)
		env  map[string]string
		want string
	}{
		{name: "misspelt subdirective in a table", old: regexp.MustCompile(`\{ verify_token (\{env\.META_VERIFY_TOKEN\}) \}`),
			new: "{ verify_tokn $1 }", want: "verify_tokn"},
		{name: "rate without unit in a block", old: regexp.MustCompile(`(\trate +)5/s`), new: "${1}5", want: "rate"},
		{name: "Discord key not hex", old: regexp.MustCompile("`verify discord \\{env\\.DISCORD_PUBLIC_KEY\\}`"),
			env: map[string]string{"DISCORD_PUBLIC_KEY": strings.Repeat("zz", 32)}, want: "discord"},
		{name: "unknown scheme in prose", old: regexp.MustCompile("`verify slack (\\{env\\.S\\} \\{ tolerance 10m \\})`"),
			new: "`verify slak $1`", want: "slak"},
	} {
		t.Run(c.name, func(t *testing.T) {
			loc := c.old.FindStringIndex(readme)
			if loc == nil {
				t.Fatalf("README has no %s", c.old)
			}
			line := strings.Count(readme[:loc[0]], "\n") + 1
			mutated := readme
			if c.new != "" {
				mutated = readme[:loc[0]] + c.old.ReplaceAllString(readme[loc[0]:loc[1]], c.new) + readme[loc[1]:]
			}
			var found []string
			for _, p := range readmeProblems(t, mutated, c.env) {
				if !known[p] {
					found = append(found, p)
				}
			}
			at := fmt.Sprintf("README.md:%d", line)
			if len(found) == 0 {
				t.Fatalf("no problem found with the README's line %d broken", line)
			}
			for _, p := range found {
				if !strings.Contains(p, at) || !strings.Contains(p, c.want) {
					t.Errorf("problem does not name %s and %q: %s", at, c.want, p)
				}
			}
			t.Logf("found: %s", found[0])
		})
	}
}

// readmeProblems loads each Caddyfile example of readme and returns what
// is wrong with them, each naming the README line; env sets secrets instead
// of the plausible ones.
func readmeProblems(t *testing.T, readme string, env map[string]string) []string {
	t.Helper()
	examples, skipped, err := readmeExamples(readme)
	if err != nil {
		t.Fatal(err)
	}
	if len(examples) < 25 {
		t.Fatalf("found %d Caddyfile examples in the README, want the README's (25 or more)", len(examples))
	}
	for _, s := range skipped {
		t.Logf("skipped %s", s)
	}
	var problems []string
	bolts := 0
	for _, e := range examples {
		ps, n := readmeExampleProblems(t, e, env)
		problems = append(problems, ps...)
		bolts += n
	}
	if bolts == 0 {
		t.Error("no example opened a bolt file: nothing checked that they are closed again")
	}
	return problems
}

// readmeExampleProblems adapts and validates one example; it returns the
// problems and how many bolt files it checked are closed again.
func readmeExampleProblems(t *testing.T, e readmeExample, env map[string]string) (problems []string, bolts int) {
	t.Helper()
	cfg, redis, start, err := readmeCaddyfile(e)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", e, err)}, 0
	}
	// "Caddyfile:N" in Caddy's messages, as the README line
	lineRe := regexp.MustCompile(`Caddyfile:(\d+)`)
	where := func(msg string) string {
		return lineRe.ReplaceAllStringFunc(msg, func(m string) string {
			n, _ := strconv.Atoi(m[len("Caddyfile:"):])
			body := strings.Count(e.text, "\n")
			switch {
			case e.inline:
				return fmt.Sprintf("README.md:%d", e.line)
			case n >= start && n < start+body:
				return fmt.Sprintf("README.md:%d", e.line+n-start)
			}
			return m + " (the wrapping)"
		})
	}
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		return []string{fmt.Sprintf("%s: does not adapt: %s\nCaddyfile:\n%s", e, where(err.Error()), cfg)}, 0
	}
	for _, w := range warnings {
		problems = append(problems, fmt.Sprintf("%s: adapting warns: %s\nCaddyfile:\n%s", e, where(w.String()), cfg))
	}
	if redis {
		return problems, 0 // no Redis at redis.internal
	}

	dataDir := t.TempDir()
	t.Run(fmt.Sprintf("README.md:%d", e.line), func(t *testing.T) {
		readmeSecrets(t, cfg)
		for name, val := range env {
			t.Setenv(name, val)
		}
		// bolt files under a data folder of this example's own
		t.Setenv("XDG_DATA_HOME", dataDir)
		var c caddy.Config
		if err := json.Unmarshal(adapted, &c); err != nil {
			t.Fatal(err)
		}
		if err := caddy.Validate(&c); err != nil {
			problems = append(problems, fmt.Sprintf("%s: does not load: %v\nCaddyfile:\n%s", e, err, cfg))
		}
	})
	// every bolt file is closed: another process could open it now
	dbs, _ := filepath.Glob(filepath.Join(dataDir, "caddy", "webhook_relay", "*.db"))
	for _, db := range dbs {
		b, err := bbolt.Open(db, 0o600, &bbolt.Options{Timeout: 100 * time.Millisecond})
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %s still open after validation: %v", e, filepath.Base(db), err))
			continue
		}
		b.Close()
		bolts++
	}
	return problems, bolts
}
