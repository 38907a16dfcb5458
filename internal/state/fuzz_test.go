package state

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzLoad: any file where a record is expected either loads as a record whose values a kube-proxy
// could have started with, or is refused with an error; never a panic.
func FuzzLoad(f *testing.F) {
	good, _ := json.Marshal(Record{PID: 42, StartTime: 7, BuildID: "b",
		Runners: map[string]Original{"0xc000123400": {MinInterval: time.Second, MaxInterval: time.Hour, Burst: 2}}})
	f.Add(good)
	f.Add([]byte(`{"pid":42,"startTime":7,"buildID":"b","runners":{"0x10":{"minInterval":-5,"maxInterval":1}}}`))
	f.Add([]byte(`{"pid":42,"startTime":7,"buildID":"b","runners":{"zz":{"minInterval":1}}}`))
	f.Add([]byte(`{`))
	dir := f.TempDir()
	s := Store{Dir: dir}
	if err := s.ensure("records"); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "records", "42-7.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := s.Load(42, 7, "b")
		if err != nil {
			return
		}
		if r == nil || r.PID != 42 || r.StartTime != 7 || r.BuildID != "b" || r.check() != nil {
			t.Fatalf("loaded %+v", r)
		}
		for _, o := range r.Runners {
			if o.MinInterval < 0 || o.MaxInterval < o.MinInterval {
				t.Fatalf("loaded runner values %+v", o)
			}
		}
	})
}
