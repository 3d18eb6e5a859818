package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/metrics"
)

// checkCA fetches the server's CAs as a pass does, over TLS verified against the roots
// this agent trusts (fetchTrust), and returns the agent's files that would change: its
// copy of each CA and the stored roots, compared with what the pass would write for
// them. It writes nothing. A CA the agent does not follow is an error wrapping
// ErrCAUntrusted.
func (a *Agent) checkCA(ctx context.Context) ([]string, error) {
	if a.trust == nil {
		return []string{a.layout.Agent(TrustFile)}, nil
	}
	tr, err := a.fetchTrust(ctx)
	if err != nil {
		return nil, err
	}
	c, err := a.client(tr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	clientPEM, clientList, err := a.getBundle(ctx, c, api.PathClientCA)
	if err != nil {
		return nil, err
	}
	cas := agentCAs(tr, clientPEM, clientList)
	want := map[string][]byte{a.layout.Agent(TrustFile): tr.Store()}
	order := []string{a.layout.Agent(TrustFile)}
	for _, spec := range certs.CAs {
		if !spec.Agent {
			continue
		}
		f, ok := cas[spec.ID]
		if !ok {
			return nil, fmt.Errorf("%s: not a CA the agent fetches", spec.ID)
		}
		path := a.layout.Agent(f.name)
		want[path] = f.data
		order = append(order, path)
	}
	var changed []string
	for _, path := range order {
		have, err := datadir.ReadOptional(path)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(have, want[path]) {
			changed = append(changed, path)
		}
	}
	return changed, nil
}

// caChanged runs a CA check, counts and logs it, and reports whether the next pass is
// due at once: the CAs changed or the server presents a CA this agent does not trust
// (the pass then refuses it and says so). A failed check is logged once per streak of
// failures and changes nothing: the passes keep their schedule.
func (a *Agent) caChanged(ctx context.Context) bool {
	changed, err := a.checkCA(ctx)
	if ctx.Err() != nil {
		return false
	}
	untrustedCA := errors.Is(err, ErrCAUntrusted)
	if err != nil && !untrustedCA {
		a.metrics.CAChecks.WithLabelValues(metrics.CACheckFailed).Inc()
		if !a.checkFailing {
			a.checkFailing = true
			a.log.Warn("could not check the server's CAs; certificate passes keep their schedule",
				"server", a.base.String(), "error", err, "check-interval", a.cfg.CACheckInterval)
		}
		return false
	}
	if a.checkFailing {
		a.checkFailing = false
		a.log.Info("the server's CAs can be checked again", "server", a.base.String())
	}
	switch {
	case untrustedCA:
		a.metrics.CAChecks.WithLabelValues(metrics.CACheckChanged).Inc()
		a.log.Info("the server presents a CA this agent does not trust; running a certificate pass now",
			"server", a.base.String(), "error", err)
		return true
	case len(changed) > 0:
		a.metrics.CAChecks.WithLabelValues(metrics.CACheckChanged).Inc()
		a.log.Info("the server's CAs differ from this agent's copies; running a certificate pass now",
			"server", a.base.String(), "files", changed)
		return true
	}
	a.metrics.CAChecks.WithLabelValues(metrics.CACheckUnchanged).Inc()
	a.log.Debug("the server's CAs are unchanged", "server", a.base.String())
	return false
}

// waitNextPass waits d, until the next pass is due, and reports false when ctx ended
// first. With check, it checks the server's CAs every CA check interval meanwhile and
// ends the wait early when they changed.
func (a *Agent) waitNextPass(ctx context.Context, d time.Duration, check bool) bool {
	every := a.cfg.CACheckInterval
	if !check || every <= 0 || every >= d {
		return clock.Sleep(ctx, a.clock, d) == nil
	}
	due := a.clock.Now().Add(d)
	for range d/every + 1 {
		left := due.Sub(a.clock.Now())
		if left <= 0 {
			break
		}
		if clock.Sleep(ctx, a.clock, min(every, left)) != nil {
			return false
		}
		if !a.clock.Now().Before(due) || a.caChanged(ctx) {
			break
		}
	}
	return ctx.Err() == nil
}
