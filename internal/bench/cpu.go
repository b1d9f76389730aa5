package bench

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux this runs on).
const clockTick = 10 * time.Millisecond

// cpuSample is the CPU time used so far by this process and by every
// live child, by role.
type cpuSample map[string]time.Duration

// sampleCPU reads the CPU time (user + system) of this process and of
// every running child. Children of the same role add up.
func (r *runner) sampleCPU() cpuSample {
	s := cpuSample{}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s["client"] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for _, c := range r.children {
		if d, err := procCPU(c.pid()); err == nil {
			s[c.name] += d
		}
	}
	return s
}

// procCPU returns the CPU time of process pid, all threads: the sum of
// their scheduler run times in nanoseconds (/proc/PID/task/*/schedstat),
// or, where those are missing, utime + stime in clock ticks, which a
// figure of a few ticks a round would round by tens of per cent. The
// processes measured are Go programs, whose threads do not exit, so no
// thread's time drops out of the sum between two samples.
func procCPU(pid int) (time.Duration, error) {
	if d, err := schedCPU(pid); err == nil {
		return d, nil
	}
	return statCPU(pid)
}

// schedCPU sums the first field of every thread's schedstat: its time on
// a CPU, in nanoseconds.
func schedCPU(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, fmt.Errorf("bench: empty %s/%s/schedstat", dir, t.Name())
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: odd %s/%s/schedstat", dir, t.Name())
		}
		sum += time.Duration(ns)
	}
	if sum == 0 {
		return 0, fmt.Errorf("bench: no schedstat under %s", dir)
	}
	return sum, nil
}

// statCPU returns utime + stime of process pid, all threads, from
// /proc/PID/stat.
func statCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from the
	// closing parenthesis.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("bench: odd /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bench: odd /proc/%d/stat", pid)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// since returns the CPU time each role used between before and s.
func (s cpuSample) since(before cpuSample) cpuSample {
	d := cpuSample{}
	for role, t := range s {
		if t -= before[role]; t > 0 {
			d[role] = t
		}
	}
	return d
}

// plus returns s with more added, role by role.
func (s cpuSample) plus(more cpuSample) cpuSample {
	if s == nil {
		s = cpuSample{}
	}
	for role, t := range more {
		s[role] += t
	}
	return s
}

// addCPU adds NAME_cpu, the CPU time of every process taking part (this
// one's clients included) per request, from what each used over n
// requests, in microseconds, compared with base's. A comment line splits
// it by role.
func (r *runner) addCPU(name, base string, used cpuSample, n int) {
	var total time.Duration
	roles := make([]string, 0, len(used))
	for role, d := range used {
		if d > 0 {
			total += d
			roles = append(roles, role)
		}
	}
	sort.Strings(roles)
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(n) }
	var b strings.Builder
	for _, role := range roles {
		fmt.Fprintf(&b, " %s=%.0f", role, per(used[role]))
	}
	fmt.Fprintf(r.out, "# %s_cpu by process (us/req):%s\n", name, b.String())
	f := &Figure{Name: name + "_cpu", Value: float64(int64(per(total)*10)) / 10, Unit: "us/req",
		Note: "CPU time (user + system) of every process taking part, clients included, per request; by process:" + b.String()}
	if base != "" {
		f.Baseline = base + "_cpu"
	}
	r.add(f)
}
