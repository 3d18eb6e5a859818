// Package sdnotify tells systemd about the service's state with the sd_notify protocol:
// one datagram to the unix socket named by NOTIFY_SOCKET. A unit of Type=notify is
// started when READY=1 arrives; STOPPING=1 says that shutdown has begun.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
)

const (
	// Ready says that start-up is complete.
	Ready = "READY=1"
	// Stopping says that the service is shutting down.
	Stopping = "STOPPING=1"
)

// Notify sends state to the socket named by NOTIFY_SOCKET. Without NOTIFY_SOCKET (not run
// by systemd, or not Type=notify) it does nothing and returns false. A name starting with
// '@' is an abstract socket.
func Notify(state string) (bool, error) {
	return notify(os.Getenv("NOTIFY_SOCKET"), state)
}

func notify(name, state string) (bool, error) {
	if name == "" {
		return false, nil
	}
	if name[0] != '/' && name[0] != '@' {
		return false, fmt.Errorf("NOTIFY_SOCKET %q is neither a path nor an abstract socket name", name)
	}
	// The net package maps a leading '@' to the abstract namespace.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("notify systemd: %w", err)
	}
	defer conn.Close()
	n, err := conn.Write([]byte(state))
	if err != nil {
		return false, fmt.Errorf("notify systemd: %w", err)
	}
	if n != len(state) {
		return false, errors.New("notify systemd: short write")
	}
	return true, nil
}
