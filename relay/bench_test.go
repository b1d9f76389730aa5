package relay

import (
	"context"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// BenchmarkSubmit measures one durable submit: a bbolt commit (two fsyncs:
// data pages, then the meta page). A lone submit commits at once.
func BenchmarkSubmit(b *testing.B) {
	srv := benchServer(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := srv.Submit(ctx, "dev1", protocol.Submit{Method: "m"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSubmitParallel shows concurrent submits sharing commits through
// the store's group commit.
func BenchmarkSubmitParallel(b *testing.B) {
	srv := benchServer(b)
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := srv.Submit(ctx, "dev1", protocol.Submit{Method: "m"}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchServer(b *testing.B) *Server {
	dir := b.TempDir()
	if _, err := AddDevice(dir, "dev1"); err != nil {
		b.Fatal(err)
	}
	cfg := testConfig(dir)
	cfg.QueueLimit = 1 << 30
	srv, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	return srv
}
