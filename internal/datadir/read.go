package datadir

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// MaxStagedFile bounds each file an operator stages for kpki (CA bundles and key files
// for rotate-ca and generate-ca): they are a few KB.
const MaxStagedFile = 1 << 20

// ReadRegular reads the regular file at path, of at most max bytes; nil, nil when
// nothing is there. It is for files an operator hands to kpki (staged CA files): a
// symlink is followed, but it must lead to a regular file, and no file larger than max
// is read. A FIFO, a device, a socket or a directory is an error naming path and what
// it is, as is a dangling symlink; nothing is opened in a way that can block, and what
// was opened is checked again, so a file swapped in between is refused too.
func ReadRegular(path string, max int64) ([]byte, error) {
	lst, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	flags := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	st := lst
	if lst.Mode()&fs.ModeSymlink != 0 {
		st, err = os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			target, _ := os.Readlink(path)
			return nil, fmt.Errorf("%s is a dangling symlink (to %s, which does not exist)", path, target)
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
	} else {
		flags |= syscall.O_NOFOLLOW
	}
	if err := checkRegular(path, st, max); err != nil {
		return nil, err
	}
	if beforeOpen != nil {
		beforeOpen(path)
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, syscall.ELOOP) && flags&syscall.O_NOFOLLOW != 0 {
		return nil, fmt.Errorf("%s was replaced by a symlink while being read", path)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	fst, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if err := checkRegular(path, fst, max); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %s", path, sizeString(max))
	}
	return b, nil
}

// beforeOpen, when set by a test, runs between ReadRegular's stat and its open.
var beforeOpen func(path string)

func checkRegular(path string, st fs.FileInfo, max int64) error {
	m := st.Mode()
	if !m.IsRegular() {
		what := "not a regular file"
		switch {
		case m.IsDir():
			what = "a directory"
		case m&fs.ModeNamedPipe != 0:
			what = "a named pipe (FIFO)"
		case m&fs.ModeSocket != 0:
			what = "a socket"
		case m&fs.ModeCharDevice != 0:
			what = "a character device"
		case m&fs.ModeDevice != 0:
			what = "a block device"
		}
		return fmt.Errorf("%s is %s, not a regular file", path, what)
	}
	if st.Size() > max {
		return fmt.Errorf("%s is larger than %s (%d bytes)", path, sizeString(max), st.Size())
	}
	return nil
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
