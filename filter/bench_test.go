package filter

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
)

// bigImage is a Runware base64Data result padded to 6 MiB, as real ones
// are (1-8 MiB).
func bigImage(tb testing.TB) []byte {
	b, err := os.ReadFile("testdata/16-image-base64data.json")
	if err != nil {
		tb.Fatal(err)
	}
	i := bytes.Index(b, []byte(`"imageBase64Data":"`)) + len(`"imageBase64Data":"`)
	pad := strings.Repeat("QUJD", (6<<20-len(b))/4)
	return append(append(append([]byte{}, b[:i]...), pad...), b[i:]...)
}

func benchBodies(b *testing.B) map[string][]byte {
	small, err := os.ReadFile("testdata/01-image-bare.json")
	if err != nil {
		b.Fatal(err)
	}
	return map[string][]byte{"300B": small, "6MiB": bigImage(b)}
}

// BenchmarkValid is json.Valid alone: what admit already pays on a relay
// whose dedupe key reads the body.
func BenchmarkValid(b *testing.B) {
	for name, body := range benchBodies(b) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if !json.Valid(body) {
					b.Fatal("invalid")
				}
			}
		})
	}
}

func BenchmarkParseBody(b *testing.B) {
	for name, body := range benchBodies(b) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if ParseBody(body) == nil {
					b.Fatal("not parsed")
				}
			}
		})
	}
}

// BenchmarkTwoFilters is what admit adds for three destinations, two with
// a filter: one ParseBody (or ParseValidBody, when the dedupe key has
// checked the body already), two Matches.
func BenchmarkTwoFilters(b *testing.B) {
	image := mustCompile(b, `body.taskType == "imageInference"`)
	url := mustCompile(b, `has(body.imageURL) && headers["Content-Type"].startsWith("application/json")`)
	hdr := http.Header{"Content-Type": {"application/json"}, "User-Agent": {"Go-http-client/1.1"}}
	for name, body := range benchBodies(b) {
		for _, p := range []struct {
			name  string
			parse func([]byte) any
		}{{"ParseBody", ParseBody}, {"ParseValidBody", ParseValidBody}} {
			b.Run(name+"/"+p.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					in := Input{Body: p.parse(body), Headers: hdr, Key: "4a62a13d-9773-4d97-b9ae-879bd3cf804d"}
					if ok, err := image.Match(in); !ok || err != nil {
						b.Fatal(ok, err)
					}
					if _, err := url.Match(in); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkMatch is one Match on a body parsed beforehand.
func BenchmarkMatch(b *testing.B) {
	f := mustCompile(b, `body.taskType == "imageInference"`)
	body := ParseBody(benchBodies(b)["300B"])
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := f.Match(Input{Body: body}); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

// BenchmarkMatchLoop is one Match of a filter with a comprehension (the
// kind bounded by cost, see MaxCost) on a Runware batch parsed beforehand.
func BenchmarkMatchLoop(b *testing.B) {
	f := mustCompile(b, `has(body.data) && body.data.exists(d, d.taskType == "imageInference")`)
	body := ParseBody([]byte(`{"data":[{"taskType":"imageInference","taskUUID":"t","imageUUID":"i","cost":0.0013}]}`))
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := f.Match(Input{Body: body}); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

// BenchmarkTwoLoopFilters is the bench's -fanout: two filters with a
// comprehension over a Runware batch, on one parse of the body.
func BenchmarkTwoLoopFilters(b *testing.B) {
	image := mustCompile(b, `has(body.data) && body.data.exists(d, d.taskType == "imageInference")`)
	cheap := mustCompile(b, `has(body.data) && body.data.all(d, d.cost < 1.0)`)
	body := []byte(`{"data":[{"taskType":"imageInference","taskUUID":"06899537-567b-4be1-90fa-6006f113c2bc","imageUUID":"4a62a13d-9773-4d97-b9ae-879bd3cf804d","imageURL":"https://im.runware.ai/image/ws/0.5/ii/4a62a13d.jpg","seed":7532114250969985124,"NSFWContent":false,"cost":0.0013}]}`)
	b.ReportAllocs()
	for b.Loop() {
		in := Input{Body: ParseValidBody(body)}
		for _, f := range []*Filter{image, cheap} {
			if ok, err := f.Match(in); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	}
}
