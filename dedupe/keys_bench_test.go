package dedupe

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"testing"
)

const (
	bigTaskUUID  = "0c7f4b8e-2a9d-4e61-b3f5-8d2c1e0a9b7f"
	bigImageUUID = "5e1d9c3a-7b2f-4a8e-9c6d-1f0e2b3a4c5d"
)

// bigRunwareBody returns a Runware item of about size bytes: an image
// returned as base64 (outputType "base64Data"), escaped the way PHP and
// some other encoders escape "/". The big string comes before the ids, so
// finding them means skipping it. Without the image id the item is keyed
// by its hash instead.
func bigRunwareBody(size int, withImageID bool) []byte {
	raw := make([]byte, size*3/4)
	r := rand.New(rand.NewChaCha8([32]byte{1}))
	for i := range raw {
		raw[i] = byte(r.Uint32())
	}
	b64 := bytes.ReplaceAll([]byte(base64.StdEncoding.EncodeToString(raw)), []byte("/"), []byte(`\/`))
	var b bytes.Buffer
	b.WriteString(`{"taskType":"imageInference","imageBase64Data":"`)
	b.Write(b64)
	b.WriteString(`","taskUUID":"` + bigTaskUUID + `",`)
	if withImageID {
		b.WriteString(`"imageUUID":"` + bigImageUUID + `",`)
	}
	b.WriteString(`"seed":41000,"cost":0.0013}`)
	return b.Bytes()
}

func benchKey(b *testing.B, k *Keyer, h http.Header, body []byte) {
	b.Helper()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := k.Key(h, nil, body); err != nil {
			b.Fatal(err)
		}
	}
}

// About 300 bytes, the common case.
func BenchmarkKeyRunwareSmall(b *testing.B) {
	benchKey(b, mustKeyer(b), nil, fixture(b, "01-image-bare.json"))
}

func BenchmarkKeyRunwareWrapped(b *testing.B) {
	benchKey(b, mustKeyer(b), nil, fixture(b, "02-image-wrapped.json"))
}

func BenchmarkKeyRunwareTwoImages(b *testing.B) {
	benchKey(b, mustKeyer(b), nil, fixture(b, "05-photomaker-two-in-one.json"))
}

// An item without output id is keyed by its hash.
func BenchmarkKeyRunwareHashedItem(b *testing.B) {
	benchKey(b, mustKeyer(b), nil, fixture(b, "11-prompt-enhance-a.json"))
}

func BenchmarkKeyRunwareError(b *testing.B) {
	benchKey(b, mustKeyer(b), nil, fixture(b, "13-error-provider-timeout.json"))
}

func BenchmarkKeyJSONPath(b *testing.B) {
	benchKey(b, mustKeyer(b, "json.data.object.id"), nil, []byte(`{"id":"evt_1","type":"invoice.paid","data":{"object":{"id":"in_1NqLw2","amount_paid":1999,"currency":"usd","customer":"cus_9s6XKzkNRiz8i3"}},"livemode":false}`))
}

func BenchmarkKeyHeader(b *testing.B) {
	h := http.Header{"X-Github-Delivery": {"72d3162e-cc78-11e3-81ab-4c9367dc0958"}}
	benchKey(b, mustKeyer(b, "header.X-GitHub-Delivery"), h, []byte(`{"action":"opened"}`))
}

// 10 MiB: the base64 string is skipped, not decoded or copied.
func BenchmarkKeyRunware10MiB(b *testing.B) {
	benchKey(b, mustKeyer(b), nil, bigRunwareBody(10<<20, true))
}

// 10 MiB without output id: the whole item is hashed in place.
func BenchmarkKeyRunware10MiBHashedItem(b *testing.B) {
	benchKey(b, mustKeyer(b), nil, bigRunwareBody(10<<20, false))
}

func BenchmarkKeyBody10MiB(b *testing.B) {
	benchKey(b, mustKeyer(b, "body"), nil, bigRunwareBody(10<<20, true))
}

// json.Valid alone, the floor under any JSON-reading source.
func BenchmarkJSONValid10MiB(b *testing.B) {
	body := bigRunwareBody(10<<20, true)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if !json.Valid(body) {
			b.Fatal("invalid")
		}
	}
}
