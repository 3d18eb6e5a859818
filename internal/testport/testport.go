// Package testport hands tests of this module loopback TCP ports. Ports come from
// 10000-19999: below the kernel's ephemeral range, so that the many outgoing connections
// of tests running at the same time cannot take a port between its choice and its use,
// and apart from the range of the end-to-end tests (20000-31999). Tests only.
package testport

import (
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
)

var (
	mu   sync.Mutex
	used = map[int]bool{}
)

// Free returns a port on 127.0.0.1 that nothing listens on and that no other caller in
// this process was given.
func Free(t testing.TB) int {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	for range 500 {
		p := 10000 + rand.IntN(10000)
		if used[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		l.Close()
		used[p] = true
		return p
	}
	t.Fatal("no free TCP port on 127.0.0.1")
	return 0
}
