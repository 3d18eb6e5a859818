package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestWriteErrorRoundTrip: what the supervisor answers with WriteError is what the
// client decodes, and "errors" is absent unless there is a list.
func TestWriteErrorRoundTrip(t *testing.T) {
	for _, b := range []ErrorBody{
		{Error: "invalid credentials", ID: "0123456789abcdef"},
		{Error: "rotate-ca checks failed", ID: "fedcba9876543210", Errors: []string{"server-ca.crt: expired", "service.key: missing"}},
	} {
		rec := httptest.NewRecorder()
		WriteError(rec, http.StatusConflict, b)
		if rec.Code != http.StatusConflict {
			t.Errorf("status %d, want %d", rec.Code, http.StatusConflict)
		}
		if ct := rec.Header().Get(HeaderContentType); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		body := rec.Body.String()
		if strings.Contains(body, `"errors"`) != (len(b.Errors) > 0) {
			t.Errorf("body %s: \"errors\" present with a list of %d", body, len(b.Errors))
		}
		se := Reply{Status: rec.Code, Body: rec.Body.Bytes()}.StatusError()
		if se.Code != http.StatusConflict || se.Body.Error != b.Error || se.Body.ID != b.ID || strings.Join(se.Body.Errors, "|") != strings.Join(b.Errors, "|") {
			t.Errorf("decoded %+v, want %+v", se, b)
		}
		if want := b.Error + " (server error id " + b.ID + ")"; se.Error() != want {
			t.Errorf("error %q, want %q", se.Error(), want)
		}
	}
}

func TestWriteJSON(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteJSON(rec, TokenRotateResponse{Token: "K10abc::server:pw"})
	if rec.Code != http.StatusOK || rec.Header().Get(HeaderContentType) != "application/json" || rec.Body.String() != `{"token":"K10abc::server:pw"}`+"\n" {
		t.Errorf("%d %q %q", rec.Code, rec.Header().Get(HeaderContentType), rec.Body.String())
	}
}
