package queue

import (
	"reflect"
	"testing"
)

func TestHeadersRoundTrip(t *testing.T) {
	for _, fields := range [][]HeaderField{
		nil,
		{{"Stripe-Signature", "t=1,v1=ab"}},
		{{"X-Github-Event", "push"}, {"X-Empty", ""}, {"X-Bytes", "\xff\x00 ü"}},
	} {
		buf := AppendHeaders([]byte("before"), fields)
		got, rest, err := ReadHeaders(append(buf[len("before"):], "after"...))
		if err != nil || !reflect.DeepEqual(got, fields) || string(rest) != "after" {
			t.Errorf("ReadHeaders(AppendHeaders(%q)) = %q, %q, %v", fields, got, rest, err)
		}
	}
}

func TestHeadersMalformed(t *testing.T) {
	good := AppendHeaders(nil, []HeaderField{{"A", "b"}})
	for _, buf := range [][]byte{
		nil,
		good[:len(good)-1],             // value cut short
		{0xff, 0xff, 0xff, 0xff, 0x0f}, // a count no buffer this size can hold
		AppendHeaders(nil, nil)[:0],    // nothing at all
		append([]byte{2}, good[1:]...), // two fields announced, one there
	} {
		if got, _, err := ReadHeaders(buf); err == nil {
			t.Errorf("ReadHeaders(%x) = %q, want an error", buf, got)
		}
	}
}
