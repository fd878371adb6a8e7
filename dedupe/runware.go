package dedupe

import (
	"bytes"

	"github.com/hookrelay/caddy-webhook-relay/internal/jsonscan"
)

// The runware key source. A Runware webhook body is a bare task object,
// {"data":[item...]}, {"errors":[...]} (possibly beside an empty "data"),
// or {"error":{...}}; items may carry "status":"error". Every item gets its
// own key and the keys of several items are joined with ",":
//
//	<taskUUID>/<outputID>         an output: the first present of outputIDs
//	<taskUUID>/<uuid>+<uuid>...   an output given as outputs.files[].uuid
//	<taskUUID>/!<code>            an error
//	<taskUUID>/#<hash>            no output id (caption, promptEnhance,
//	                              textInference): a hash of the whole item
//
// Batch results share a taskUUID and differ by output id, so the output id
// is always part of the key: keying on taskUUID alone would drop results.
// An item is keyed the same bare or wrapped in {"data":[...]}.

// field is a member name the runware source looks at.
type field uint8

const (
	fOther field = iota
	fData
	fErrors
	fError
	fTask
	fStatus
	fCode
	fOutputs
	fFiles
	fUUID
	// The members naming an item's output, by precedence.
	fMedia
	fImage
	fVideo
	fAudio
	fMask
	fGuide
	numFields
)

// fieldOf maps a raw member name to a field without allocating: a switch
// on string(k) does not copy k.
func fieldOf(k []byte) field {
	if bytes.IndexByte(k, '\\') >= 0 {
		// Escaped names are rare; longer ones cannot spell ours.
		if len(k) > 6*len("guideImageUUID") {
			return fOther
		}
		k = []byte(unescapeName(k))
	}
	switch string(k) {
	case "data":
		return fData
	case "errors":
		return fErrors
	case "error":
		return fError
	case "taskUUID":
		return fTask
	case "status":
		return fStatus
	case "code":
		return fCode
	case "outputs":
		return fOutputs
	case "files":
		return fFiles
	case "uuid":
		return fUUID
	case "mediaUUID":
		return fMedia
	case "imageUUID":
		return fImage
	case "videoUUID":
		return fVideo
	case "audioUUID":
		return fAudio
	case "maskImageUUID":
		return fMask
	case "guideImageUUID":
		return fGuide
	}
	return fOther
}

// members returns the values of the fields of object v; of duplicate
// members the last wins, as in encoding/json.
func members(v []byte) (f [numFields][]byte) {
	it := jsonscan.Iterate(v)
	for {
		k, val, ok := it.Next()
		if !ok {
			return f
		}
		f[fieldOf(k)] = val
	}
}

// appendRunware adds the runware part of the key of body, which is valid
// JSON. It adds nothing when body holds no item at all (a scalar, or a
// wrapper such as {"data":[]}), and the key falls back to other sources.
func appendRunware(kb *keyBuf, tag string, body []byte) {
	i := jsonscan.SkipWS(body, 0)
	if i >= len(body) {
		return
	}
	// body is one valid JSON value: it ends where the trailing space does,
	// so there is no need to scan the whole body for its end.
	v := bytes.TrimRight(body[i:], " \t\r\n")
	if len(v) == 0 {
		return
	}
	n := 0
	switch v[0] {
	case '[':
		// Not a documented shape, but an array of items is keyed like
		// the items of "data".
		appendRunwareItems(kb, tag, &n, v, false)
	case '{':
		f := members(v)
		data, errs, errOne := f[fData], f[fErrors], f[fError]
		// A task object has a taskUUID; a wrapper has none.
		if f[fTask] != nil || (data == nil && errs == nil && errOne == nil) {
			appendRunwareItem(kb, tag, &n, v, false)
			return
		}
		appendRunwareItems(kb, tag, &n, data, false)
		appendRunwareItems(kb, tag, &n, errs, true)
		appendRunwareItems(kb, tag, &n, errOne, true)
	}
}

// appendRunwareItems keys the items of an array, or v itself when it is an
// object. Scalars (null included) hold no item.
func appendRunwareItems(kb *keyBuf, tag string, n *int, v []byte, isErr bool) {
	if len(v) == 0 {
		return
	}
	switch v[0] {
	case '{':
		appendRunwareItem(kb, tag, n, v, isErr)
	case '[':
		it := jsonscan.Iterate(v)
		for {
			_, item, ok := it.Next()
			if !ok {
				return
			}
			appendRunwareItem(kb, tag, n, item, isErr)
		}
	}
}

// appendRunwareItem adds the key of one item; *n counts the items so far.
// isErr marks an entry of "errors" or "error".
func appendRunwareItem(kb *keyBuf, tag string, n *int, v []byte, isErr bool) {
	if *n == 0 {
		kb.part(tag)
	} else {
		kb.b = append(kb.b, ',')
	}
	*n++
	if v[0] != '{' {
		// Not an object: still keyed by its content, so that two
		// different payloads never share a key.
		kb.b = append(kb.b, '/')
		kb.valueHash(v)
		return
	}

	f := members(v)
	if t := scalar(f[fTask]); t != nil {
		appendEscaped(kb, t, &escRW)
	}
	kb.b = append(kb.b, '/')

	if isErr || bytes.Equal(scalar(f[fStatus]), []byte("error")) {
		// A retried error carries the same code; without one, the item
		// itself tells errors apart.
		if c := scalar(f[fCode]); c != nil {
			kb.b = append(kb.b, '!')
			appendEscaped(kb, c, &escRW)
		} else {
			kb.valueHash(v)
		}
		return
	}
	for _, id := range f[fMedia : fGuide+1] {
		if s := scalar(id); s != nil {
			appendEscaped(kb, s, &escRW)
			return
		}
	}
	if appendFileUUIDs(kb, f[fOutputs]) {
		return
	}
	kb.valueHash(v)
}

// appendFileUUIDs adds the outputs.files[].uuid list joined with "+", and
// reports whether there was any.
func appendFileUUIDs(kb *keyBuf, outputs []byte) bool {
	if len(outputs) == 0 || outputs[0] != '{' {
		return false
	}
	files := members(outputs)[fFiles]
	if len(files) == 0 || files[0] != '[' {
		return false
	}
	found := false
	it := jsonscan.Iterate(files)
	for {
		_, file, ok := it.Next()
		if !ok {
			return found
		}
		if file[0] != '{' {
			continue
		}
		if s := scalar(members(file)[fUUID]); s != nil {
			if found {
				kb.b = append(kb.b, '+')
			}
			appendEscaped(kb, s, &escRW)
			found = true
		}
	}
}

// scalar returns the text of a non-empty string (as written) or a number,
// and nil for anything else: ids and codes are strings, but a number
// identifies just as well, while null, booleans, objects and arrays do not.
func scalar(v []byte) []byte {
	if len(v) == 0 {
		return nil
	}
	switch c := v[0]; {
	case c == '"':
		if len(v) > 2 {
			return v[1 : len(v)-1]
		}
	case c == '-' || '0' <= c && c <= '9':
		return v
	}
	return nil
}
