package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"
)

// schemaVersion is the version of floe's --json output, described in
// docs/JSON.md. It goes up when a field changes meaning or goes away; new
// fields do not change it.
const schemaVersion = 1

// The message types of the JSON lines of long-running commands.
const (
	msgStatus  = "status"         // progress, at most once a second
	msgVerbose = "verbose_status" // one item done (a snapshot copied, removed, ...)
	msgError   = "error"          // an item failed (with "item"), or the command (with "exit_code")
	msgSummary = "summary"        // the outcome, last
)

// statusInterval is how often status lines are written: scripts and logs
// want progress, not a flood.
const statusInterval = time.Second

// jsonLines writes the messages of a long-running command to stdout, one
// JSON object a line, safely from several goroutines.
type jsonLines struct {
	mu sync.Mutex
	w  io.Writer
}

var stdoutJSON = &jsonLines{w: os.Stdout}

// fields turns v (a struct or a map) into its JSON object's fields;
// numbers stay exact (json.Number).
func fields(v any) map[string]any {
	if m, ok := v.(map[string]any); ok {
		return m
	}
	data, err := json.Marshal(v)
	if err != nil {
		return map[string]any{"encode_error": err.Error()}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	m := map[string]any{}
	if err := dec.Decode(&m); err != nil {
		return map[string]any{"encode_error": fmt.Sprintf("%T is not a JSON object", v)}
	}
	return m
}

// encodeMessage encodes v's fields with message_type first (so that a
// reader of the log sees it first) and the others sorted.
func encodeMessage(msgType string, v any) []byte {
	m := fields(v)
	delete(m, "message_type")
	rest, err := json.Marshal(m)
	if err != nil {
		rest = []byte(`{}`)
	}
	head, _ := json.Marshal(msgType)
	out := append([]byte(`{"message_type":`), head...)
	if len(rest) > 2 {
		out = append(out, ',')
	}
	out = append(out, rest[1:]...)
	return append(out, '\n')
}

func (j *jsonLines) write(msgType string, v any) {
	line := encodeMessage(msgType, v)
	j.mu.Lock()
	defer j.mu.Unlock()
	_, _ = j.w.Write(line)
}

// summary writes the last line of a long-running command.
func (j *jsonLines) summary(v any) {
	m := fields(v)
	m["schema_version"] = schemaVersion
	j.write(msgSummary, m)
}

// itemError reports one item (a file, a snapshot) that failed while the
// command went on.
func (j *jsonLines) itemError(item, during string, err error) {
	m := map[string]any{"error": err.Error()}
	if item != "" {
		m["item"] = item
	}
	if during != "" {
		m["during"] = during
	}
	j.write(msgError, m)
}

// verbose reports one item done.
func (j *jsonLines) verbose(v any) { j.write(msgVerbose, v) }

// jsonStatus writes a status line with fn's fields every statusInterval
// until the returned stop is called; without --json it does nothing.
func (g *globals) jsonStatus(start time.Time, fn func() map[string]any) (stop func()) {
	if !g.json {
		return func() {}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(statusInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				m := fn()
				m["seconds_elapsed"] = time.Since(start).Seconds()
				stdoutJSON.write(msgStatus, m)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-finished }) }
}

// writeDocument prints the one JSON document of a listing (and of the
// short commands: init, key add, version, ...), with schema_version.
func writeDocument(v any) error {
	m := fields(v)
	m["schema_version"] = schemaVersion
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(m)
}

// printJSONError reports the error that ended a command: one line on
// stdout, a JSON error message for the long-running commands and a JSON
// error document for the others (the same object).
func printJSONError(err error, code int, hint string) {
	m := map[string]any{"error": err.Error(), "exit_code": code, "schema_version": schemaVersion}
	if hint != "" {
		m["hint"] = hint
	}
	stdoutJSON.write(msgError, m)
}

// listDocument streams the one JSON document of a listing that may be
// long (ls, find, diff): the head fields, then a list written item by
// item, so that listing a million files does not hold them in memory.
// An error after the start still ends the document well: finish adds an
// "error" field, and the command exits non-zero without a second
// document.
type listDocument struct {
	w     *bufio.Writer
	n     int
	err   error
	ended bool
}

// startList writes {"schema_version":..., head fields..., "<list>":[ .
func startList(w io.Writer, head map[string]any, list string) *listDocument {
	d := &listDocument{w: bufio.NewWriterSize(w, 64<<10)}
	m := fields(head)
	m["schema_version"] = schemaVersion
	data, err := json.Marshal(m)
	if err != nil {
		d.err = err
		return d
	}
	d.w.Write(data[:len(data)-1]) // without the closing brace
	if len(m) > 0 {
		d.w.WriteByte(',')
	}
	name, _ := json.Marshal(list)
	d.w.Write(name)
	d.w.WriteString(":[")
	return d
}

// add writes one item of the list.
func (d *listDocument) add(v any) error {
	if d.err != nil {
		return d.err
	}
	data, err := json.Marshal(v)
	if err != nil {
		d.err = err
		return err
	}
	if d.n > 0 {
		d.w.WriteByte(',')
	}
	d.w.WriteString("\n")
	d.w.Write(data)
	d.n++
	return nil
}

// finish closes the list, adds the tail fields and, when failed is not
// nil, an "error" field, and ends the document.
func (d *listDocument) finish(tail map[string]any, failed error) error {
	if d.ended {
		return d.err
	}
	d.ended = true
	d.w.WriteString("\n]")
	if failed != nil {
		if tail == nil {
			tail = map[string]any{}
		}
		tail["error"] = failed.Error()
	}
	for _, k := range sortedKeys(tail) {
		name, _ := json.Marshal(k)
		val, err := json.Marshal(tail[k])
		if err != nil {
			return err
		}
		d.w.WriteByte(',')
		d.w.Write(name)
		d.w.WriteByte(':')
		d.w.Write(val)
	}
	d.w.WriteString("}\n")
	if err := d.w.Flush(); err != nil && d.err == nil {
		d.err = err
	}
	return d.err
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// documentFailed is returned by a listing whose document already says
// what went wrong ("error"): main exits with its code and prints nothing.
type documentFailed struct{ err error }

func (e documentFailed) Error() string { return e.err.Error() }
func (e documentFailed) Unwrap() error { return e.err }
