package httplimit

import (
	"net/http"
	"testing"
	"time"
)

func TestServerDefaults(t *testing.T) {
	h := http.NotFoundHandler()
	srv := Limits{}.Server(h)
	d := Default()
	if srv.ReadHeaderTimeout != d.ReadHeaderTimeout || srv.ReadTimeout != d.ReadTimeout || srv.WriteTimeout != d.WriteTimeout ||
		srv.IdleTimeout != d.IdleTimeout || srv.MaxHeaderBytes != d.MaxHeaderBytes {
		t.Errorf("zero Limits gave %+v, want the defaults %+v", srv, d)
	}
	for name, v := range map[string]time.Duration{"ReadHeaderTimeout": d.ReadHeaderTimeout, "ReadTimeout": d.ReadTimeout,
		"WriteTimeout": d.WriteTimeout, "IdleTimeout": d.IdleTimeout} {
		if v <= 0 || v > 5*time.Minute {
			t.Errorf("default %s = %v, want a bound of at most 5 minutes", name, v)
		}
	}
	if d.MaxHeaderBytes <= 0 || d.MaxHeaderBytes > 1<<20 {
		t.Errorf("default MaxHeaderBytes = %d", d.MaxHeaderBytes)
	}
	if d.ReadHeaderTimeout > d.ReadTimeout {
		t.Errorf("ReadHeaderTimeout %v above ReadTimeout %v", d.ReadHeaderTimeout, d.ReadTimeout)
	}
}

func TestServerKeepsSetFields(t *testing.T) {
	srv := Limits{ReadHeaderTimeout: 200 * time.Millisecond, MaxHeaderBytes: 4096}.Server(nil)
	if srv.ReadHeaderTimeout != 200*time.Millisecond || srv.MaxHeaderBytes != 4096 {
		t.Errorf("set fields lost: %+v", srv)
	}
	if srv.ReadTimeout != Default().ReadTimeout || srv.IdleTimeout != Default().IdleTimeout || srv.WriteTimeout != Default().WriteTimeout {
		t.Errorf("unset fields not defaulted: %+v", srv)
	}
}
