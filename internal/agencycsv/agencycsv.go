// Package agencycsv reads the CSV files that agencies are imported from:
// a header naming the columns code, name and (optionally) parent, then
// one agency per line. Errors name the file and line, so that a person
// can fix the file; a file with any error yields no agencies.
package agencycsv

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
)

// MaxRows bounds one import: every agency of the country (about 11,000
// communes, with their provinces and departments) fits inside it, and so
// many rows stay under the controller's 4 MiB request limit.
const MaxRows = 30_000

// maxErrors is how many problems are reported before the parser stops.
const maxErrors = 20

// Parse reads a CSV file of agencies. name is the file's name, used in
// errors. The header must have the columns code and name and may have
// parent, in any order (a UTF-8 byte order mark is allowed, as
// spreadsheets write one). Rows keep the order of the file, which is the
// order a controller registers them in: a parent may come earlier in the
// file. Every row's code and parent are checked and made canonical, and
// its name put in the form the registry keeps (agency.Name: NFC, white
// space collapsed); whether the parents exist is for the controller to say.
func Parse(name string, r io.Reader) ([]api.AgencyRow, error) {
	src, err := io.ReadAll(io.LimitReader(r, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	src = bytes.TrimPrefix(src, []byte("\ufeff"))
	cr := csv.NewReader(bytes.NewReader(src))
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = true

	header, err := cr.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("%s: empty file: want a header line code,name,parent", name)
	}
	if err != nil {
		return nil, csvErr(name, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		switch h {
		case "code", "name", "parent":
		default:
			return nil, fmt.Errorf("%s:1: unknown column %q: want code, name and optionally parent", name, header[i])
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("%s:1: column %s appears twice", name, h)
		}
		col[h] = i
	}
	for _, need := range []string{"code", "name"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("%s:1: no %s column: the header must name code, name and optionally parent", name, need)
		}
	}
	parentCol, hasParent := col["parent"]

	var rows []api.AgencyRow
	var errs []error
	seen := map[string]int{} // code -> line
	for len(errs) < maxErrors {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			errs = append(errs, csvErr(name, err))
			break // the reader cannot resynchronise after a quoting error
		}
		line, _ := cr.FieldPos(0)
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, args...)))
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // a blank line
		}
		if len(rec) != len(header) {
			bad("%d fields, the header has %d", len(rec), len(header))
			continue
		}
		if len(rows) == MaxRows {
			bad("more than %d agencies: split the file", MaxRows)
			break
		}
		if !allUTF8(rec) {
			bad("not UTF-8: save the file as UTF-8")
			continue
		}
		row := api.AgencyRow{Line: line}
		code, err := agency.Parse(strings.TrimSpace(rec[col["code"]]))
		if err != nil {
			bad("%v", err)
			continue
		}
		row.Code = code.String()
		if row.Name, err = agency.Name(rec[col["name"]]); err != nil {
			bad("agency %s has no usable name: %v", row.Code, err)
			continue
		}
		if hasParent {
			if p := strings.TrimSpace(rec[parentCol]); p != "" {
				pc, err := agency.Parse(p)
				if err != nil {
					bad("parent: %v", err)
					continue
				}
				if pc == code {
					bad("agency %s is its own parent", row.Code)
					continue
				}
				row.Parent = pc.String()
			}
		}
		if first, dup := seen[row.Code]; dup {
			bad("agency %s is already on line %d", row.Code, first)
			continue
		}
		seen[row.Code] = line
		rows = append(rows, row)
	}
	if len(errs) == maxErrors {
		errs = append(errs, fmt.Errorf("%s: too many errors, stopped", name))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s: no agencies after the header", name)
	}
	return rows, nil
}

// csvErr words encoding/csv's errors as file:line:column.
func csvErr(name string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d:%d: %v", name, pe.Line, pe.Column, pe.Err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

func allUTF8(rec []string) bool {
	for _, f := range rec {
		if !utf8.ValidString(f) {
			return false
		}
	}
	return true
}
