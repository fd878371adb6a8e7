package dedupe

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// runwareKey keys body with the default (runware) source.
func runwareKey(t testing.TB, body []byte) string {
	t.Helper()
	k, err := NewKeyer(nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := k.Key(nil, nil, body)
	if err != nil {
		t.Fatalf("Key(%.60q): %v", body, err)
	}
	checkKey(t, key)
	return key
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "runware", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fixtureKey(t testing.TB, name string) string {
	t.Helper()
	return runwareKey(t, fixture(t, name))
}

// Files 01-15 are copies of the shared reference fixtures; 16-25 add the
// shapes those do not cover.
func TestRunwareFixtureKeys(t *testing.T) {
	const hashed = `[0-9a-f]{32}`
	for _, tt := range []struct {
		file string
		want string // a regexp for the whole key
	}{
		{"01-image-bare.json", `rw:06899537-567b-4be1-90fa-6006f113c2bc/4a62a13d-9773-4d97-b9ae-879bd3cf804d`},
		{"02-image-wrapped.json", `rw:06899537-567b-4be1-90fa-6006f113c2bc/4a62a13d-9773-4d97-b9ae-879bd3cf804d`},
		{"03-batch-item-a.json", `rw:9b20a860-b5c8-4607-b2b4-45c4c45ac00e/28db6fcc-b80a-4066-9e3b-7f9c651c2831`},
		{"04-batch-item-b.json", `rw:9b20a860-b5c8-4607-b2b4-45c4c45ac00e/83e5e70d-df3d-4bf2-8855-60e891b8b5d4`},
		{"05-photomaker-two-in-one.json", `rw:68c17f11-559d-477c-ad0c-78b82d89c84d/f5bad60a-87b8-4cc2-b4af-33a71ba46a8e,68c17f11-559d-477c-ad0c-78b82d89c84d/c38434bc-f8a8-4e78-a754-e7a8c8baea7b`},
		{"06-video.json", `rw:eb53a363-cc53-4ed1-8439-0b681539053b/bb6c07bf-3e14-4656-a685-73be82c9a0c0`},
		{"07-audio.json", `rw:6fae0210-6a54-4fee-ab33-859d393131d7/0151eae2-3447-4b69-b3c6-ef9b1a124858`},
		{"08-upscale-media.json", `rw:937b4011-4469-47e5-9502-33a1f406e774/4ac88235-5dff-4db9-a97e-37e0400cdff6`},
		{"09-bgremoval-legacy.json", `rw:5465d720-1e85-4700-9a4b-257933716c54/5b48a429-b07b-406c-a33a-b125768cfe5e`},
		{"10-caption-structured.json", `rw:4b6b8b1f-8bd3-44fb-8184-5a9ff061d02f/#` + hashed},
		{"11-prompt-enhance-a.json", `rw:b4ccbda9-6107-42bd-849d-30fbbf7b098d/#` + hashed},
		{"12-prompt-enhance-b.json", `rw:b4ccbda9-6107-42bd-849d-30fbbf7b098d/#` + hashed},
		{"13-error-provider-timeout.json", `rw:0c59f655-2201-4274-b8dd-6f5c56acc2b3/!timeoutProvider`},
		{"14-error-validation.json", `rw:e77e1f09-f08d-4a0d-b5e7-88ed7142600d/!invalidWidth`},
		{"15-error-singular.json", `rw:e4cd7a1b-dcf7-415e-845e-3eb28bea3692/!unsupportedDuration`},
		{"16-error-status-item.json", `rw:a1f0c3de-3b0e-4d6e-9c2a-0f4f6a1d2b11/5d0e8a57-6b36-4a39-8f7a-1f2b3c4d5e60,a1f0c3de-3b0e-4d6e-9c2a-0f4f6a1d2b11/!contentModeration`},
		{"17-mask-image.json", `rw:c9a3e7b2-2d54-4c83-9a4e-6e1f0b7d8c21/e2d4c6b8-a0f1-4e3d-9c5b-7a8f6e4d2c10`},
		{"18-guide-image.json", `rw:7f3e2d1c-0b9a-4876-a5b4-c3d2e1f0a9b8/9c8b7a6d-5e4f-4321-8fed-cba987654321`},
		{"19-outputs-files.json", `rw:1d2c3b4a-5f6e-4789-9abc-def012345678/aa11bb22-cc33-4d44-8e55-ff6677889900\+bb22cc33-dd44-4e55-9f66-0077889900aa`},
		{"20-text-inference-a.json", `rw:f0e1d2c3-b4a5-4968-8776-655443322110/#` + hashed},
		{"21-text-inference-b.json", `rw:f0e1d2c3-b4a5-4968-8776-655443322110/#` + hashed},
		{"22-image-wrapped-pretty.json", `rw:06899537-567b-4be1-90fa-6006f113c2bc/4a62a13d-9773-4d97-b9ae-879bd3cf804d`},
		{"23-data-and-errors.json", `rw:2c4e6a8b-0d1f-4a3c-9e5b-7d9f1b3d5f7a/6b8d0f2a-4c6e-4a8b-8c0e-2a4c6e8a0c2e,2c4e6a8b-0d1f-4a3c-9e5b-7d9f1b3d5f7a/!timeoutProvider`},
		{"24-media-and-image.json", `rw:8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968/11223344-5566-4778-899a-abbccddeeff0`},
		{"25-error-no-code.json", `rw:4f5e6d7c-8b9a-4a0b-9c1d-2e3f4a5b6c7d/#` + hashed},
	} {
		t.Run(tt.file, func(t *testing.T) {
			got := fixtureKey(t, tt.file)
			if !regexp.MustCompile(`^` + tt.want + `$`).MatchString(got) {
				t.Errorf("key = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRunwareEveryFixtureKeyed(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "runware", "*.json"))
	if err != nil || len(files) < 15 {
		t.Fatalf("fixtures: %v, %v", files, err)
	}
	seen := make(map[string]string)
	for _, f := range files {
		key := fixtureKey(t, filepath.Base(f))
		if !strings.HasPrefix(key, "rw:") {
			t.Errorf("%s: key %q not from the runware source", f, key)
		}
		seen[key] += " " + filepath.Base(f)
	}
	// Only the same image, bare and wrapped (and re-indented), may share
	// a key.
	for key, names := range seen {
		if strings.Count(names, " ") > 1 && names != " 01-image-bare.json 02-image-wrapped.json 22-image-wrapped-pretty.json" {
			t.Errorf("%s share key %q", names, key)
		}
	}
}

// Pairs of fixtures that must, or must not, share a key: a bare item and
// the same item wrapped (compact or pretty-printed) share one; two results
// of one task (batch items, prompt enhancements, text inferences) do not.
func TestRunwareFixturePairs(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		same bool
	}{
		{"01-image-bare.json", "02-image-wrapped.json", true},
		{"01-image-bare.json", "22-image-wrapped-pretty.json", true},
		{"03-batch-item-a.json", "04-batch-item-b.json", false},
		{"11-prompt-enhance-a.json", "12-prompt-enhance-b.json", false},
		{"20-text-inference-a.json", "21-text-inference-b.json", false},
	} {
		ka, kb := fixtureKey(t, tt.a), fixtureKey(t, tt.b)
		if (ka == kb) != tt.same {
			t.Errorf("%s: %q\n%s: %q\nsame = %v, want %v", tt.a, ka, tt.b, kb, ka == kb, tt.same)
		}
	}
}

// Both images of one POST contribute: the key differs from each image's
// own key and names both.
func TestRunwareTwoInOne(t *testing.T) {
	key := fixtureKey(t, "05-photomaker-two-in-one.json")
	for _, id := range []string{"f5bad60a-87b8-4cc2-b4af-33a71ba46a8e", "c38434bc-f8a8-4e78-a754-e7a8c8baea7b"} {
		if !strings.Contains(key, id) {
			t.Errorf("key %q lacks image %s", key, id)
		}
	}
	first := runwareKey(t, []byte(`{"taskType":"photoMaker","taskUUID":"68c17f11-559d-477c-ad0c-78b82d89c84d","imageUUID":"f5bad60a-87b8-4cc2-b4af-33a71ba46a8e"}`))
	if key == first {
		t.Errorf("two-image key equals the first image's key %q", first)
	}
}

func TestRunwareErrorsKeyedByCode(t *testing.T) {
	for file, code := range map[string]string{
		"13-error-provider-timeout.json": "timeoutProvider",
		"14-error-validation.json":       "invalidWidth",
		"15-error-singular.json":         "unsupportedDuration",
		"16-error-status-item.json":      "contentModeration",
	} {
		if key := fixtureKey(t, file); !strings.Contains(key, "/!"+code) {
			t.Errorf("%s: key %q not keyed by code %s", file, key, code)
		}
	}
	// The same error code for two tasks is two keys.
	a := runwareKey(t, []byte(`{"errors":[{"code":"timeoutProvider","taskUUID":"a"}]}`))
	b := runwareKey(t, []byte(`{"errors":[{"code":"timeoutProvider","taskUUID":"b"}]}`))
	if a == b {
		t.Errorf("errors of different tasks share key %q", a)
	}
}

// Shapes beyond the fixtures; want is a regexp for the whole key.
func TestRunwareShapes(t *testing.T) {
	bodyHash := func(body string) string { return regexp.QuoteMeta(hashKey(sha256Sum(body))) }
	const h = `[0-9a-f]{32}`
	for _, tt := range []struct {
		name, body, want string
	}{
		{"bare", `{"taskUUID":"t","imageUUID":"i"}`, `rw:t/i`},
		{"data object", `{"data":{"taskUUID":"t","imageUUID":"i"}}`, `rw:t/i`},
		{"top-level array", `[{"taskUUID":"t","imageUUID":"i"},{"taskUUID":"t","imageUUID":"j"}]`, `rw:t/i,t/j`},
		{"precedence", `{"taskUUID":"t","guideImageUUID":"g","maskImageUUID":"m","audioUUID":"a","videoUUID":"v","imageUUID":"i","mediaUUID":"md"}`, `rw:t/md`},
		{"precedence image", `{"taskUUID":"t","guideImageUUID":"g","videoUUID":"v","imageUUID":"i"}`, `rw:t/i`},
		{"precedence guide", `{"taskUUID":"t","guideImageUUID":"g","inputImageUUID":"x"}`, `rw:t/g`},
		{"no taskUUID", `{"imageUUID":"i"}`, `rw:/i`},
		{"numeric ids", `{"taskUUID":12,"imageUUID":34}`, `rw:12/34`},
		{"null id skipped", `{"taskUUID":"t","mediaUUID":null,"imageUUID":"i"}`, `rw:t/i`},
		{"empty id skipped", `{"taskUUID":"t","mediaUUID":"","imageUUID":"i"}`, `rw:t/i`},
		{"bool and object ids", `{"taskUUID":true,"imageUUID":{"x":1}}`, `rw:/#` + h},
		{"duplicate member last wins", `{"taskUUID":"t","imageUUID":"a","imageUUID":"b"}`, `rw:t/b`},
		{"escaped member name", `{"task\u0055UID":"t","image\u0055UID":"i"}`, `rw:t/i`},
		{"files skip non-objects", `{"taskUUID":"t","outputs":{"files":[1,{"url":"x"},{"uuid":"a"},null,{"uuid":"b"}]}}`, `rw:t/a\+b`},
		{"files without uuid", `{"taskUUID":"t","outputs":{"files":[{"url":"x"}]}}`, `rw:t/#` + h},
		{"files not array", `{"taskUUID":"t","outputs":{"files":{"uuid":"a"}}}`, `rw:t/#` + h},
		{"outputs not object", `{"taskUUID":"t","outputs":[{"uuid":"a"}]}`, `rw:t/#` + h},
		{"error status beats output", `{"taskUUID":"t","status":"error","code":"c","imageUUID":"i"}`, `rw:t/!c`},
		{"error without code", `{"error":{"taskUUID":"t","message":"m"}}`, `rw:t/#` + h},
		{"errors object", `{"errors":{"code":"c"}}`, `rw:/!c`},
		{"numeric code", `{"errors":[{"code":500,"taskUUID":"t"}]}`, `rw:t/!500`},
		{"error string ignored", `{"error":"boom"}`, bodyHash(`{"error":"boom"}`)},
		{"non-object items", `{"data":[1,"x",null,[2]]}`, `rw:/#` + h + `,/#` + h + `,/#` + h + `,/#` + h},
		{"empty data", `{"data":[]}`, bodyHash(`{"data":[]}`)},
		{"null data", `{"data":null}`, bodyHash(`{"data":null}`)},
		{"scalar body", `"hello"`, bodyHash(`"hello"`)},
		{"number body", `42`, bodyHash(`42`)},
		{"empty object", `{}`, `rw:/#` + h},
		{"taskUUID beside data is an item", `{"taskUUID":"t","data":[{"taskUUID":"u","imageUUID":"i"}]}`, `rw:t/#` + h},
		{"separators escaped", `{"taskUUID":"a/b,c","imageUUID":"d+e!f#g%h|i"}`, `rw:a%2Fb%2Cc/d%2Be%21f%23g%25h%7Ci`},
		{"escapes kept as written", `{"taskUUID":"t","imageUUID":"a\"b"}`, `rw:t/a\\"b`},
		{"space forces hash", `{"taskUUID":"t","imageUUID":"a b"}`, `sha256:[0-9a-f]{64}`},
		{"invalid UTF-8 forces hash", "{\"taskUUID\":\"t\",\"imageUUID\":\"\xff\xfe\"}", `sha256:[0-9a-f]{64}`},
		{"long id forces hash", `{"taskUUID":"t","imageUUID":"` + strings.Repeat("x", 201) + `"}`, `sha256:[0-9a-f]{64}`},
		{"many items force hash", `{"data":[` + strings.Repeat(`{"taskUUID":"06899537-567b-4be1-90fa-6006f113c2bc","imageUUID":"4a62a13d-9773-4d97-b9ae-879bd3cf804d"},`, 2) + `{"taskUUID":"06899537-567b-4be1-90fa-6006f113c2bc","imageUUID":"d9f3c0aa-1b2c-4d5e-8f90-a1b2c3d4e5f6"}]}`, `sha256:[0-9a-f]{64}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := runwareKey(t, []byte(tt.body))
			if !regexp.MustCompile(`^` + tt.want + `$`).MatchString(got) {
				t.Errorf("key = %q, want %q", got, tt.want)
			}
		})
	}
}

// Keys stay distinct where a naive join of the parts would not.
func TestRunwareDistinct(t *testing.T) {
	for _, tt := range []struct{ name, a, b string }{
		{"split point", `{"taskUUID":"a","imageUUID":"b/c"}`, `{"taskUUID":"a/b","imageUUID":"c"}`},
		{"one item vs two", `[{"taskUUID":"a","imageUUID":"b,a/c"}]`, `[{"taskUUID":"a","imageUUID":"b"},{"taskUUID":"a","imageUUID":"c"}]`},
		{"files vs id", `{"taskUUID":"a","imageUUID":"b+c"}`, `{"taskUUID":"a","outputs":{"files":[{"uuid":"b"},{"uuid":"c"}]}}`},
		{"code vs id", `{"taskUUID":"a","imageUUID":"!c"}`, `{"taskUUID":"a","status":"error","code":"c"}`},
		{"long values", `{"taskUUID":"t","imageUUID":"` + strings.Repeat("x", 300) + `"}`, `{"taskUUID":"t","imageUUID":"` + strings.Repeat("x", 301) + `"}`},
		{"long id vs its hash", `{"taskUUID":"t","imageUUID":"` + strings.Repeat("x", 300) + `"}`, `{"taskUUID":"t","imageUUID":"%%` + strings.Repeat("0", 64) + `"}`},
		{"batch siblings", `{"taskUUID":"t","imageUUID":"a"}`, `{"taskUUID":"t","imageUUID":"b"}`},
		{"different items hashed", `{"taskUUID":"t","text":"a"}`, `{"taskUUID":"t","text":"b"}`},
		{"error code vs error hash", `{"errors":[{"code":"c"}]}`, `{"errors":[{"message":"c"}]}`},
	} {
		if ka, kb := runwareKey(t, []byte(tt.a)), runwareKey(t, []byte(tt.b)); ka == kb {
			t.Errorf("%s: both keyed %q", tt.name, ka)
		}
	}
}

// Whitespace and wrapping do not change a key.
func TestRunwareSame(t *testing.T) {
	for _, tt := range []struct{ name, a, b string }{
		{"hash ignores whitespace", `{"taskUUID":"t","text":"a b","n":[1,2]}`, " {\n\t\"taskUUID\" : \"t\",\r\n \"text\": \"a b\", \"n\": [ 1 , 2 ] }\n"},
		{"bare vs wrapped hashed", `{"taskUUID":"t","text":"x"}`, `{"data":[{"taskUUID":"t","text":"x"}]}`},
		{"bare vs wrapped error", `{"taskUUID":"t","status":"error","code":"c"}`, `{"data":[{"taskUUID":"t","status":"error","code":"c"}]}`},
		{"bare vs wrapped files", `{"taskUUID":"t","outputs":{"files":[{"uuid":"a"}]}}`, `{"data":[ {"taskUUID":"t","outputs":{"files":[{"uuid":"a"}]}} ]}`},
		{"bare vs top-level array", `{"taskUUID":"t","imageUUID":"i"}`, `[{"taskUUID":"t","imageUUID":"i"}]`},
		{"long bare vs wrapped", `{"taskUUID":"t","imageUUID":"` + strings.Repeat("y", 500) + `"}`, `{"data":[{"taskUUID":"t","imageUUID":"` + strings.Repeat("y", 500) + `"}]}`},
	} {
		if ka, kb := runwareKey(t, []byte(tt.a)), runwareKey(t, []byte(tt.b)); ka != kb {
			t.Errorf("%s: %q != %q", tt.name, ka, kb)
		}
	}
}
