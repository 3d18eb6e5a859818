package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/rollout"
)

// statusTimeout bounds the write of this server's status.
const statusTimeout = 10 * time.Second

// reportStatus records in the datastore the CA generation this server runs and the
// expiry of its certificates, for `kpki certificate rotate-ca --status`. It is called
// once the server is ready and after every pass that may have changed its PKI files; a
// failure is logged and changes nothing else.
func (s *Server) reportStatus() {
	if s.store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	if err := s.writeStatus(ctx); err != nil {
		s.log.Warn("could not record this server's CA generation in the datastore", "error", err)
	}
}

func (s *Server) writeStatus(ctx context.Context) error {
	rep, err := s.ownStatus()
	if err != nil {
		return err
	}
	data, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return s.store.Put(ctx, rollout.Key(rep.Node), data)
}

// ownStatus is this server's report: the generation of the CAs it loaded and the
// first certificate of each of its CA and leaf files.
func (s *Server) ownStatus() (rollout.Report, error) {
	rep := rollout.Report{Node: s.r.nodeName, Role: rollout.RoleServer, ReportedAt: s.clock.Now().UTC()}
	signers := map[certs.CAID]*x509.Certificate{}
	for id, ca := range s.caSet() {
		signers[id] = ca.Cert
	}
	var err error
	if rep.Generation, err = certs.Generation(signers); err != nil {
		return rep, err
	}
	if rep.ServerGeneration, err = certs.ServerGeneration(signers); err != nil {
		return rep, err
	}
	rep.Certificates = rollout.Certificates(s.layout.Root, s.certFiles(), datadir.FirstCert)
	return rep, nil
}

// runStatus reports this server's status, then keeps kpki_ca_generation_nodes equal
// to the stored reports of every node until ctx ends.
func (s *Server) runStatus(ctx context.Context) {
	s.reportStatus()
	for ctx.Err() == nil {
		s.watchStatus(ctx)
		t := s.clock.NewTicker(time.Second)
		select {
		case <-ctx.Done():
		case <-t.C():
		}
		t.Stop()
	}
}

// watchStatus reads every stored report and follows their changes until the watch
// ends, updating the gauge after each.
func (s *Server) watchStatus(ctx context.Context) {
	kvs, rev, err := s.store.GetPrefix(ctx, rollout.KeyPrefix)
	if err != nil {
		return
	}
	reports := map[string]rollout.Report{}
	for _, kv := range kvs {
		if r, err := rollout.Parse(kv.Key, kv.Value); err == nil {
			reports[kv.Key] = r
		}
	}
	s.setGenerationGauge(reports)
	for ev := range s.store.WatchPrefix(ctx, rollout.KeyPrefix, rev+1) {
		if ev.Deleted {
			delete(reports, ev.Key)
		} else {
			v, _, err := s.store.Get(ctx, ev.Key)
			switch {
			case errors.Is(err, datastore.ErrNotFound):
				delete(reports, ev.Key)
			case err != nil:
				return
			default:
				if r, err := rollout.Parse(ev.Key, v); err == nil {
					reports[ev.Key] = r
				} else {
					delete(reports, ev.Key)
				}
			}
		}
		s.setGenerationGauge(reports)
	}
}

func (s *Server) setGenerationGauge(reports map[string]rollout.Report) {
	g := s.metrics.CAGenerationNodes
	g.Reset()
	for k, n := range rollout.Count(reports) {
		g.WithLabelValues(k.Generation, k.Role).Set(float64(n))
	}
}
