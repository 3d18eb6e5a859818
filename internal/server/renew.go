package server

import (
	"context"
)

// renewLoop re-checks every leaf on each tick of the renewal interval and renews, in
// place, those that entered the renewal window; the supervisor picks up its new
// certificate for the next connection.
func (s *Server) renewLoop(ctx context.Context) {
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

// RenewNow runs one renewal pass.
func (s *Server) RenewNow() error {
	s.mu.Lock()
	changed, err := s.ensureLeaves("renewer")
	if err == nil && len(changed) > 0 {
		err = s.writeDerived()
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if len(changed) > 0 {
		return s.loadServingCert()
	}
	return nil
}
