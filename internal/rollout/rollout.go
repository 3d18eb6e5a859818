// Package rollout is the cluster-wide view of a CA rotation: what each node reports of
// the CA generation and certificates it holds (Report), how a report is checked before
// it is stored, and how the stored reports compare with the CA generation of the
// datastore's bootstrap record (Aggregate). It is pure: reports and the current
// generation in, a Status out; the server stores the reports and serves the status.
package rollout

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/node"
)

// KeyPrefix holds one report per node, KeyPrefix + node name: the JSON of a Report.
const KeyPrefix = "/kpki/status/nodes/"

// Key is the datastore key of the report of node.
func Key(node string) string { return KeyPrefix + node }

// Roles of a node.
const (
	RoleServer = "server"
	RoleAgent  = "agent"
)

// States of a node in a Status.
const (
	// StateCurrent: the node holds the CA generation of the datastore.
	StateCurrent = "current"
	// StatePending: the node reported another generation; it has not taken the
	// rotation yet.
	StatePending = "pending"
	// StateUnknown: the node is registered but has never reported.
	StateUnknown = "unknown"
)

// Bounds of a report.
const (
	MaxCertificates = 32
	MaxFileLen      = 256
	// MaxBody bounds the body of a report sent to the server.
	MaxBody = 16 << 10
)

// Cert is one certificate file a node holds and the expiry of its first certificate.
type Cert struct {
	// File is the path relative to the node's data dir, with "/".
	File     string    `json:"file"`
	NotAfter time.Time `json:"not_after"`
}

// Report is what a node holds, as stored under Key(Node).
type Report struct {
	Node string `json:"node"`
	// Role is set by the server that stores the report, never taken from an agent.
	Role string `json:"role"`
	// Generation is certs.Generation of the node's CA files.
	Generation string `json:"generation"`
	// ServerGeneration is certs.ServerGeneration, reported by servers only.
	ServerGeneration string `json:"server_generation,omitempty"`
	Certificates     []Cert `json:"certificates"`
	// ReportedAt is the time the server stored the report (its clock).
	ReportedAt time.Time `json:"reported_at"`
}

// Check validates what an agent sent: a valid node name, a generation of the form
// certs.Generation makes, no server generation, at most MaxCertificates files, each
// named by a relative path of at most MaxFileLen printable characters and with an
// expiry. Role and ReportedAt are not checked: the server sets them.
func (r Report) Check() error {
	var errs []error
	if !node.ValidName(r.Node) {
		errs = append(errs, fmt.Errorf("node %q is not a valid node name", clip(r.Node)))
	}
	if !ValidGeneration(r.Generation) {
		errs = append(errs, fmt.Errorf("generation %q is not %d lowercase hex characters", clip(r.Generation), certs.GenerationLen))
	}
	if r.ServerGeneration != "" {
		errs = append(errs, errors.New("server_generation is reported by servers only"))
	}
	if len(r.Certificates) > MaxCertificates {
		errs = append(errs, fmt.Errorf("%d certificates, at most %d", len(r.Certificates), MaxCertificates))
	} else {
		for i, c := range r.Certificates {
			if !validFile(c.File) {
				errs = append(errs, fmt.Errorf("certificates[%d]: file %q is not a relative path of at most %d printable characters", i, clip(c.File), MaxFileLen))
			}
			if c.NotAfter.IsZero() {
				errs = append(errs, fmt.Errorf("certificates[%d]: not_after is missing", i))
			}
		}
	}
	return errors.Join(errs...)
}

// Certificates lists the expiry of the first certificate of each of files, named
// relative to root with "/". read returns a file's content (nil for a missing file);
// a file that cannot be read or parsed is left out.
func Certificates(root string, files []string, first func(string) *x509.Certificate) []Cert {
	out := []Cert{}
	for _, f := range files {
		c := first(f)
		if c == nil {
			continue
		}
		rel, err := filepath.Rel(root, f)
		if err != nil {
			continue
		}
		out = append(out, Cert{File: filepath.ToSlash(rel), NotAfter: c.NotAfter.UTC()})
	}
	return out
}

// ValidGeneration reports whether g has the form of a CA generation.
func ValidGeneration(g string) bool {
	if len(g) != certs.GenerationLen {
		return false
	}
	for _, c := range g {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func validFile(f string) bool {
	if f == "" || len(f) > MaxFileLen || strings.HasPrefix(f, "/") {
		return false
	}
	for _, c := range f {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	for _, part := range strings.Split(f, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Current is the CA generation of the datastore's bootstrap record.
type Current struct {
	Generation       string `json:"generation"`
	ServerGeneration string `json:"server_generation"`
}

// CurrentOf computes the Current of the CA certificate files of a bootstrap record,
// keyed by CA; every CA of the table must be there.
func CurrentOf(files map[certs.CAID][]byte) (Current, error) {
	signers, err := certs.Signers(files)
	if err != nil {
		return Current{}, err
	}
	g, err := certs.Generation(signers)
	if err != nil {
		return Current{}, err
	}
	sg, err := certs.ServerGeneration(signers)
	if err != nil {
		return Current{}, err
	}
	return Current{Generation: g, ServerGeneration: sg}, nil
}

// Holds reports whether r is on the generation cur: its generation, and for a server
// also its server generation.
func (cur Current) Holds(r Report) bool {
	if r.Generation != cur.Generation {
		return false
	}
	return r.Role != RoleServer || r.ServerGeneration == cur.ServerGeneration
}

// Node is one row of a Status.
type Node struct {
	Node       string `json:"node"`
	Role       string `json:"role"`
	Generation string `json:"generation"`
	State      string `json:"state"`
	// EarliestExpiry is the first expiry among the node's certificates and the file
	// holding it; nil when the node reported none (or never reported).
	EarliestExpiry *Cert `json:"earliest_expiry"`
	// LastSeen is the time of the node's last report; nil when it never reported.
	LastSeen     *time.Time `json:"last_seen"`
	Certificates []Cert     `json:"certificates"`
}

// Status is the rollout of the current CA generation over the cluster.
type Status struct {
	Current Current `json:"current"`
	// Nodes: servers first, then agents, each by name.
	Nodes []Node `json:"nodes"`
	// OnCurrent of Total nodes hold the current generation.
	OnCurrent int `json:"on_current"`
	Total     int `json:"total"`
	// Pending and Unknown name the nodes in those states.
	Pending []string `json:"pending"`
	Unknown []string `json:"unknown"`
}

// Aggregate compares every report with cur. servers and agents are the names
// registered in the datastore; a registered node without a report is StateUnknown,
// and a report of a node not registered (any more) is listed all the same.
func Aggregate(cur Current, reports []Report, servers, agents []string) Status {
	st := Status{Current: cur, Nodes: []Node{}, Pending: []string{}, Unknown: []string{}}
	seen := map[string]bool{}
	for _, r := range reports {
		if seen[r.Node] {
			continue
		}
		seen[r.Node] = true
		n := Node{Node: r.Node, Role: r.Role, Generation: r.Generation, State: StatePending,
			Certificates: append([]Cert{}, r.Certificates...)}
		if cur.Holds(r) {
			n.State = StateCurrent
		}
		if !r.ReportedAt.IsZero() {
			at := r.ReportedAt
			n.LastSeen = &at
		}
		for _, c := range r.Certificates {
			if n.EarliestExpiry == nil || c.NotAfter.Before(n.EarliestExpiry.NotAfter) {
				first := c
				n.EarliestExpiry = &first
			}
		}
		st.Nodes = append(st.Nodes, n)
	}
	for _, reg := range []struct {
		role  string
		names []string
	}{{RoleServer, servers}, {RoleAgent, agents}} {
		for _, name := range reg.names {
			if seen[name] {
				continue
			}
			seen[name] = true
			st.Nodes = append(st.Nodes, Node{Node: name, Role: reg.role, State: StateUnknown, Certificates: []Cert{}})
		}
	}
	sort.Slice(st.Nodes, func(i, j int) bool {
		a, b := st.Nodes[i], st.Nodes[j]
		if (a.Role == RoleServer) != (b.Role == RoleServer) {
			return a.Role == RoleServer
		}
		return a.Node < b.Node
	})
	for _, n := range st.Nodes {
		st.Total++
		switch n.State {
		case StateCurrent:
			st.OnCurrent++
		case StatePending:
			st.Pending = append(st.Pending, n.Node)
		default:
			st.Unknown = append(st.Unknown, n.Node)
		}
	}
	return st
}

// Summary is the one line of a Status: "N of M nodes on the current CA generation",
// then the pending and the unknown nodes when there are any.
func (st Status) Summary() string {
	s := fmt.Sprintf("%d of %d nodes on the current CA generation", st.OnCurrent, st.Total)
	if len(st.Pending) > 0 {
		s += "; pending: " + strings.Join(st.Pending, ", ")
	}
	if len(st.Unknown) > 0 {
		s += "; not reported: " + strings.Join(st.Unknown, ", ")
	}
	return s
}

// GenerationRole is a label pair of kpki_ca_generation_nodes.
type GenerationRole struct {
	Generation, Role string
}

// Count is how many reports hold each generation, per role.
func Count(reports map[string]Report) map[GenerationRole]int {
	out := map[GenerationRole]int{}
	for _, r := range reports {
		out[GenerationRole{r.Generation, r.Role}]++
	}
	return out
}

// Parse decodes the report stored at key; one that does not decode, or is not the
// report of the node its key names, is an error.
func Parse(key string, data []byte) (Report, error) {
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return Report{}, fmt.Errorf("status record %s: %w", key, err)
	}
	if r.Node == "" || Key(r.Node) != key {
		return Report{}, fmt.Errorf("status record %s does not hold the report of that node", key)
	}
	return r, nil
}
