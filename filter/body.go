package filter

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"strconv"
)

// ParseBody parses a body for the filters of every destination, once per
// payload: nil when it is not JSON (the filters then see null). Objects
// become map[string]any, arrays []any, strings string, booleans bool; a
// number that is an integer within int64 becomes int64 (a CEL int, so an id
// like 7532114250969985124 keeps every digit), any other number float64.
func ParseBody(body []byte) any {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil
	}
	if _, err := d.Token(); err != io.EOF { // something after the value
		return nil
	}
	return numbers(v)
}

// numbers replaces each json.Number in v by an int64 or a float64.
func numbers(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			switch e.(type) {
			case map[string]any, []any, json.Number:
				t[k] = numbers(e)
			}
		}
	case []any:
		for i, e := range t {
			switch e.(type) {
			case map[string]any, []any, json.Number:
				t[i] = numbers(e)
			}
		}
	case json.Number:
		if n, err := strconv.ParseInt(string(t), 10, 64); err == nil {
			return n
		}
		f, err := strconv.ParseFloat(string(t), 64)
		if err != nil || math.IsInf(f, 0) {
			return string(t) // out of float64's range: keep the digits
		}
		return f
	}
	return v
}
