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
// threshold. Its exit code is 1.
type FailedError struct {
	Failed int
	Total  int
	FailOn FailOn
}

func (e *FailedError) Error() string {
	noun := "certificates"
	if e.Total == 1 {
		noun = "certificate"
	}
	return fmt.Sprintf("%d of %d %s failed the check (--fail-on %s)", e.Failed, e.Total, noun, e.FailOn)
}

// ExitCode is the process exit code for a failed check.
func (e *FailedError) ExitCode() int { return 1 }

// Check returns a *FailedError when any row fails threshold f, nil otherwise.
func Check(rows []Row, f FailOn) error {
	n := 0
	for _, r := range rows {
		if f.Fails(r.Status) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return &FailedError{Failed: n, Total: len(rows), FailOn: f}
}
