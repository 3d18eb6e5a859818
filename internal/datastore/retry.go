package datastore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrNoQuorum means the datastore cannot commit or serve a consistent read: its etcd
// member has had no leader for longer than an election takes, because a majority of
// the members is down or cut off.
var ErrNoQuorum = errors.New("datastore unavailable (no quorum)")

// ErrUnavailable means the datastore did not answer within the retry budget.
// Every ErrNoQuorum error is also an ErrUnavailable error.
var ErrUnavailable = errors.New("datastore unavailable")

// UnavailableError is an operation given up on because the datastore kept failing with
// transient errors (errors.Is ErrUnavailable, and ErrNoQuorum when it had no leader).
type UnavailableError struct {
	Op, Key  string
	NoQuorum bool
	Attempts int
	Waited   time.Duration
	// Err is the error of the last attempt.
	Err error
}

func (e *UnavailableError) Error() string {
	what := ErrUnavailable.Error()
	if e.NoQuorum {
		what = ErrNoQuorum.Error()
	}
	return fmt.Sprintf("datastore %s %s: %s: %d attempts in %s, the last failed with: %v",
		e.Op, e.Key, what, e.Attempts, e.Waited.Round(time.Millisecond), e.Err)
}

// Is makes errors.Is(err, ErrUnavailable) and, without quorum, errors.Is(err, ErrNoQuorum) hold.
func (e *UnavailableError) Is(target error) bool {
	return target == ErrUnavailable || (e.NoQuorum && target == ErrNoQuorum)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// retryPolicy bounds the retries of one datastore operation.
type retryPolicy struct {
	// attempt is the deadline of one attempt: a request forwarded to a leader that just
	// died gets no answer, and is sent again once a new leader is elected.
	attempt time.Duration
	// total bounds the whole operation: no attempt starts after it.
	total time.Duration
	// noLeader is how long the member may go without a leader before the operation fails
	// with ErrNoQuorum: longer than an election of a cluster that still has a majority.
	noLeader time.Duration
	// minBackoff doubles up to maxBackoff between attempts.
	minBackoff, maxBackoff time.Duration
}

// defaultRetry rides out a leader election (about one to two seconds with etcd's default
// 1 s election timeout) and answers within a few seconds when there is no quorum.
var defaultRetry = retryPolicy{
	attempt:    2 * time.Second,
	total:      10 * time.Second,
	noLeader:   3 * time.Second,
	minBackoff: 50 * time.Millisecond,
	maxBackoff: 500 * time.Millisecond,
}

// failure is what the error of one attempt says about repeating it.
type failure int

const (
	// permanent: repeating cannot help (a refused compare, a bad request, the caller's
	// context ended).
	permanent failure = iota
	// rejected: the member has no leader and refused the request before processing it, so
	// repeating is safe for every operation.
	rejected
	// ambiguous: the request timed out or was cut off across a leader change; it may have
	// been applied, so only operations that recognise their own earlier write repeat it.
	ambiguous
)

// transientEtcdErrors are the errors etcd answers while a leader is lost or being elected.
var transientEtcdErrors = []error{
	rpctypes.ErrTimeout,
	rpctypes.ErrTimeoutDueToLeaderFail,
	rpctypes.ErrTimeoutDueToConnectionLost,
	rpctypes.ErrTimeoutWaitAppliedIndex,
	rpctypes.ErrLeaderChanged,
	rpctypes.ErrNotLeader,
	rpctypes.ErrTooManyRequests,
}

// classify sorts the error of an attempt made with the context attempt (a child of the
// caller's context with the attempt deadline).
// deadlineSkew is how close to an attempt's deadline a DeadlineExceeded answer of the
// member counts as that deadline.
const deadlineSkew = 250 * time.Millisecond

func classify(err error, attempt context.Context) failure {
	if err == nil {
		return permanent
	}
	if errors.Is(err, rpctypes.ErrNoLeader) {
		return rejected
	}
	for _, t := range transientEtcdErrors {
		if errors.Is(err, t) {
			return ambiguous
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		// The attempt's deadline; when it was the caller's, do sees the caller's context
		// ended and stops. etcd gets the deadline with the request and may answer
		// DeadlineExceeded a moment before the client's own timer fires.
		if errors.Is(attempt.Err(), context.DeadlineExceeded) {
			return ambiguous
		}
		if dl, ok := attempt.Deadline(); ok && time.Until(dl) < deadlineSkew {
			return ambiguous
		}
		return permanent
	}
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		return permanent // other etcd answers: compacted revision, request too large, auth
	}
	if status.Code(err) == codes.Unavailable {
		return ambiguous // the connection to the member failed or was closed
	}
	if status.Code(err) == codes.Canceled && attempt.Err() == nil {
		// Not the caller's cancellation: the client was closed under the attempt, as when
		// the store reconnects to a member restarted with new certificates. The next
		// attempt runs on the new client.
		return ambiguous
	}
	return permanent
}

// attemptContext derives the context of one attempt: the caller's context, bounded by the
// attempt deadline, with etcd's require-leader flag so that a member without a leader
// refuses at once instead of waiting for one.
func attemptContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(clientv3.WithRequireLeader(ctx), d)
}

// do runs attempt until it succeeds, fails permanently, or the retry budget is spent.
// again tells an attempt that an earlier one failed ambiguously and may have been
// applied: the attempt must then recognise its own write. Operations that cannot
// (repeatable is false) are repeated only when the member refused them unprocessed.
func (s *Store) do(ctx context.Context, op, key string, repeatable bool, attempt func(ctx context.Context, again bool) error) error {
	p := s.policy
	start := s.clock.Now()
	var leaderless time.Time
	again := false
	backoff := p.minBackoff
	for n := 1; ; n++ {
		actx, cancel := attemptContext(ctx, p.attempt)
		err := attempt(actx, again)
		kind := classify(err, actx)
		cancel()
		if err == nil || kind == permanent || ctx.Err() != nil {
			return err
		}
		now := s.clock.Now()
		switch kind {
		case rejected:
			if leaderless.IsZero() {
				leaderless = now
			}
			if now.Sub(leaderless) >= p.noLeader {
				return &UnavailableError{Op: op, Key: key, NoQuorum: true, Attempts: n, Waited: now.Sub(start), Err: err}
			}
		case ambiguous:
			if !repeatable {
				return err
			}
			again = true
		}
		if now.Add(backoff).Sub(start) > p.total {
			return &UnavailableError{Op: op, Key: key, NoQuorum: !leaderless.IsZero(), Attempts: n, Waited: now.Sub(start), Err: err}
		}
		if err := s.sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, p.maxBackoff)
	}
}

// Transient reports whether err is a datastore failure that may pass by itself: the
// datastore gave up (ErrUnavailable), or etcd answered with one of the errors of a
// leader change.
func Transient(err error) bool {
	if errors.Is(err, ErrUnavailable) {
		return true
	}
	if errors.Is(err, rpctypes.ErrNoLeader) {
		return true
	}
	for _, t := range transientEtcdErrors {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
