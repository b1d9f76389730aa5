package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Figure is one measured number. A figure is compared with its baseline,
// another figure of the same run, when it has one; otherwise with its
// budget, when it has one.
type Figure struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Baseline names the figure of the same run this one is divided by.
	Baseline string `json:"baseline,omitempty"`
	// Ratio is Value / the baseline's value (or / BudgetValue when there
	// is no baseline). Zero when neither exists.
	Ratio float64 `json:"ratio,omitempty"`
	// Budget is the limit this figure must meet, as text ("x1.5",
	// "6144 B"), with Max the number Ratio (for "x" budgets) or Value is
	// compared with.
	Budget string  `json:"budget,omitempty"`
	Max    float64 `json:"-"`
	// Pass is set when a budget applies.
	Pass *bool `json:"pass,omitempty"`
	// Runs holds the value of every run when the figure's benchmark was
	// repeated (Options.Repeat); Value is then their median, Ratio the
	// median of the runs' ratios, each to its own run's baseline, and
	// RatioMin and RatioMax their range.
	Runs     []float64 `json:"runs,omitempty"`
	RatioMin float64   `json:"ratio_min,omitempty"`
	RatioMax float64   `json:"ratio_max,omitempty"`
	// Note says what the number includes.
	Note string `json:"note,omitempty"`
}

// Report is what a run produced; it is written to bench.json.
type Report struct {
	Started  time.Time `json:"started"`
	Duration float64   `json:"duration_seconds"`
	Machine  Machine   `json:"machine"`
	Quick    bool      `json:"quick"`
	Figures  []*Figure `json:"figures"`
	// Skipped lists benchmarks that did not run and why.
	Skipped []string `json:"skipped,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	OS     string `json:"os"`
	Arch   string `json:"arch"`
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	MemMiB int    `json:"mem_mib"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	// Load is /proc/loadavg at the start: other work on the machine
	// skews every figure.
	Load string `json:"load"`
}

func thisMachine() Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemMiB = kb / 1024
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.Load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// add records a figure and prints it at once, so a long run shows
// progress.
func (r *Report) add(out io.Writer, f *Figure) {
	if f.Baseline == "" && f.Max == 0 {
		f.Baseline = f.Name // a root: its own baseline
	}
	r.Figures = append(r.Figures, f)
	r.resolve(f)
	fmt.Fprintln(out, f.line())
}

// get returns the figure called name, or nil.
func (r *Report) get(name string) *Figure {
	for _, f := range r.Figures {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// resolve computes f's ratio and verdict.
func (r *Report) resolve(f *Figure) {
	switch {
	case f.Baseline != "":
		if b := r.get(f.Baseline); b != nil && b.Value > 0 {
			f.Ratio = f.Value / b.Value
		}
	case f.Max > 0:
		f.Ratio = f.Value / f.Max
	}
	f.judge()
}

// judge sets f's verdict from its ratio or value.
func (f *Figure) judge() {
	if f.Budget == "" || f.Max <= 0 {
		return
	}
	var ok bool
	if strings.HasPrefix(f.Budget, "x") || strings.HasPrefix(f.Budget, ">=x") {
		if f.Ratio == 0 {
			return // no baseline, no verdict
		}
		if strings.HasPrefix(f.Budget, ">=") {
			ok = f.Ratio >= f.Max
		} else {
			ok = f.Ratio <= f.Max
		}
	} else if strings.HasPrefix(f.Budget, ">=") {
		ok = f.Value >= f.Max
	} else {
		ok = f.Value <= f.Max
	}
	f.Pass = &ok
}

// line formats f as "name value unit xRATIO baseline [budget: ok|MISSED]".
func (f *Figure) line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", f.Name, formatValue(f.Value), f.Unit)
	switch {
	case f.Baseline != "" && f.Ratio > 0:
		fmt.Fprintf(&b, " x%.2f %s", f.Ratio, f.Baseline)
	case f.Baseline != "":
		fmt.Fprintf(&b, " x? %s", f.Baseline)
	case f.Max > 0:
		fmt.Fprintf(&b, " x%.2f budget", f.Ratio)
	}
	if len(f.Runs) > 1 && f.RatioMax > 0 && f.Baseline != f.Name {
		fmt.Fprintf(&b, " (x%.2f..x%.2f in %d runs)", f.RatioMin, f.RatioMax, len(f.Runs))
	}
	if f.Pass != nil {
		verdict := "ok"
		if !*f.Pass {
			verdict = "MISSED"
		}
		fmt.Fprintf(&b, " [budget %s: %s]", f.Budget, verdict)
	}
	return b.String()
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)):
		return fmt.Sprintf("%d", int64(v))
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.4f", v)
	}
}

// write stores r as indented JSON in path, creating its directory.
func (r *Report) write(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// medians folds the reports of repeated runs of the same benchmarks into
// one figure per name, in the order they first appear: the median value,
// the median of the runs' ratios (each to its own run's baseline: the
// runs of a noisy machine drift, and both sides of a ratio drift
// together), the range of those ratios, and a verdict on the median.
func medians(runs []*Report) []*Figure {
	var (
		order  []string
		byName = map[string][]*Figure{}
	)
	for _, rep := range runs {
		for _, f := range rep.Figures {
			if _, ok := byName[f.Name]; !ok {
				order = append(order, f.Name)
			}
			byName[f.Name] = append(byName[f.Name], f)
		}
	}
	out := make([]*Figure, 0, len(order))
	for _, name := range order {
		fs := byName[name]
		m := *fs[0]
		m.Pass = nil
		var values, ratios []float64
		for _, f := range fs {
			values = append(values, f.Value)
			if f.Ratio > 0 {
				ratios = append(ratios, f.Ratio)
			}
		}
		m.Runs = values
		m.Value = median(values)
		m.Ratio, m.RatioMin, m.RatioMax = 0, 0, 0
		if len(ratios) > 0 {
			m.Ratio = median(ratios)
		}
		if len(ratios) == len(values) {
			// A range only over every run: "in N runs" says so.
			m.RatioMin, m.RatioMax = slices.Min(ratios), slices.Max(ratios)
		}
		m.judge()
		out = append(out, &m)
	}
	return out
}

// median returns the middle of vs, or the mean of the two middle ones.
func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// addMedians records figures made by medians and prints them.
func (r *Report) addMedians(out io.Writer, figs []*Figure) {
	for _, f := range figs {
		r.Figures = append(r.Figures, f)
		fmt.Fprintln(out, f.line())
	}
}
