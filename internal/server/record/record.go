// Package record is the bootstrap record in the datastore: found under the key named
// by the server password, encrypted with it (package bootstrap holds the format), read,
// compare-and-swapped, moved to a new key when the token is rotated. Next to it, at
// bootstrap.PreviousKeyName and under the same encryption, the record kept for
// rotate-ca --rollback: written in the same transaction as the record it was replaced
// in, moved with it. Own tracks which
// revisions of it this server wrote, so that the watch of /bootstrap/ tells its own
// changes from another server's.
package record

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/datastore"
)

// ErrDifferentToken is the refusal when the datastore holds another token's bootstrap data.
var ErrDifferentToken = errors.New("bootstrap data already found and encrypted with different token")

// Store is what the record needs of the datastore (datastore.Store, or an in-memory
// store in tests).
type Store interface {
	Get(ctx context.Context, key string) ([]byte, int64, error)
	Keys(ctx context.Context, prefix string) ([]string, error)
	Update(ctx context.Context, key string, value []byte, rev int64) (int64, error)
	UpdateWith(ctx context.Context, key string, value []byte, rev int64, side datastore.Side) (int64, error)
	ReplaceWith(ctx context.Context, oldKey string, rev int64, newKey string, value []byte, side datastore.Side) (int64, error)
}

// Seal encrypts rec under pw: the value stored at bootstrap.KeyName(pw).
func Seal(pw string, rec *bootstrap.Record) ([]byte, error) {
	plain, err := rec.Marshal()
	if err != nil {
		return nil, err
	}
	value, err := bootstrap.Encrypt(pw, plain)
	if err != nil {
		return nil, err
	}
	return []byte(value), nil
}

// Read fetches and decrypts the record of the server password pw and its revision; nil
// when the datastore holds none. A datastore that holds another token's record answers
// ErrDifferentToken. When the key of pw is missing, missing (if not nil) is asked
// first: it returns the password to look under instead, or "" to carry on.
func Read(ctx context.Context, st Store, pw string, missing func(context.Context) (string, error)) (*bootstrap.Record, int64, error) {
	if pw == "" {
		keys, err := st.Keys(ctx, bootstrap.KeyPrefix)
		if err != nil {
			return nil, 0, err
		}
		if len(keys) > 0 {
			return nil, 0, fmt.Errorf("%w: the datastore already holds a cluster's bootstrap data; start with that cluster's --token", ErrDifferentToken)
		}
		return nil, 0, nil
	}
	key := bootstrap.KeyName(pw)
	value, rev, err := st.Get(ctx, key)
	if errors.Is(err, datastore.ErrNotFound) {
		if missing != nil {
			other, err := missing(ctx)
			if err != nil {
				return nil, 0, err
			}
			if other != "" && other != pw {
				return Read(ctx, st, other, nil)
			}
		}
		keys, err := st.Keys(ctx, bootstrap.KeyPrefix)
		if err != nil {
			return nil, 0, err
		}
		if len(keys) > 0 {
			return nil, 0, ErrDifferentToken
		}
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	rec, err := open(pw, key, value, "bootstrap data")
	if errors.Is(err, bootstrap.ErrWrongPassphrase) {
		return nil, 0, ErrDifferentToken
	}
	if err != nil {
		return nil, 0, err
	}
	return rec, rev, nil
}

// open decrypts with pw and parses the value stored at key; what names it in errors.
func open(pw, key string, value []byte, what string) (*bootstrap.Record, error) {
	plain, err := bootstrap.Decrypt(pw, string(value))
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", what, key, err)
	}
	rec, err := bootstrap.ParseRecord(plain)
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", what, key, err)
	}
	return rec, nil
}

// Current is Read for a server that is running: the record must exist.
func Current(ctx context.Context, st Store, pw string) (*bootstrap.Record, int64, error) {
	rec, rev, err := Read(ctx, st, pw, nil)
	if err == nil && rec == nil {
		err = errors.New("no bootstrap data for this server's token in the datastore")
	}
	return rec, rev, err
}

// Update encrypts rec under pw and compare-and-swaps it in at revision rev
// (datastore.ErrConflict when the record moved on); it returns the new revision.
func Update(ctx context.Context, st Store, pw string, rev int64, rec *bootstrap.Record) (int64, error) {
	value, err := Seal(pw, rec)
	if err != nil {
		return 0, err
	}
	return st.Update(ctx, bootstrap.KeyName(pw), value, rev)
}

// UpdateKeeping is Update that also stores kept, encrypted under pw, at the key of the
// kept record (bootstrap.PreviousKeyName), in the same transaction: what rotate-ca
// replaced, for rotate-ca --rollback.
func UpdateKeeping(ctx context.Context, st Store, pw string, rev int64, rec, kept *bootstrap.Record) (int64, error) {
	value, err := Seal(pw, rec)
	if err != nil {
		return 0, err
	}
	keptValue, err := Seal(pw, kept)
	if err != nil {
		return 0, err
	}
	side := datastore.Side{Put: []datastore.KV{{Key: bootstrap.PreviousKeyName(pw), Value: keptValue}}}
	return st.UpdateWith(ctx, bootstrap.KeyName(pw), value, rev, side)
}

// Previous fetches and decrypts the kept record of the server password pw, and the
// revision it was written at; nil when the datastore keeps none. The kept record is
// written only in the transaction that changes the record, so a kept record newer than
// the revision a caller read the record at means the record has moved on since.
func Previous(ctx context.Context, st Store, pw string) (*bootstrap.Record, int64, error) {
	key := bootstrap.PreviousKeyName(pw)
	value, rev, err := st.Get(ctx, key)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	rec, err := open(pw, key, value, "kept CA files")
	if err != nil {
		return nil, 0, err
	}
	return rec, rev, nil
}

// Move re-encrypts rec under newPW and moves it from the key of oldPW (still at rev) to
// the key of newPW in one transaction. The kept record moves with it: kept (nil when
// there is none) is re-encrypted under newPW at the kept key of newPW, and the kept key
// of oldPW is deleted, so that no kept record is left under a password that is gone.
func Move(ctx context.Context, st Store, oldPW string, rev int64, newPW string, rec, kept *bootstrap.Record) (int64, error) {
	value, err := Seal(newPW, rec)
	if err != nil {
		return 0, err
	}
	side := datastore.Side{Delete: []string{bootstrap.PreviousKeyName(oldPW)}}
	if kept != nil {
		keptValue, err := Seal(newPW, kept)
		if err != nil {
			return 0, err
		}
		side.Put = []datastore.KV{{Key: bootstrap.PreviousKeyName(newPW), Value: keptValue}}
	}
	return st.ReplaceWith(ctx, bootstrap.KeyName(oldPW), rev, bootstrap.KeyName(newPW), value, side)
}

// Own is the revision of the record this server wrote last, and the writes it has in
// flight. It holds its lock only for memory updates, never across a datastore call.
type Own struct {
	mu       sync.Mutex
	rev      int64
	inflight int
	idle     chan struct{} // closed when inflight drops to 0
}

// Set records rev as this server's (a read or a write of the record).
func (o *Own) Set(rev int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if rev > o.rev {
		o.rev = rev
	}
}

// Rev is the last revision Set or a write recorded.
func (o *Own) Rev() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rev
}

// Begin marks a write of the record in flight; the function it returns ends it with
// the revision written (0 when the write failed).
func (o *Own) Begin() func(rev int64) {
	o.mu.Lock()
	o.inflight++
	if o.idle == nil {
		o.idle = make(chan struct{})
	}
	o.mu.Unlock()
	var once sync.Once
	return func(rev int64) {
		once.Do(func() {
			o.mu.Lock()
			defer o.mu.Unlock()
			if rev > o.rev {
				o.rev = rev
			}
			o.inflight--
			if o.inflight == 0 {
				close(o.idle)
				o.idle = nil
			}
		})
	}
}

// Mine reports whether a change seen at revision rev is this server's: at or before
// its last own revision. While own writes are in flight it waits for them (or ctx), so
// that the event of a write whose answer has not arrived yet is not taken for another
// server's.
func (o *Own) Mine(ctx context.Context, rev int64) bool {
	for {
		o.mu.Lock()
		if rev <= o.rev {
			o.mu.Unlock()
			return true
		}
		if o.inflight == 0 {
			o.mu.Unlock()
			return false
		}
		idle := o.idle
		o.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return false
		}
	}
}
