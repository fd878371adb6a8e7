package jsonscan

import (
	"strings"
	"testing"
)

func TestValueEnd(t *testing.T) {
	for _, tt := range []struct {
		b    string
		want int
	}{
		{`"abc",`, 5},
		{`"a\"b",`, 6},
		{`"a\\",`, 5},
		{`"a\\\"",`, 7},
		{`"open`, 5},
		{`{"a":"}"},`, 9},
		{`[1,[2,3]] x`, 9},
		{`123 ,`, 3},
		{`true}`, 4},
		{`[1,2`, 4}, // unterminated: the end of the input
	} {
		if got := ValueEnd([]byte(tt.b), 0); got != tt.want {
			t.Errorf("ValueEnd(%s) = %d, want %d", tt.b, got, tt.want)
		}
	}
}

func TestIterate(t *testing.T) {
	it := Iterate([]byte(`{ "a" : 1 , "b\"c" : [2, 3] , "d":{} }`))
	var got []string
	for {
		k, v, ok := it.Next()
		if !ok {
			break
		}
		got = append(got, string(k)+"="+string(v))
	}
	if want := `a=1|b\"c=[2, 3]|d={}`; strings.Join(got, "|") != want {
		t.Errorf("members %q, want %q", strings.Join(got, "|"), want)
	}
	// malformed input ends the walk instead of running out of bounds
	for _, b := range []string{`{"a" 1}`, `{1:2}`, `{"a":}`, `[`, `{`, `{"a`} {
		it := Iterate([]byte(b))
		for range 10 {
			if _, _, ok := it.Next(); !ok {
				break
			}
		}
	}
}
