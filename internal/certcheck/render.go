package certcheck

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

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

// TableHeader is the header row of the table format. The usages are left to the text,
// json and yaml formats: a leaf file's name says whether it is a client or a serving
// certificate, and the CA rows are the rows of service "ca".
var TableHeader = []string{"SERVICE", "FILENAME", "SUBJECT", "ISSUER", "EXPIRES", "LEFT", "STATUS"}

// TableWidth is the widest line of a table row: long file names, subjects and issuers
// are shortened (see shortName), with "…" in place of the cut, to keep every row within it.
const TableWidth = 120

// Summary is the last line of the table and text formats and the "summary" object of
// json and yaml. It counts the certificates of Fold (each distinct CA certificate once,
// each leaf file's leaf, each MISSING or ERROR file).
type Summary struct {
	// Total is the number of folded rows.
	Total int `json:"total"`
	// Counts maps each status that occurs to its number of rows.
	Counts map[Status]int `json:"counts"`
	// EarliestExpiry is the certificate that expires first, nil when the report holds
	// no certificate.
	EarliestExpiry *Expiry `json:"earliest_expiry"`
}

// Expiry names one certificate and when it expires.
type Expiry struct {
	File            string `json:"filename"`
	Subject         string `json:"subject"`
	Expires         string `json:"expires"`
	ResidualSeconds int64  `json:"residual_seconds"`
}

// Report is the document -o json and -o yaml print.
type Report struct {
	// Certificates holds every certificate of every file, in file order.
	Certificates []Row   `json:"certificates"`
	Summary      Summary `json:"summary"`
}

// Fold returns the rows an operator reads: first the CA section (every MISSING or
// ERROR CA file and each distinct CA certificate once, by fingerprint, whether it comes
// from a CA file or from the chain bundled in a leaf file), then, per leaf file, its
// non-CA certificates (the leaf) or its MISSING or ERROR row.
func Fold(rows []Row) []Row {
	out := []Row{}
	seen := map[string]bool{}
	for _, r := range rows {
		switch {
		case isProblem(r):
			if r.Service == ServiceCA {
				out = append(out, r)
			}
		case r.CA:
			if !seen[r.SHA256] {
				seen[r.SHA256] = true
				out = append(out, r)
			}
		}
	}
	for _, r := range rows {
		if r.Service != ServiceCA && (isProblem(r) || !r.CA) {
			out = append(out, r)
		}
	}
	return out
}

// Summarize computes the summary of rows (over Fold(rows)).
func Summarize(rows []Row) Summary {
	folded := Fold(rows)
	s := Summary{Total: len(folded), Counts: map[Status]int{}}
	for _, r := range folded {
		s.Counts[r.Status]++
		if isProblem(r) {
			continue
		}
		if s.EarliestExpiry == nil || r.ResidualSeconds < s.EarliestExpiry.ResidualSeconds {
			s.EarliestExpiry = &Expiry{File: r.File, Subject: r.Subject, Expires: r.Expires, ResidualSeconds: r.ResidualSeconds}
		}
	}
	return s
}

// statusOrder is the order of the summary's counts.
var statusOrder = []Status{StatusOK, StatusWarning, StatusExpired, StatusNotYetValid, StatusMissing, StatusError}

// Line renders s as the report's last line: "summary: 21 certificates: 20 OK,
// 1 WARNING; earliest expiry 2027-01-01 (364d) server/tls/client-admin.crt".
func (s Summary) Line() string {
	var counts []string
	for _, st := range statusOrder {
		if n := s.Counts[st]; n > 0 {
			counts = append(counts, fmt.Sprintf("%d %s", n, st))
		}
	}
	noun := "certificates"
	if s.Total == 1 {
		noun = "certificate"
	}
	line := fmt.Sprintf("summary: %d %s: %s", s.Total, noun, strings.Join(counts, ", "))
	if e := s.EarliestExpiry; e != nil {
		line += fmt.Sprintf("; earliest expiry %s (%s) ", dateOf(e.Expires), FormatResidualShort(time.Duration(e.ResidualSeconds)*time.Second))
		line += elide(e.File, max(TableWidth-runeLen(line), 12))
	}
	return line
}

func dateOf(rfc3339 string) string {
	if t, err := time.Parse(time.RFC3339, rfc3339); err == nil {
		return t.UTC().Format(time.DateOnly)
	}
	return rfc3339
}

// Render writes rows to w in format f. Unless all is set, the table and text formats
// show Fold(rows); json and yaml always hold every row.
//
//   - table: a header and one aligned row per certificate (columns separated by at
//     least two spaces; an empty cell shows "-"; subject and issuer by their common
//     name, shortened by shortName; every line at most TableWidth characters), then, after a blank line, one
//     "<file>: <STATUS>: <message>" line for each row that carries a message (the
//     reason of every MISSING and ERROR row), then the summary line.
//   - text: one line per certificate, "<file>: <STATUS>; subject …; issuer …; usages …;
//     expires … (in …)", and "<file>: MISSING; <message>" or "<file>: ERROR; <message>"
//     for a missing or unreadable file, then the summary line.
//   - json: an indented Report object.
//   - yaml: the same object in YAML.
func Render(w io.Writer, rows []Row, f Format, all bool) error {
	if rows == nil {
		rows = []Row{}
	}
	shown := rows
	if !all {
		shown = Fold(rows)
	}
	switch f {
	case FormatTable:
		return renderTable(w, shown, Summarize(rows))
	case FormatText:
		return renderText(w, shown, Summarize(rows))
	case FormatJSON:
		b, err := json.MarshalIndent(Report{Certificates: rows, Summary: Summarize(rows)}, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	case FormatYAML:
		b, err := yaml.Marshal(Report{Certificates: rows, Summary: Summarize(rows)})
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

// commonName returns the CN of a distinguished name as Name.String prints it, or the
// whole name when it has none.
func commonName(dn string) string {
	for _, part := range strings.Split(dn, ",") {
		if cn, ok := strings.CutPrefix(part, "CN="); ok {
			return cn
		}
	}
	return dn
}

// shortName fits a subject or issuer common name into n runes for the table. A name
// that fits is kept. A CA name of kpki's form <prefix>-<family>-<role>@<unix time>
// ("kpki-request-header-root@1796194155") first loses the "kpki-" prefix, then the middle
// of its family, always keeping the role and the time: the rows of two generations of a
// CA, or of a root and its intermediate, stay apart. Any other name is cut in its middle.
func shortName(cn string, n int) string {
	if runeLen(cn) <= n {
		return cn
	}
	at := strings.LastIndex(cn, "@")
	if at <= 0 || !allDigits(cn[at+1:]) {
		return elide(cn, n)
	}
	name, stamp := cn[:at], cn[at:]
	if trimmed, ok := strings.CutPrefix(name, "kpki-"); ok && trimmed != "" {
		name = trimmed
		if runeLen(name)+len(stamp) <= n {
			return name + stamp
		}
	}
	keep := stamp
	if i := strings.LastIndex(name, "-"); i > 0 {
		keep = name[i:] + stamp
		name = name[:i]
	}
	room := n - runeLen(keep) - 1
	if room < 1 {
		return elide(cn, n)
	}
	r := []rune(name)
	if len(r) > room {
		r = r[:room]
	}
	return string(r) + "…" + keep
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// elide shortens s to n runes by replacing its middle with "…" (both ends carry
// meaning: a CA's name and its timestamp, a file's dir and its name).
func elide(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	if n < 2 {
		return string(r[:n])
	}
	head := (n - 1) / 2
	tail := n - 1 - head
	return string(r[:head]) + "…" + string(r[len(r)-tail:])
}

// shortFile fits a file name into n runes for the table: a directory that the base name
// repeats is dropped first ("kube-scheduler/kube-scheduler.crt" as "…/kube-scheduler.crt"),
// then the middle of the name is cut, which keeps both the "client-" or "serving-" prefix
// (or the "etcd/" directory) and the end of the name.
func shortFile(name string, n int) string {
	if runeLen(name) <= n {
		return name
	}
	if dir, base, ok := strings.Cut(name, "/"); ok && strings.HasPrefix(base, dir) {
		if runeLen(base)+2 <= n {
			return "…/" + base
		}
		return elide(base, n)
	}
	return elide(name, n)
}

// serverTLSPrefix is left out of the table's file names: a server file is named
// relative to the tls dir, an agent file as agent/….
const serverTLSPrefix = "server/tls/"

func runeLen(s string) int { return utf8.RuneCountInString(s) }

func renderTable(w io.Writer, rows []Row, sum Summary) error {
	lines := [][]string{TableHeader}
	for _, r := range rows {
		c := []string{cell(r.Service), cell(strings.TrimPrefix(r.File, serverTLSPrefix)), "-", "-", "-", "-", string(r.Status)}
		if !isProblem(r) {
			c[2] = cell(commonName(r.Subject))
			c[3] = cell(commonName(r.Issuer))
			c[4] = cell(dateOf(r.Expires))
			c[5] = FormatResidualShort(time.Duration(r.ResidualSeconds) * time.Second)
		}
		lines = append(lines, c)
	}
	widths := make([]int, len(TableHeader))
	for _, l := range lines {
		for i, c := range l {
			widths[i] = max(widths[i], runeLen(c))
		}
	}
	// Shrink the widest of the file, subject and issuer columns until a row fits.
	const sep = 2
	total := func() int {
		n := sep * (len(widths) - 1)
		for _, x := range widths {
			n += x
		}
		return n
	}
	// Each column's share above its floor shrinks first.
	floor := map[int]int{1: 23, 2: 23, 3: 23}
	for total() > TableWidth {
		widest := -1
		for _, i := range []int{1, 2, 3} {
			if widths[i] > len(TableHeader[i]) && (widest < 0 || widths[i]-floor[i] > widths[widest]-floor[widest]) {
				widest = i
			}
		}
		if widest < 0 {
			break
		}
		widths[widest]--
	}
	var b strings.Builder
	for _, l := range lines {
		b.Reset()
		for i, c := range l {
			switch i {
			case 1:
				c = shortFile(c, widths[i])
			case 2, 3:
				c = shortName(c, widths[i])
			default:
				c = elide(c, widths[i])
			}
			b.WriteString(c)
			if i < len(l)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-runeLen(c)+sep))
			}
		}
		if _, err := fmt.Fprintln(w, strings.TrimRight(b.String(), " ")); err != nil {
			return err
		}
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
	_, err := fmt.Fprintln(w, sum.Line())
	return err
}

// isProblem reports whether r stands for a file rather than a certificate.
func isProblem(r Row) bool { return r.Status == StatusError || r.Status == StatusMissing }

func renderText(w io.Writer, rows []Row, sum Summary) error {
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
	_, err := fmt.Fprintln(w, sum.Line())
	return err
}
