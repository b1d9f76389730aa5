package yamlite

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind says what a Node is. The values match yaml.v3's.
type Kind uint32

// Node kinds.
const (
	DocumentNode Kind = 1 << iota
	SequenceNode
	MappingNode
	ScalarNode
	AliasNode // never produced; kept so code written for yaml.v3 compiles
)

// Resolved scalar tags.
const (
	tagNull  = "!!null"
	tagBool  = "!!bool"
	tagInt   = "!!int"
	tagFloat = "!!float"
	tagStr   = "!!str"
	tagSeq   = "!!seq"
	tagMap   = "!!map"

	tagTimestamp = "!!timestamp"
)

// Node is one element of a parsed document. A mapping's Content holds keys
// and values alternately.
type Node struct {
	Kind    Kind
	Tag     string
	Value   string
	Line    int
	Column  int
	Content []*Node
}

// SyntaxError is a document this package cannot read.
type SyntaxError struct {
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("yaml: line %d: %s", e.Line, e.Msg) }

// Decode stores a node's value in v, which must be a pointer to a string,
// bool, int, time.Duration (from a string like "20ms"), []uint16,
// []string or Node.
func (n *Node) Decode(v any) error {
	switch p := v.(type) {
	case *Node:
		*p = *n
		return nil
	case *string:
		if n.Kind != ScalarNode {
			return n.wrongKind("a string")
		}
		if n.Tag != tagNull {
			*p = n.Value
		}
		return nil
	case *bool:
		if n.Kind != ScalarNode {
			return n.wrongKind("true or false")
		}
		switch strings.ToLower(n.Value) {
		case "true", "yes", "on":
			*p = true
		case "false", "no", "off":
			*p = false
		default:
			return fmt.Errorf("yaml: line %d: %q is not true or false", n.Line, n.Value)
		}
		return nil
	case *int:
		i, err := n.integer(strconv.IntSize)
		*p = int(i)
		return err
	case *time.Duration:
		if n.Kind != ScalarNode || n.Tag != tagStr {
			return fmt.Errorf("yaml: line %d: %q is not a duration like 20ms", n.Line, n.Value)
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil {
			return fmt.Errorf("yaml: line %d: %w", n.Line, err)
		}
		*p = d
		return nil
	case *[]uint16:
		if n.Kind != SequenceNode {
			return n.wrongKind("a list")
		}
		out := make([]uint16, 0, len(n.Content))
		for _, c := range n.Content {
			i, err := c.integer(16)
			if err != nil || i < 0 {
				return fmt.Errorf("yaml: line %d: %q is not a number from 0 to 65535", c.Line, c.Value)
			}
			out = append(out, uint16(i))
		}
		*p = out
		return nil
	case *[]string:
		if n.Kind != SequenceNode {
			return n.wrongKind("a list")
		}
		out := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			var s string
			if err := c.Decode(&s); err != nil {
				return err
			}
			out = append(out, s)
		}
		*p = out
		return nil
	}
	return fmt.Errorf("yamlite: cannot decode into %T", v)
}

func (n *Node) wrongKind(want string) error {
	return fmt.Errorf("yaml: line %d: want %s", n.Line, want)
}

// integer parses an !!int scalar (decimal, 0x hex, 0o octal, 0b binary).
func (n *Node) integer(bits int) (int64, error) {
	if n.Kind != ScalarNode || n.Tag != tagInt {
		return 0, fmt.Errorf("yaml: line %d: %q is not an integer", n.Line, n.Value)
	}
	i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil {
		return 0, fmt.Errorf("yaml: line %d: %q is out of range", n.Line, n.Value)
	}
	if bits < 64 {
		lim := int64(1) << (bits - 1)
		if bits == 16 {
			lim = 1 << 16
		}
		if i >= lim || i < -lim {
			return 0, fmt.Errorf("yaml: line %d: %q is out of range", n.Line, n.Value)
		}
	}
	return i, nil
}

// plainWords are the plain scalars that resolve by spelling alone. A
// table rather than a switch: each case of a switch on strings compiles
// to code of its own, and the Pi Zero's binary has little room.
var plainWords = [...]struct{ word, tag string }{
	{"", tagNull}, {"~", tagNull}, {"null", tagNull}, {"Null", tagNull}, {"NULL", tagNull},
	{"true", tagBool}, {"True", tagBool}, {"TRUE", tagBool},
	{"false", tagBool}, {"False", tagBool}, {"FALSE", tagBool},
	{".inf", tagFloat}, {".Inf", tagFloat}, {".INF", tagFloat},
	{"+.inf", tagFloat}, {"+.Inf", tagFloat}, {"+.INF", tagFloat},
	{"-.inf", tagFloat}, {"-.Inf", tagFloat}, {"-.INF", tagFloat},
	{".nan", tagFloat}, {".NaN", tagFloat}, {".NAN", tagFloat},
}

// resolve returns the tag of a plain scalar the way yaml.v3 resolves it.
func resolve(in string) string {
	for _, w := range plainWords {
		if in == w.word {
			return w.tag
		}
	}
	switch c := in[0]; {
	case c == '.':
		if _, err := strconv.ParseFloat(in, 64); err == nil {
			return tagFloat
		}
	case c >= '0' && c <= '9' || c == '+' || c == '-':
		if c >= '0' && c <= '9' && isTimestamp(in) {
			return tagTimestamp
		}
		plain := strings.ReplaceAll(in, "_", "")
		if _, err := strconv.ParseInt(plain, 0, 64); err == nil {
			return tagInt
		}
		if _, err := strconv.ParseUint(plain, 0, 64); err == nil {
			return tagInt
		}
		if isFloat(plain) {
			if _, err := strconv.ParseFloat(plain, 64); err == nil {
				return tagFloat
			}
		}
		// yaml.v3's own binary and octal forms, sign handling included.
		for _, f := range []struct {
			prefix string
			base   int
		}{{"0b", 2}, {"0o", 8}} {
			if d, ok := strings.CutPrefix(plain, f.prefix); ok {
				if _, err := strconv.ParseInt(d, f.base, 64); err == nil {
					return tagInt
				}
				if _, err := strconv.ParseUint(d, f.base, 64); err == nil {
					return tagInt
				}
			}
			if d, ok := strings.CutPrefix(plain, "-"+f.prefix); ok {
				if _, err := strconv.ParseInt("-"+d, f.base, 64); err == nil {
					return tagInt
				}
			}
		}
	}
	return tagStr
}

// isTimestamp reports whether yaml.v3 would read s as a timestamp.
func isTimestamp(s string) bool {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i != 4 || i == len(s) || s[i] != '-' {
		return false
	}
	for _, layout := range []string{"2006-1-2T15:4:5.999999999Z07:00", "2006-1-2t15:4:5.999999999Z07:00", "2006-1-2 15:4:5.999999999", "2006-1-2"} {
		if _, err := time.Parse(layout, s); err == nil {
			return true
		}
	}
	return false
}

// isFloat matches yaml.v3's float syntax:
// [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
func isFloat(s string) bool {
	t := s
	if t != "" && (t[0] == '+' || t[0] == '-') {
		t = t[1:]
	}
	i, digits := 0, 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
		digits++
	}
	if i < len(t) && t[i] == '.' {
		i++
		frac := 0
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
			frac++
		}
		if digits == 0 && frac == 0 {
			return false
		}
	} else if digits == 0 {
		return false
	}
	if i < len(t) && (t[i] == 'e' || t[i] == 'E') {
		i++
		if i < len(t) && (t[i] == '+' || t[i] == '-') {
			i++
		}
		exp := 0
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
			exp++
		}
		if exp == 0 {
			return false
		}
	}
	return i == len(t)
}
