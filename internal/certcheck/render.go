package certcheck

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Format is an output format of the report.
type Format string

// Output formats.
const (
	FormatTable Format = "table"
	FormatText  Format = "text"
	FormatJSON  Format = "json"
	FormatYAML  Format = "yaml"
)

// Formats lists the valid output formats, the default first.
var Formats = []Format{FormatTable, FormatText, FormatJSON, FormatYAML}

// ParseFormat checks an -o value.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if string(f) == s {
			return f, nil
		}
	}
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return "", fmt.Errorf("unknown output format %q; valid formats: %s", s, strings.Join(names, ", "))
}

// TableHeader is the header row of the table format.
var TableHeader = []string{"FILENAME", "SUBJECT", "ISSUER", "USAGES", "EXPIRES", "RESIDUAL TIME", "STATUS"}

// Render writes rows to w in format f.
//
//   - table: a header and one aligned row per certificate (columns separated by at
//     least two spaces; an empty cell shows "-"), then, after a blank line, one
//     "<file>: <STATUS>: <message>" line for each row that carries a message (the
//     reason of every MISSING and ERROR row).
//   - text: one line per certificate, "<file>: <STATUS>; subject …; issuer …; usages …;
//     expires … (in …)", and "<file>: MISSING; <message>" or "<file>: ERROR; <message>"
//     for a missing or unreadable file.
//   - json: an indented array of Row objects.
//   - yaml: the same objects as a YAML sequence.
func Render(w io.Writer, rows []Row, f Format) error {
	if rows == nil {
		rows = []Row{}
	}
	switch f {
	case FormatTable:
		return renderTable(w, rows)
	case FormatText:
		return renderText(w, rows)
	case FormatJSON:
		b, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	case FormatYAML:
		b, err := yaml.Marshal(rows)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	_, err := ParseFormat(string(f))
	return err
}

func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(s, "\t", " ")
}

func renderTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(TableHeader, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join([]string{
			cell(r.File), cell(r.Subject), cell(r.Issuer), cell(strings.Join(r.Usages, ",")),
			cell(r.Expires), cell(residualCell(r)), string(r.Status),
		}, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	first := true
	for _, r := range rows {
		if r.Message == "" {
			continue
		}
		if first {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
			first = false
		}
		if _, err := fmt.Fprintf(w, "%s: %s: %s\n", r.File, r.Status, r.Message); err != nil {
			return err
		}
	}
	return nil
}

// isProblem reports whether r stands for a file rather than a certificate.
func isProblem(r Row) bool { return r.Status == StatusError || r.Status == StatusMissing }

func residualCell(r Row) string {
	if isProblem(r) {
		return ""
	}
	return r.Residual
}

func renderText(w io.Writer, rows []Row) error {
	for _, r := range rows {
		var line string
		if isProblem(r) {
			line = fmt.Sprintf("%s: %s; %s", r.File, r.Status, r.Message)
		} else {
			usages := strings.Join(r.Usages, ",")
			if usages == "" {
				usages = "none"
			}
			when := "expires " + r.Expires + " (in " + r.Residual + ")"
			if r.Status == StatusExpired {
				when = "expired " + r.Expires + " (" + strings.TrimPrefix(r.Residual, "-") + " ago)"
			}
			line = fmt.Sprintf("%s: %s; subject %s; issuer %s; usages %s; %s", r.File, r.Status, cell(r.Subject), cell(r.Issuer), usages, when)
			if r.Message != "" {
				line += "; " + r.Message
			}
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}
