package handlers

import (
	"errors"
	"net/http"
	"time"

	"github.com/kpki/kpki/internal/datastore"
)

// datastoreRetryAfter is how long a 503 asks the client to wait before it repeats the
// request: about one leader election.
const datastoreRetryAfter = 2 * time.Second

// datastoreUnavailable reports whether err says the datastore did not answer (it gave
// up after its retries, or etcd answered with a leader-change error), and the message a
// client gets for it.
func datastoreUnavailable(err error) (public error, ok bool) {
	switch {
	case errors.Is(err, datastore.ErrNoQuorum):
		return datastore.ErrNoQuorum, true
	case datastore.Transient(err):
		return datastore.ErrUnavailable, true
	}
	return nil, false
}

// datastoreError answers a failed request like the supervisor's Error, except that a 500
// caused by a datastore that did not answer becomes a 503 with Retry-After and the error
// "datastore unavailable (no quorum)" (or "datastore unavailable"); the full error is
// logged with the request's error id.
func (s *API) datastoreError(w http.ResponseWriter, r *http.Request, code int, err error) {
	if code == http.StatusInternalServerError {
		if public, ok := datastoreUnavailable(err); ok {
			s.Sup.Unavailable(w, r, public, err, datastoreRetryAfter)
			return
		}
	}
	s.Sup.Error(w, r, code, err)
}
