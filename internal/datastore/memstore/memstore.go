// Package memstore is an in-memory datastore with the semantics of datastore.Store
// (revisions, create-only, compare-and-swap, replace, side writes in the same
// transaction, prefix watch, the same sentinel
// errors), for unit tests of the code that talks to the datastore. A test can hold any
// operation (Hold) to stand for a slow or unreachable etcd, or fail it (Fail).
package memstore

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/kpki/kpki/internal/datastore"
)

type entry struct {
	value []byte
	mod   int64
}

type watcher struct {
	prefix string
	ch     chan datastore.Event
	ctx    context.Context
}

// Store is the in-memory datastore. The zero value is not usable; call New.
type Store struct {
	mu       sync.Mutex
	rev      int64
	kv       map[string]entry
	watchers []*watcher
	hooks    map[string]func(ctx context.Context, key string) error
	calls    map[string]int
}

// New returns an empty store at revision 1.
func New() *Store {
	return &Store{rev: 1, kv: map[string]entry{}, hooks: map[string]func(context.Context, string) error{}, calls: map[string]int{}}
}

// Hook runs f before every later operation op ("get", "keys", "list", "create",
// "update", "replace", "put"); an error from f is the operation's error and the store
// is left unchanged. f runs without the store's lock: it may block.
func (s *Store) Hook(op string, f func(ctx context.Context, key string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == nil {
		delete(s.hooks, op)
		return
	}
	s.hooks[op] = f
}

// Hold makes every later operation op wait until release is closed or the caller's
// context ends (then it fails with the context's error). started, when not nil, gets
// one value each time an operation starts waiting.
func (s *Store) Hold(op string, release <-chan struct{}, started chan<- string) {
	s.Hook(op, func(ctx context.Context, key string) error {
		if started != nil {
			select {
			case started <- key:
			default:
			}
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
}

// Fail makes every later operation op fail with err.
func (s *Store) Fail(op string, err error) {
	s.Hook(op, func(context.Context, string) error { return err })
}

// Calls is how many times op was called.
func (s *Store) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// enter counts op and runs its hook; it returns with s.mu held when the hook allowed
// the operation.
func (s *Store) enter(ctx context.Context, op, key string) error {
	s.mu.Lock()
	s.calls[op]++
	hook := s.hooks[op]
	s.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, key); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	return nil
}

// Value returns key's value and whether it exists, bypassing hooks and counters.
func (s *Store) Value(key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.kv[key]
	return append([]byte(nil), e.value...), ok
}

// Get returns the value of key and its modification revision.
func (s *Store) Get(ctx context.Context, key string) ([]byte, int64, error) {
	if err := s.enter(ctx, "get", key); err != nil {
		return nil, 0, err
	}
	defer s.mu.Unlock()
	e, ok := s.kv[key]
	if !ok {
		return nil, 0, datastore.ErrNotFound
	}
	return append([]byte(nil), e.value...), e.mod, nil
}

func (s *Store) sortedKeys(prefix string) []string {
	var keys []string
	for k := range s.kv {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// Keys lists the keys under prefix.
func (s *Store) Keys(ctx context.Context, prefix string) ([]string, error) {
	if err := s.enter(ctx, "keys", prefix); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.sortedKeys(prefix), nil
}

// GetPrefix returns every key under prefix with its value, and the store's revision.
func (s *Store) GetPrefix(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	if err := s.enter(ctx, "list", prefix); err != nil {
		return nil, 0, err
	}
	defer s.mu.Unlock()
	var out []datastore.KV
	for _, k := range s.sortedKeys(prefix) {
		out = append(out, datastore.KV{Key: k, Value: append([]byte(nil), s.kv[k].value...)})
	}
	return out, s.rev, nil
}

// put writes key at a new revision and tells the watchers; callers hold s.mu.
func (s *Store) put(key string, value []byte) int64 {
	s.rev++
	s.set(key, value)
	return s.rev
}

func (s *Store) notify(ev datastore.Event) {
	for _, w := range s.watchers {
		if w.ctx.Err() != nil || !strings.HasPrefix(ev.Key, w.prefix) {
			continue
		}
		select {
		case w.ch <- ev:
		default: // a watcher that does not keep up loses events
		}
	}
}

// Create writes key only if it does not exist (datastore.ErrExists otherwise).
func (s *Store) Create(ctx context.Context, key string, value []byte) error {
	if err := s.enter(ctx, "create", key); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := s.kv[key]; ok {
		return datastore.ErrExists
	}
	s.put(key, value)
	return nil
}

// CreateOrGet writes key if it does not exist, else returns its current value.
func (s *Store) CreateOrGet(ctx context.Context, key string, value []byte) (bool, []byte, error) {
	if err := s.enter(ctx, "create", key); err != nil {
		return false, nil, err
	}
	defer s.mu.Unlock()
	if e, ok := s.kv[key]; ok {
		return false, append([]byte(nil), e.value...), nil
	}
	s.put(key, value)
	return true, nil, nil
}

// CreateOrGetRev is CreateOrGet that also returns the store's revision at the answer.
func (s *Store) CreateOrGetRev(ctx context.Context, key string, value []byte) (bool, []byte, int64, error) {
	if err := s.enter(ctx, "create", key); err != nil {
		return false, nil, 0, err
	}
	defer s.mu.Unlock()
	if e, ok := s.kv[key]; ok {
		return false, append([]byte(nil), e.value...), s.rev, nil
	}
	s.put(key, value)
	return true, nil, s.rev, nil
}

// Revision returns the store's current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	if err := s.enter(ctx, "get", ""); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	return s.rev, nil
}

// Update replaces key's value if its modification revision is still rev
// (datastore.ErrConflict otherwise) and returns the new revision.
func (s *Store) Update(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	return s.UpdateWith(ctx, key, value, rev, datastore.Side{})
}

// UpdateWith is Update that also writes side at the same revision.
func (s *Store) UpdateWith(ctx context.Context, key string, value []byte, rev int64, side datastore.Side) (int64, error) {
	if err := s.enter(ctx, "update", key); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if s.kv[key].mod != rev {
		return 0, datastore.ErrConflict
	}
	if err := checkSide(side, key); err != nil {
		return 0, err
	}
	s.rev++
	s.set(key, value)
	s.apply(side)
	return s.rev, nil
}

// Replace deletes oldKey (which must still be at rev) and creates newKey in one step.
func (s *Store) Replace(ctx context.Context, oldKey string, rev int64, newKey string, value []byte) (int64, error) {
	return s.ReplaceWith(ctx, oldKey, rev, newKey, value, datastore.Side{})
}

// ReplaceWith is Replace that also writes side at the same revision.
func (s *Store) ReplaceWith(ctx context.Context, oldKey string, rev int64, newKey string, value []byte, side datastore.Side) (int64, error) {
	if err := s.enter(ctx, "replace", oldKey); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if _, exists := s.kv[newKey]; s.kv[oldKey].mod != rev || exists {
		return 0, datastore.ErrConflict
	}
	if err := checkSide(side, oldKey, newKey); err != nil {
		return 0, err
	}
	s.rev++
	s.delete(oldKey)
	s.set(newKey, value)
	s.apply(side)
	return s.rev, nil
}

// checkSide refuses, as etcd does, a transaction that names a key twice.
func checkSide(side datastore.Side, keys ...string) error {
	seen := map[string]bool{}
	for _, k := range keys {
		seen[k] = true
	}
	for _, k := range side.Delete {
		if seen[k] {
			return fmt.Errorf("duplicate key %s in one transaction", k)
		}
		seen[k] = true
	}
	for _, kv := range side.Put {
		if seen[kv.Key] {
			return fmt.Errorf("duplicate key %s in one transaction", kv.Key)
		}
		seen[kv.Key] = true
	}
	return nil
}

// set writes key at the current revision and tells the watchers; callers hold s.mu.
func (s *Store) set(key string, value []byte) {
	s.kv[key] = entry{value: append([]byte(nil), value...), mod: s.rev}
	s.notify(datastore.Event{Key: key, Revision: s.rev})
}

// delete deletes key, if it exists, at the current revision and tells the watchers;
// callers hold s.mu.
func (s *Store) delete(key string) {
	if _, ok := s.kv[key]; !ok {
		return
	}
	delete(s.kv, key)
	s.notify(datastore.Event{Key: key, Revision: s.rev, Deleted: true})
}

// apply writes side at the current revision; callers hold s.mu.
func (s *Store) apply(side datastore.Side) {
	for _, k := range side.Delete {
		s.delete(k)
	}
	for _, kv := range side.Put {
		s.set(kv.Key, kv.Value)
	}
}

// Put writes key unconditionally.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if err := s.enter(ctx, "put", key); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.put(key, value)
	return nil
}

// WatchPrefix sends every later change under prefix until ctx ends. Past revisions are
// not replayed: fromRev must be 0 or the store's next revision.
func (s *Store) WatchPrefix(ctx context.Context, prefix string, _ int64) <-chan datastore.Event {
	ch := make(chan datastore.Event, 64)
	s.mu.Lock()
	s.watchers = append(s.watchers, &watcher{prefix: prefix, ch: ch, ctx: ctx})
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, w := range s.watchers {
			if w.ch == ch {
				s.watchers = append(s.watchers[:i], s.watchers[i+1:]...)
				close(ch)
				return
			}
		}
	}()
	return ch
}

// Watchers is the number of watches running.
func (s *Store) Watchers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, w := range s.watchers {
		if w.ctx.Err() == nil {
			n++
		}
	}
	return n
}
