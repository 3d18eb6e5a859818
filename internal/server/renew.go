package server

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/kpki/kpki/internal/certs"
)

// renewLoop re-checks every leaf on each tick of the renewal interval and renews, in
// place, those that entered the renewal window; the supervisor picks up its new
// certificate for the next connection. It first logs the CAs close to expiry, as every
// pass does.
func (s *Server) renewLoop(ctx context.Context) {
	s.warnExpiringCAs()
	t := s.clock.NewTicker(s.cfg.RenewInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			if err := s.RenewNow(); err != nil {
				s.log.Error("certificate renewal failed; will retry", "error", err)
			}
		}
	}
}

// RenewNow runs one renewal pass, then logs the CAs close to expiry (once each). While
// a failed live apply is pending, the pass is that apply instead: renewing under the
// CAs still loaded would sign leaves under CAs the disk may no longer hold.
func (s *Server) RenewNow() error {
	if s.applyPending.Load() {
		s.RecordChanged()
		return nil
	}
	s.pkiMu.Lock()
	changed, err := s.ensureLeaves("renewer")
	if err == nil && len(changed) > 0 {
		err = s.writeDerived()
	}
	if err == nil && len(changed) > 0 {
		// Under pkiMu: a live apply cannot swap in a newer certificate in between.
		err = s.loadServingCert()
	}
	s.pkiMu.Unlock()
	s.warnExpiringCAs()
	if err != nil {
		return err
	}
	s.reportStatus()
	return nil
}

// caExpiry is where one CA stands against the CA warning window.
type caExpiry struct {
	file string
	ca   *x509.Certificate
	// end is the earliest NotAfter of the CA's signing chain, and limit the
	// certificate that expires then (the CA itself, or a certificate of its bundle).
	end   time.Time
	limit *x509.Certificate
	// expiring is set when end is within the window.
	expiring bool
}

// caWarnWindow is how long before its chain ends a CA is warned about: --ca-warn-days,
// or the renewal window when that is longer, because leaves capped at a chain that
// ends within the renewal window can no longer be renewed (certs.Plan keeps them).
func (s *Server) caWarnWindow() time.Duration {
	return max(s.r.caWarn, s.r.renewBefore)
}

// caExpiries evaluates every loaded CA at the current time.
func (s *Server) caExpiries() []caExpiry {
	now := s.clock.Now()
	window := s.caWarnWindow()
	var out []caExpiry
	cas := s.caSet()
	for _, spec := range certs.CAs {
		ca := cas[spec.ID]
		if ca == nil {
			continue
		}
		crt, _ := s.caPaths(spec)
		end, limit := ca.ChainExpiry()
		out = append(out, caExpiry{file: crt, ca: ca.Cert, end: end, limit: limit,
			expiring: !now.Add(window).Before(end)})
	}
	return out
}

// updateCAExpiryMetrics sets kpki_ca_chain_expiration_seconds and kpki_ca_expiring for
// every loaded CA.
func (s *Server) updateCAExpiryMetrics() {
	s.metrics.CAChainExpiry.Reset()
	s.metrics.CAExpiring.Reset()
	for _, e := range s.caExpiries() {
		s.metrics.CAChainExpiry.WithLabelValues(e.file).Set(float64(e.end.Unix()))
		v := 0.0
		if e.expiring {
			v = 1
		}
		s.metrics.CAExpiring.WithLabelValues(e.file).Set(v)
	}
}

// warnExpiringCAs logs one line per CA whose chain ends within the CA warning window:
// a warning while it is still valid, an error once it has expired.
func (s *Server) warnExpiringCAs() {
	list := s.caExpiries()
	now := s.clock.Now()
	windowDays := int(s.caWarnWindow() / (24 * time.Hour))
	for _, e := range list {
		if !e.expiring {
			continue
		}
		left := e.end.Sub(now)
		attrs := []any{"file", e.file, "subject", e.ca.Subject.String(), "expires", e.end.UTC(),
			"days-left", int(left.Hours()) / 24, "warn-days", windowDays}
		if !e.limit.Equal(e.ca) {
			attrs = append(attrs, "expiring-certificate", e.limit.Subject.String())
		}
		if left <= 0 {
			s.log.Error("CA certificate has expired: nothing it signed is trusted any more and it signs nothing; rotate the CA (kpki certificate rotate-ca)", attrs...)
			continue
		}
		s.log.Warn("CA certificate expires within the CA warning window; leaves it signs expire with it and cannot be renewed past it; rotate the CA (kpki certificate rotate-ca)", attrs...)
	}
}
