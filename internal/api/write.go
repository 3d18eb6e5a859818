package api

import (
	"encoding/json"
	"net/http"
)

// WriteError answers b as JSON with status code; Reply.StatusError decodes it.
func WriteError(w http.ResponseWriter, code int, b ErrorBody) {
	w.Header().Set(HeaderContentType, ContentTypeJSON)
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(b)
}

// WriteJSON answers v as JSON with status 200.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set(HeaderContentType, ContentTypeJSON)
	_ = json.NewEncoder(w).Encode(v)
}
