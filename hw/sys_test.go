package hw

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestSysInfo(t *testing.T) {
	root := t.TempDir()
	write := func(rel, data string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("proc/uptime", "12345.67 40000.00\n")
	write("proc/loadavg", "0.10 0.20 0.30 1/123 4567\n")
	write("proc/meminfo", "MemTotal:        1000 kB\nMemFree:  10 kB\nMemAvailable:     500 kB\n")
	write("sys/class/thermal/thermal_zone0/type", "gpu-thermal\n")
	write("sys/class/thermal/thermal_zone0/temp", "30000\n")
	write("sys/class/thermal/thermal_zone1/type", "cpu-thermal\n")
	write("sys/class/thermal/thermal_zone1/temp", "48312\n")

	r := newRig(t, nil)
	r.b.sysRoot = root
	raw, err := r.exec(t, context.Background(), "sys.info", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	var got sysInfoResult
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.Board != "test" || got.Agent != "v0.0.0-test" || got.UptimeS != 12345.67 {
		t.Errorf("got %s", raw)
	}
	if len(got.Load) != 3 || got.Load[2] != 0.30 {
		t.Errorf("load %v", got.Load)
	}
	if got.Memory == nil || got.Memory.TotalBytes != 1000*1024 || got.Memory.AvailableBytes != 500*1024 {
		t.Errorf("memory %+v", got.Memory)
	}
	if got.CPUTempC == nil || *got.CPUTempC != 48.312 {
		t.Errorf("cpu temp %v, want 48.312 from the cpu zone", got.CPUTempC)
	}

	r.b.sysRoot = t.TempDir() // a host without /proc or thermal zones
	raw, err = r.exec(t, context.Background(), "sys.info", ``)
	if err != nil {
		t.Fatal(err)
	}
	got = sysInfoResult{}
	json.Unmarshal(raw, &got)
	if got.CPUTempC != nil || got.Memory != nil || got.Board != "test" {
		t.Errorf("got %s", raw)
	}
}
