package controller

import (
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// BenchmarkLogStore compares the two durable raft log stores on this
// machine's disk (see openLogStore, which says why the faster one is not
// used, and docs/performance.md): "single" is
// one 512-byte entry per call, fsynced, as a lone write pays; "batch64" is
// 64 entries per call, as raft appends under load (ns/op is per entry).
//
//	go test -run '^$' -bench LogStore -benchtime 2s ./controller
func BenchmarkLogStore(b *testing.B) {
	stores := map[string]func(b *testing.B) raft.LogStore{
		"boltdb": func(b *testing.B) raft.LogStore {
			s, err := raftboltdb.NewBoltStore(filepath.Join(b.TempDir(), "raft.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		},
		"wal": func(b *testing.B) raft.LogStore {
			meta := &metadb.BoltMetaDB{}
			w, err := wal.Open(b.TempDir(), wal.WithMetaStore(meta))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { w.Close(); meta.Close() })
			return w
		},
	}
	data := make([]byte, 512)
	for _, name := range []string{"boltdb", "wal"} {
		for _, batch := range []int{1, 64} {
			b.Run(name+map[int]string{1: "/single", 64: "/batch64"}[batch], func(b *testing.B) {
				s := stores[name](b)
				idx := uint64(1)
				logs := make([]*raft.Log, batch)
				b.SetBytes(int64(len(data)))
				b.ResetTimer()
				for i := 0; i < b.N; i += batch {
					for j := range logs {
						logs[j] = &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: data}
						idx++
					}
					if err := s.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
