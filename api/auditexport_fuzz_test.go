package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzReadAuditExport: the export parser `govnetctl audit verify` reads
// files with never panics, names a line within the input when it refuses
// one, and accepts only lines that are exactly their entries' encoding,
// so what it accepts and what any other reader of the file sees agree.
func FuzzReadAuditExport(f *testing.F) {
	var export []byte
	for _, e := range chain(3) {
		b, _ := json.Marshal(e)
		export = append(append(export, b...), '\n')
	}
	f.Add(export)
	f.Add([]byte{})
	f.Add([]byte("\n"))
	f.Add(bytes.Replace(export, []byte(`"actor":"officer1"`), []byte(`"actor":"mallory","Actor":"officer1"`), 1))
	f.Add(bytes.Replace(export, []byte(`Z"`), []byte(`+07:00"`), 1))
	f.Add(bytes.TrimSuffix(export, []byte("\n")))
	f.Add([]byte(`{"seq":1e0,"raft_index":1,"at":"2026-01-01T00:00:00Z","actor":"a","action":"b","request_sha256":"","prev":"","hash":""}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ReadAuditExport(bytes.NewReader(data))
		if err != nil {
			var ae *AuditError
			if errors.As(err, &ae) && (ae.Line < 1 || ae.Line > bytes.Count(data, []byte("\n"))+1) {
				t.Fatalf("error names line %d of an input of %d lines: %v", ae.Line, bytes.Count(data, []byte("\n"))+1, err)
			}
			return
		}
		var again []byte
		for _, e := range entries {
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			again = append(append(again, b...), '\n')
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted %q, which is not the encoding of the entries it read (%q)", data, again)
		}
		VerifyAudit(entries) // must not panic on whatever it accepted
	})
}
