package server

import (
	"crypto/subtle"
	"fmt"
	"strings"
)

// PasswdEntry is one line of cred/passwd: password,user,user,role.
type PasswdEntry struct {
	Password string
	User     string
	UID      string
	Role     string
}

// Passwd is the parsed cred/passwd file.
type Passwd []PasswdEntry

// ParsePasswd parses the CSV passwd file. Errors name the line, never a password.
func ParsePasswd(data []byte) (Passwd, error) {
	var out Passwd
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 2 || f[0] == "" || f[1] == "" {
			return nil, fmt.Errorf("line %d: want password,user,user,role", i+1)
		}
		e := PasswdEntry{Password: f[0], User: f[1]}
		if len(f) > 2 {
			e.UID = f[2]
		}
		if len(f) > 3 {
			e.Role = f[3]
		}
		out = append(out, e)
	}
	return out, nil
}

// Find returns the entry of user.
func (p Passwd) Find(user string) (PasswdEntry, bool) {
	for _, e := range p {
		if e.User == user {
			return e, true
		}
	}
	return PasswdEntry{}, false
}

// Check reports in constant time (per entry) whether user has password.
func (p Passwd) Check(user, password string) bool {
	ok := false
	for _, e := range p {
		if e.User == user && subtle.ConstantTimeCompare([]byte(e.Password), []byte(password)) == 1 {
			ok = true
		}
	}
	return ok
}

// WithPassword returns a copy with user's password replaced.
func (p Passwd) WithPassword(user, password string) Passwd {
	out := append(Passwd(nil), p...)
	for i := range out {
		if out[i].User == user {
			out[i].Password = password
		}
	}
	return out
}

// Bytes renders the file.
func (p Passwd) Bytes() []byte {
	var b strings.Builder
	for _, e := range p {
		fmt.Fprintf(&b, "%s,%s,%s,%s\n", e.Password, e.User, e.UID, e.Role)
	}
	return []byte(b.String())
}
