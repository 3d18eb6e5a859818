package handlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/supervisor"
)

func TestDatastoreError(t *testing.T) {
	s := &API{Sup: supervisor.New(supervisor.Config{Log: quietLog()})}
	noQuorum := &datastore.UnavailableError{Op: "create", Key: "/kpki/node-passwords/n1", NoQuorum: true, Attempts: 9, Err: rpctypes.ErrNoLeader}
	timedOut := &datastore.UnavailableError{Op: "get", Key: "/bootstrap/x", Attempts: 12, Err: rpctypes.ErrTimeout}
	for _, tc := range []struct {
		name      string
		code      int
		err       error
		wantCode  int
		wantError string
	}{
		{"no quorum", http.StatusInternalServerError, noQuorum, http.StatusServiceUnavailable, "datastore unavailable (no quorum)"},
		{"no quorum, wrapped", http.StatusInternalServerError, fmt.Errorf("read bootstrap data: %w", noQuorum), http.StatusServiceUnavailable, "datastore unavailable (no quorum)"},
		{"gave up on timeouts", http.StatusInternalServerError, timedOut, http.StatusServiceUnavailable, "datastore unavailable"},
		{"an etcd leader-change error not retried", http.StatusInternalServerError, fmt.Errorf("member list: %w", rpctypes.ErrTimeoutDueToLeaderFail), http.StatusServiceUnavailable, "datastore unavailable"},
		{"conflict", http.StatusConflict, errors.New("the bootstrap data changed concurrently"), http.StatusConflict, "the bootstrap data changed concurrently"},
		{"other server error", http.StatusInternalServerError, errors.New("node password record is malformed"), http.StatusInternalServerError, "node password record is malformed"},
		{"a text that only reads like a timeout", http.StatusInternalServerError, errors.New("etcdserver: request timed out"), http.StatusInternalServerError, "etcdserver: request timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			s.datastoreError(w, httptest.NewRequest(http.MethodPost, "/v1-kpki/client-kubelet.crt", nil), tc.code, tc.err)
			if w.Code != tc.wantCode {
				t.Errorf("status %d, want %d", w.Code, tc.wantCode)
			}
			var body struct{ Error, ID string }
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.ID == "" {
				t.Fatalf("body %q is not a JSON error with an id (%v)", w.Body, err)
			}
			if body.Error != tc.wantError {
				t.Errorf("error %q, want %q", body.Error, tc.wantError)
			}
			if got := w.Header().Get("Retry-After"); (got != "") != (tc.wantCode == http.StatusServiceUnavailable) {
				t.Errorf("Retry-After %q with status %d", got, w.Code)
			}
		})
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
