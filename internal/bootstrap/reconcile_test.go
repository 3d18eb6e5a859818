package bootstrap

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	const dd = "/var/lib/kpki"
	ts := time.Date(2026, 1, 15, 10, 20, 30, 123456789, time.UTC)
	rec := NewRecord()
	rec.Set("ServerCA", File{Timestamp: ts, Content: []byte("server-ca")})
	rec.Set("ClientCAKey", File{Timestamp: ts, Content: []byte("client-ca-key")})
	rec.Set("PasswdFile", File{Timestamp: ts, Content: []byte("passwd")})

	serverCA := "server/tls/server-ca.crt"
	clientCAKey := "server/tls/client-ca.key"
	passwd := "server/cred/passwd"
	same := func(content string) DiskFile {
		return DiskFile{Exists: true, Content: []byte(content), ModTime: ts.Add(time.Hour)}
	}
	differs := func(age time.Duration) DiskFile {
		return DiskFile{Exists: true, Content: []byte("other"), ModTime: ts.Add(age)}
	}
	write := func(field, path, content string, overwrite bool) Write {
		return Write{Field: field, Path: dd + "/" + path, Content: []byte(content), Mode: 0o600, ModTime: ts, Overwrite: overwrite}
	}
	const suffix = " newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore."

	tests := []struct {
		name    string
		disk    map[string]DiskFile
		want    []Write
		wantErr string
	}{
		{
			name: "all missing",
			disk: nil,
			want: []Write{
				write("ServerCA", serverCA, "server-ca", false),
				write("ClientCAKey", clientCAKey, "client-ca-key", false),
				write("PasswdFile", passwd, "passwd", false),
			},
		},
		{
			name: "missing marked not existing",
			disk: map[string]DiskFile{serverCA: {Exists: false}, clientCAKey: same("client-ca-key"), passwd: same("passwd")},
			want: []Write{write("ServerCA", serverCA, "server-ca", false)},
		},
		{
			name: "identical",
			disk: map[string]DiskFile{
				serverCA:    {Exists: true, Content: []byte("server-ca"), ModTime: ts},
				clientCAKey: {Exists: true, Content: []byte("client-ca-key"), ModTime: ts.Add(-time.Hour)},
				passwd:      {Exists: true, Content: []byte("passwd"), ModTime: ts},
			},
			want: nil,
		},
		{
			name: "differing older disk file is overwritten",
			disk: map[string]DiskFile{serverCA: differs(-time.Hour), clientCAKey: same("client-ca-key"), passwd: same("passwd")},
			want: []Write{write("ServerCA", serverCA, "server-ca", true)},
		},
		{
			name: "differing disk file 2.9s newer is overwritten",
			disk: map[string]DiskFile{serverCA: differs(2900 * time.Millisecond), clientCAKey: same("client-ca-key"), passwd: same("passwd")},
			want: []Write{write("ServerCA", serverCA, "server-ca", true)},
		},
		{
			name: "differing disk file just under 3s newer is overwritten",
			disk: map[string]DiskFile{serverCA: differs(3*time.Second - 1), clientCAKey: same("client-ca-key"), passwd: same("passwd")},
			want: []Write{write("ServerCA", serverCA, "server-ca", true)},
		},
		{
			name:    "differing disk file exactly 3s newer",
			disk:    map[string]DiskFile{serverCA: differs(3 * time.Second), clientCAKey: same("client-ca-key"), passwd: same("passwd")},
			wantErr: dd + "/" + serverCA + suffix,
		},
		{
			name: "every differing newer file is listed, in Files order",
			disk: map[string]DiskFile{
				passwd:      differs(time.Minute),
				serverCA:    differs(10 * time.Second),
				clientCAKey: differs(4 * time.Second),
			},
			wantErr: dd + "/" + serverCA + ", " + dd + "/" + clientCAKey + ", " + dd + "/" + passwd + suffix,
		},
		{
			name: "newer file stops everything, including other writes",
			disk: map[string]DiskFile{
				serverCA:    differs(-time.Hour),
				clientCAKey: differs(5 * time.Second),
			},
			wantErr: dd + "/" + clientCAKey + suffix,
		},
		{
			name: "newer identical file is left alone",
			disk: map[string]DiskFile{serverCA: same("server-ca"), clientCAKey: same("client-ca-key"), passwd: same("passwd")},
			want: nil,
		},
		{
			name: "fields absent from the record are ignored",
			disk: map[string]DiskFile{
				serverCA: same("server-ca"), clientCAKey: same("client-ca-key"), passwd: same("passwd"),
				"server/tls/server-ca.key":    differs(time.Hour),
				"server/tls/etcd/peer-ca.crt": {Exists: false},
			},
			want: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Plan(dd, rec, tc.disk)
			if tc.wantErr != "" {
				var ne *NewerError
				if !errors.As(err, &ne) {
					t.Fatalf("Plan error = %v, want *NewerError", err)
				}
				if err.Error() != tc.wantErr {
					t.Fatalf("Plan error =\n%s\nwant\n%s", err, tc.wantErr)
				}
				if got != nil {
					t.Fatalf("Plan returned writes with an error: %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Plan =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestPlanRelativeDataDir(t *testing.T) {
	ts := time.Date(2026, 1, 15, 10, 20, 30, 0, time.UTC)
	rec := NewRecord()
	rec.Set("ETCDPeerCAKey", File{Timestamp: ts, Content: []byte("k")})
	_, err := Plan("data/", rec, map[string]DiskFile{
		"server/tls/etcd/peer-ca.key": {Exists: true, Content: []byte("other"), ModTime: ts.Add(3 * time.Second)},
	})
	want := "data/server/tls/etcd/peer-ca.key newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore."
	if err == nil || err.Error() != want {
		t.Fatalf("Plan error = %v, want %q", err, want)
	}
}

func TestPlanFixture(t *testing.T) {
	rec, err := ParseRecord(readFixture(t, "plaintext.json"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := Plan("/dd", rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(Files) {
		t.Fatalf("Plan wrote %d files, want %d (IPSECKey is not a file)", len(got), len(Files))
	}
	for i, w := range got {
		if w.Field != Files[i].Field || w.Path != "/dd/"+Files[i].Path || w.Mode != 0o600 || w.Overwrite {
			t.Errorf("write %d = %+v", i, w)
		}
		if want := time.Date(2026, 1, 15, 10, 20, 30, 123456789, time.UTC); !w.ModTime.Equal(want) {
			t.Errorf("%s: ModTime %v, want %v", w.Field, w.ModTime, want)
		}
	}
}

func TestPlanEmptyRecord(t *testing.T) {
	got, err := Plan("/dd", NewRecord(), map[string]DiskFile{"server/tls/server-ca.crt": {Exists: true}})
	if err != nil || got != nil {
		t.Fatalf("Plan(empty record) = %+v, %v", got, err)
	}
}
