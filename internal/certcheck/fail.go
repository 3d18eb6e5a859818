package certcheck

import (
	"fmt"
	"strings"
)

// FailOn is the --fail-on threshold.
type FailOn string

// Thresholds. FailNever is the default: the check always succeeds.
const (
	FailNever     FailOn = ""
	FailOnWarning FailOn = "warning"
	FailOnExpired FailOn = "expired"
)

// ParseFailOn checks a --fail-on value ("" means never).
func ParseFailOn(s string) (FailOn, error) {
	switch f := FailOn(strings.ToLower(s)); f {
	case FailNever, FailOnWarning, FailOnExpired:
		return f, nil
	}
	return "", fmt.Errorf("unknown --fail-on value %q; valid values: %s, %s", s, FailOnWarning, FailOnExpired)
}

// Fails reports whether a certificate of status s fails the check: with "warning"
// anything but OK, with "expired" anything but OK and WARNING. A MISSING or ERROR row
// (an expected file that does not exist or cannot be read) fails either threshold.
func (f FailOn) Fails(s Status) bool {
	switch f {
	case FailOnWarning:
		return s != StatusOK
	case FailOnExpired:
		return s != StatusOK && s != StatusWarning
	}
	return false
}

// FailedError is the error of a check that found certificates at or past the
// threshold. Its exit code is 1. Failed and Total count the rows the report showed (the
// folded table unless --all or -o json/yaml); AllFailed and AllTotal count every
// certificate of every file, which differ when a failing CA certificate is bundled in
// several files.
type FailedError struct {
	Failed    int
	Total     int
	AllFailed int
	AllTotal  int
	FailOn    FailOn
}

func (e *FailedError) Error() string {
	msg := fmt.Sprintf("%d of %d %s failed the check (--fail-on %s)", e.Failed, e.Total, plural(e.Total), e.FailOn)
	if e.AllFailed != e.Failed {
		msg += fmt.Sprintf("; counting each file's copy of a CA certificate, %d of %d (--all lists them)", e.AllFailed, e.AllTotal)
	}
	return msg
}

func plural(n int) string {
	if n == 1 {
		return "certificate"
	}
	return "certificates"
}

// ExitCode is the process exit code for a failed check.
func (e *FailedError) ExitCode() int { return 1 }

// Check returns a *FailedError when any row fails threshold f, nil otherwise. all says
// whether the report listed every row (--all, -o json, -o yaml) or the folded ones
// (Fold): the error counts the rows listed, and every certificate when that differs.
func Check(rows []Row, f FailOn, all bool) error {
	count := func(rs []Row) int {
		n := 0
		for _, r := range rs {
			if f.Fails(r.Status) {
				n++
			}
		}
		return n
	}
	n := count(rows)
	if n == 0 {
		return nil
	}
	e := &FailedError{Failed: n, Total: len(rows), AllFailed: n, AllTotal: len(rows), FailOn: f}
	if !all {
		shown := Fold(rows)
		e.Failed, e.Total = count(shown), len(shown)
	}
	return e
}
