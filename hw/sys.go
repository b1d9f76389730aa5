package hw

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// sysInfoResult is the value of sys.info. Fields the host cannot provide
// (no /proc on a laptop, no thermal zone in a container) are omitted.
type sysInfoResult struct {
	Board       string    `json:"board"`
	Agent       string    `json:"agent"`
	Hostname    string    `json:"hostname,omitempty"`
	OS          string    `json:"os"`
	Arch        string    `json:"arch"`
	UptimeS     float64   `json:"uptime_s,omitempty"` // host uptime
	AgentUptime float64   `json:"agent_uptime_s"`     // since the board opened
	Load        []float64 `json:"load,omitempty"`     // 1, 5, 15 minutes
	Memory      *memInfo  `json:"memory,omitempty"`
	CPUTempC    *float64  `json:"cpu_temp_c,omitempty"`
}

type memInfo struct {
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
}

func (b *Board) sysInfo(ctx context.Context, raw json.RawMessage) (any, error) {
	if _, err := decodeParams(raw); err != nil {
		return nil, err
	}
	r := sysInfoResult{
		Board:       b.name,
		Agent:       b.opts.Version,
		OS:          runtime.GOOS,
		Arch:        runtime.GOARCH,
		AgentUptime: time.Since(b.started).Round(time.Millisecond).Seconds(),
	}
	r.Hostname, _ = os.Hostname()
	if f := b.readFields("proc/uptime"); len(f) > 0 {
		r.UptimeS, _ = strconv.ParseFloat(f[0], 64)
	}
	if f := b.readFields("proc/loadavg"); len(f) >= 3 {
		for _, s := range f[:3] {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				r.Load = nil
				break
			}
			r.Load = append(r.Load, v)
		}
	}
	r.Memory = b.memInfo()
	r.CPUTempC = b.cpuTemp()
	return r, nil
}

func (b *Board) path(rel string) string { return filepath.Join(b.sysRoot, rel) }

func (b *Board) readFields(rel string) []string {
	data, err := os.ReadFile(b.path(rel))
	if err != nil {
		return nil
	}
	return strings.Fields(string(data))
}

func (b *Board) memInfo() *memInfo {
	f, err := os.Open(b.path("proc/meminfo"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var m memInfo
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text()) // "MemTotal:  3884096 kB"
		if len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemTotal:":
			m.TotalBytes = kb * 1024
		case "MemAvailable:":
			m.AvailableBytes = kb * 1024
		}
	}
	if m.TotalBytes == 0 {
		return nil
	}
	return &m
}

// cpuTemp reads the first thermal zone whose type names a CPU or SoC (on a
// Pi: "cpu-thermal"), else zone 0. Values are in millidegrees Celsius.
func (b *Board) cpuTemp() *float64 {
	zones, _ := filepath.Glob(b.path("sys/class/thermal/thermal_zone*"))
	if len(zones) == 0 {
		return nil
	}
	pick := zones[0]
	for _, z := range zones {
		t, err := os.ReadFile(filepath.Join(z, "type"))
		if err != nil {
			continue
		}
		typ := strings.ToLower(string(t))
		if strings.Contains(typ, "cpu") || strings.Contains(typ, "soc") {
			pick = z
			break
		}
	}
	data, err := os.ReadFile(filepath.Join(pick, "temp"))
	if err != nil {
		return nil
	}
	milli, err := strconv.ParseFloat(string(bytes.TrimSpace(data)), 64)
	if err != nil {
		return nil
	}
	c := milli / 1000
	return &c
}

// sysPing echoes its params; absent or null params echo as {}.
func (b *Board) sysPing(ctx context.Context, raw json.RawMessage) (any, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return json.RawMessage("{}"), nil
	}
	if !json.Valid(raw) {
		return nil, badParam("params", "not valid JSON")
	}
	return append(json.RawMessage(nil), raw...), nil
}
