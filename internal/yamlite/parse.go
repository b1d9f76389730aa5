package yamlite

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxSize bounds a document; configuration files are a few kilobytes.
const MaxSize = 1 << 20

// maxKey is YAML's limit on an implicit key's length.
const maxKey = 1024

// maxDepth bounds nesting, so a hostile file cannot exhaust the stack.
const maxDepth = 64

// line is one non-blank source line with its comment removed.
type line struct {
	num    int    // 1-based line number
	indent int    // leading spaces
	text   string // content after the indentation
}

type parser struct {
	lines []line
	pos   int
	depth int
}

// Unmarshal parses data into doc. An empty document leaves doc zero, as
// yaml.v3 does.
func Unmarshal(data []byte, doc *Node) error {
	*doc = Node{}
	if len(data) > MaxSize {
		return &SyntaxError{Line: 1, Msg: fmt.Sprintf("document of %d bytes is over the %d byte limit", len(data), MaxSize)}
	}
	if !utf8.Valid(data) {
		return &SyntaxError{Line: 1, Msg: "document is not valid UTF-8"}
	}
	lines, marker, err := split(data)
	if err != nil {
		return err
	}
	if len(lines) == 0 {
		if marker { // "---" alone is a document holding null
			*doc = Node{Kind: DocumentNode, Line: 1, Column: 1, Content: []*Node{{Kind: ScalarNode, Tag: tagNull, Line: 1, Column: 1}}}
		}
		return nil
	}
	p := &parser{lines: lines}
	root, err := p.block(lines[0].indent)
	if err != nil {
		return err
	}
	if p.pos < len(p.lines) {
		return p.errorf(p.lines[p.pos], "unexpected content at indentation %d", p.lines[p.pos].indent)
	}
	runeColumns(root, data)
	*doc = Node{Kind: DocumentNode, Line: root.Line, Column: root.Column, Content: []*Node{root}}
	return nil
}

func (p *parser) errorf(l line, format string, args ...any) error {
	return &SyntaxError{Line: l.num, Msg: fmt.Sprintf(format, args...)}
}

// runeColumns turns the byte columns the parser records into character
// columns, as editors (and yaml.v3) count them.
func runeColumns(n *Node, data []byte) {
	raw := bytes.Split(data, []byte("\n"))
	var walk func(*Node)
	walk = func(n *Node) {
		if n.Line >= 1 && n.Line <= len(raw) && n.Column > 1 {
			if src := raw[n.Line-1]; n.Column-1 <= len(src) {
				n.Column = utf8.RuneCount(src[:n.Column-1]) + 1
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
}

// split turns data into lines, dropping blank lines, comments and the
// document markers, and refusing tabs in indentation and directives.
func split(data []byte) (out []line, marker bool, err error) {
	// A byte order mark, which some editors write at the start of a
	// UTF-8 file, is not part of the document.
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	raw := bytes.Split(data, []byte("\n"))
	started := false
	for i, b := range raw {
		s := strings.TrimSuffix(string(b), "\r")
		num := i + 1
		for _, r := range s {
			if !printable(r) {
				return nil, false, &SyntaxError{Line: num, Msg: fmt.Sprintf("character %U is not allowed", r)}
			}
		}
		indent := 0
		for indent < len(s) && s[indent] == ' ' {
			indent++
		}
		text := s[indent:]
		if strings.HasPrefix(text, "\t") {
			return nil, false, &SyntaxError{Line: num, Msg: "tabs are not allowed for indentation; use spaces"}
		}
		text, tab := stripComment(text)
		if tab {
			return nil, false, &SyntaxError{Line: num, Msg: "tabs are only allowed inside quoted values; use spaces"}
		}
		text = strings.TrimRight(text, " ")
		if text == "" {
			continue
		}
		if indent == 0 {
			switch {
			case text == "---" && !started:
				started, marker = true, true
				continue
			case text == "---" || strings.HasPrefix(text, "--- "):
				return nil, false, &SyntaxError{Line: num, Msg: "only one document per file is supported"}
			case text == "..." || strings.HasPrefix(text, "... "):
				return nil, false, &SyntaxError{Line: num, Msg: "document end markers (...) are not supported"}
			case text[0] == '%':
				return nil, false, &SyntaxError{Line: num, Msg: "directives are not supported"}
			}
		}
		started = true
		out = append(out, line{num: num, indent: indent, text: text})
	}
	return out, marker, nil
}

// printable is YAML's set of characters allowed in a document, without the
// ones YAML 1.1 reads as line breaks (U+0085, U+2028, U+2029) and the byte
// order mark, which config files do not need.
func printable(r rune) bool {
	switch {
	case r == '\t', r >= 0x20 && r <= 0x7e:
		return true
	case r == 0x2028 || r == 0x2029: // line separators: YAML 1.1 breaks lines there
		return false
	case r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd && r != 0xfeff, r >= 0x10000 && r <= 0x10ffff:
		return true
	}
	return false
}

// stripComment removes a # comment that is not inside a quoted scalar, and
// reports whether a tab stands outside quotes.
func stripComment(s string) (text string, tab bool) {
	var quote byte
	flow := 0 // depth of [ and { opened on this line
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '"':
			if c == '\\' {
				i++
			} else if c == '"' {
				quote = 0
			}
		case quote == '\'':
			if c == '\'' {
				if i+1 < len(s) && s[i+1] == '\'' {
					i++
				} else {
					quote = 0
				}
			}
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return s[:i], tab
		case c == '\t':
			tab = true
		case (c == '[' || c == '{') && scalarStart(s[:i], flow):
			flow++
		case (c == ']' || c == '}') && flow > 0:
			flow--
		case (c == '"' || c == '\'') && scalarStart(s[:i], flow):
			quote = c
		}
	}
	return s, tab
}

// scalarStart reports whether a scalar can begin right after prefix: at
// the start of the line, after "key: " or "- ", or inside a flow
// collection after [ { or ,.
func scalarStart(prefix string, flow int) bool {
	t := strings.TrimRight(prefix, " \t")
	if t == "" {
		return true
	}
	last := t[len(t)-1]
	if flow > 0 && strings.IndexByte("[{,", last) >= 0 {
		return true
	}
	if len(t) == len(prefix) {
		return false // no space: the quote is inside a plain scalar
	}
	return last == ':' || onlyDashes(t)
}

// onlyDashes reports whether t is nothing but sequence indicators: "-",
// "- -", "-  - -"… A dash inside a plain scalar ("0 -") is not one.
func onlyDashes(t string) bool {
	for _, f := range strings.Fields(t) {
		if f != "-" {
			return false
		}
	}
	return t != ""
}

func isSeqEntry(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// block parses the node that starts at the current line, whose indentation
// is indent.
func (p *parser) block(indent int) (*Node, error) {
	if p.depth++; p.depth > maxDepth {
		return nil, p.errorf(p.lines[p.pos], "nesting deeper than %d levels", maxDepth)
	}
	defer func() { p.depth-- }()
	l := p.lines[p.pos]
	if isSeqEntry(l.text) {
		return p.sequence(indent)
	}
	if _, _, ok, err := mapKey(l, indent); err != nil {
		return nil, err
	} else if ok {
		return p.mapping(indent)
	}
	p.pos++
	n, err := p.value(l, l.text, indent)
	if err != nil {
		return nil, err
	}
	if p.pos < len(p.lines) && p.lines[p.pos].indent > indent {
		return nil, p.errorf(p.lines[p.pos], "multi-line scalars are not supported; put the value on one line")
	}
	return n, nil
}

// mapKey reports whether l starts a mapping entry and returns its key and
// the text after the colon.
func mapKey(l line, indent int) (key *Node, rest string, ok bool, err error) {
	text := l.text
	col := indent + 1
	if text[0] == '"' || text[0] == '\'' {
		val, end, err := quoted(l, text, 0, col)
		if err != nil {
			return nil, "", false, err
		}
		after := strings.TrimLeft(text[end:], " ")
		if !strings.HasPrefix(after, ":") || (len(after) > 1 && after[1] != ' ') {
			return nil, "", false, nil
		}
		return &Node{Kind: ScalarNode, Tag: tagStr, Value: val, Line: l.num, Column: col}, strings.TrimLeft(after[1:], " "), true, nil
	}
	if strings.IndexByte("[{", text[0]) >= 0 || isSeqEntry(text) {
		return nil, "", false, nil
	}
	i := colon(text)
	if i < 0 {
		return nil, "", false, nil
	}
	k := strings.TrimRight(text[:i], " ")
	if len(k) > maxKey {
		return nil, "", false, &SyntaxError{Line: l.num, Msg: fmt.Sprintf("mapping key longer than %d bytes", maxKey)}
	}
	if err := checkPlain(l, k, col); err != nil {
		return nil, "", false, err
	}
	return &Node{Kind: ScalarNode, Tag: resolve(k), Value: k, Line: l.num, Column: col}, strings.TrimLeft(text[i+1:], " "), true, nil
}

// colon finds a ':' followed by a space or the end of text, or -1.
func colon(text string) int {
	for i := 0; i < len(text); i++ {
		if text[i] == ':' && (i+1 == len(text) || text[i+1] == ' ') {
			return i
		}
	}
	return -1
}

// checkPlain refuses plain scalars that start with a YAML indicator this
// package does not support, with an error that says what was found.
func checkPlain(l line, s string, col int) error {
	if s == "" {
		return &SyntaxError{Line: l.num, Msg: "empty mapping key"}
	}
	if s == "<<" {
		return &SyntaxError{Line: l.num, Msg: "merge keys (<<) are not supported"}
	}
	switch c := s[0]; {
	case c == '&' || c == '*':
		return &SyntaxError{Line: l.num, Msg: "anchors and aliases (& and *) are not supported"}
	case c == '!':
		return &SyntaxError{Line: l.num, Msg: "tags (!) are not supported"}
	case c == '|' || c == '>':
		return &SyntaxError{Line: l.num, Msg: "block scalars (| and >) are not supported; put the value on one line"}
	case strings.IndexByte("%@`", c) >= 0:
		return &SyntaxError{Line: l.num, Msg: fmt.Sprintf("a plain value cannot start with %q; quote it", c)}
	case c == '?' && (len(s) == 1 || s[1] == ' '):
		return &SyntaxError{Line: l.num, Msg: "complex mapping keys (?) are not supported"}
	case strings.IndexByte(",[]{}#", c) >= 0:
		return &SyntaxError{Line: l.num, Msg: fmt.Sprintf("unexpected %q", c)}
	case c == '-' && (len(s) == 1 || s[1] == ' '):
		return &SyntaxError{Line: l.num, Msg: "a sequence entry cannot appear here"}
	}
	if strings.Contains(s, ": ") || strings.HasSuffix(s, ":") {
		return &SyntaxError{Line: l.num, Msg: "mapping values are not allowed in this context"}
	}
	return nil
}

func (p *parser) mapping(indent int) (*Node, error) {
	m := &Node{Kind: MappingNode, Tag: tagMap, Line: p.lines[p.pos].num, Column: indent + 1}
	for p.pos < len(p.lines) && p.lines[p.pos].indent == indent {
		l := p.lines[p.pos]
		key, rest, ok, err := mapKey(l, indent)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, p.errorf(l, "expected a key: value line at this indentation")
		}
		p.pos++
		var val *Node
		switch {
		case rest != "":
			val, err = p.value(l, rest, indent+len(l.text)-len(rest))
		case p.pos < len(p.lines) && p.lines[p.pos].indent > indent:
			val, err = p.block(p.lines[p.pos].indent)
		case p.pos < len(p.lines) && p.lines[p.pos].indent == indent && isSeqEntry(p.lines[p.pos].text):
			val, err = p.sequence(indent)
		default:
			val = &Node{Kind: ScalarNode, Tag: tagNull, Line: l.num, Column: indent + len(l.text) + 1}
		}
		if err != nil {
			return nil, err
		}
		m.Content = append(m.Content, key, val)
	}
	if p.pos < len(p.lines) && p.lines[p.pos].indent > indent {
		return nil, p.errorf(p.lines[p.pos], "unexpected indentation")
	}
	return m, nil
}

func (p *parser) sequence(indent int) (*Node, error) {
	s := &Node{Kind: SequenceNode, Tag: tagSeq, Line: p.lines[p.pos].num, Column: indent + 1}
	for p.pos < len(p.lines) && p.lines[p.pos].indent == indent && isSeqEntry(p.lines[p.pos].text) {
		l := p.lines[p.pos]
		rest := strings.TrimLeft(l.text[1:], " ")
		restIndent := indent + len(l.text) - len(rest)
		var item *Node
		var err error
		if rest == "" {
			p.pos++
			if p.pos < len(p.lines) && p.lines[p.pos].indent > indent {
				item, err = p.block(p.lines[p.pos].indent)
			} else {
				item = &Node{Kind: ScalarNode, Tag: tagNull, Line: l.num, Column: indent + 2}
			}
		} else {
			// "- key: value" and "- - item" open a nested block whose
			// first line starts at the item's column.
			sub := line{num: l.num, indent: restIndent, text: rest}
			_, _, isMap, kerr := mapKey(sub, restIndent)
			if kerr != nil {
				return nil, kerr
			}
			if isMap || isSeqEntry(rest) {
				p.lines[p.pos] = sub
				item, err = p.block(restIndent)
			} else {
				p.pos++
				item, err = p.value(l, rest, restIndent)
			}
		}
		if err != nil {
			return nil, err
		}
		s.Content = append(s.Content, item)
	}
	if p.pos < len(p.lines) && p.lines[p.pos].indent > indent {
		return nil, p.errorf(p.lines[p.pos], "unexpected indentation")
	}
	return s, nil
}

// value parses an inline value: a quoted or plain scalar, a flow sequence
// of scalars, or {}. offset is the 0-based column where text starts.
func (p *parser) value(l line, text string, offset int) (*Node, error) {
	col := offset + 1
	switch text[0] {
	case '"', '\'':
		val, end, err := quoted(l, text, 0, col)
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(text[end:]) != "" {
			return nil, p.errorf(l, "unexpected text after the quoted value")
		}
		return &Node{Kind: ScalarNode, Tag: tagStr, Value: val, Line: l.num, Column: col}, nil
	case '[':
		n, end, err := flowSeq(l, text, 0, col)
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(text[end:]) != "" {
			return nil, &SyntaxError{Line: l.num, Msg: "unexpected text after ]"}
		}
		return n, nil
	case '{':
		return flowMap(l, text, col)
	}
	if err := checkPlain(l, text, col); err != nil {
		return nil, err
	}
	return &Node{Kind: ScalarNode, Tag: resolve(text), Value: text, Line: l.num, Column: col}, nil
}

// flowMap parses a one-line flow mapping of scalars: {name: led, pin: GPIO17}.
func flowMap(l line, text string, col int) (*Node, error) {
	m := &Node{Kind: MappingNode, Tag: tagMap, Line: l.num, Column: col}
	i := 1
	for {
		i = skipSpaces(text, i)
		if i >= len(text) {
			return nil, &SyntaxError{Line: l.num, Msg: "flow mapping must close with } on the same line"}
		}
		if text[i] == '}' && len(m.Content) == 0 {
			i++
			break
		}
		key, end, err := flowScalar(l, text, i, col, true)
		if err != nil {
			return nil, err
		}
		i = skipSpaces(text, end)
		if i >= len(text) || text[i] != ':' {
			return nil, &SyntaxError{Line: l.num, Msg: "want key: value in flow mapping"}
		}
		i = skipSpaces(text, i+1)
		if i >= len(text) || text[i] == ',' || text[i] == '}' {
			return nil, &SyntaxError{Line: l.num, Msg: "empty value in flow mapping; write null"}
		}
		var val *Node
		if text[i] == '[' {
			val, end, err = flowSeq(l, text, i, col)
		} else {
			val, end, err = flowScalar(l, text, i, col, false)
		}
		if err != nil {
			return nil, err
		}
		m.Content = append(m.Content, key, val)
		i = skipSpaces(text, end)
		if i < len(text) && text[i] == ',' {
			i++
			continue
		}
		if i < len(text) && text[i] == '}' {
			i++
			break
		}
		if i >= len(text) {
			return nil, &SyntaxError{Line: l.num, Msg: "flow mapping must close with } on the same line"}
		}
		return nil, &SyntaxError{Line: l.num, Msg: "expected , or } in flow mapping"}
	}
	if strings.TrimSpace(text[i:]) != "" {
		return nil, &SyntaxError{Line: l.num, Msg: "unexpected text after }"}
	}
	return m, nil
}

func skipSpaces(text string, i int) int {
	for i < len(text) && text[i] == ' ' {
		i++
	}
	return i
}

// flowScalar parses a scalar inside a flow collection starting at text[i].
// A key ends at ':'; any scalar ends at ',', ']' or '}'.
func flowScalar(l line, text string, i, col int, isKey bool) (*Node, int, error) {
	switch text[i] {
	case '"', '\'':
		val, end, err := quoted(l, text, i, col+i)
		if err != nil {
			return nil, 0, err
		}
		return &Node{Kind: ScalarNode, Tag: tagStr, Value: val, Line: l.num, Column: col + i}, end, nil
	case '[', '{':
		return nil, 0, &SyntaxError{Line: l.num, Msg: "nested flow collections are not supported"}
	case '?', ':':
		return nil, 0, &SyntaxError{Line: l.num, Msg: fmt.Sprintf("quote flow entries that start with %q", text[i])}
	}
	j := i
	for j < len(text) && text[j] != ',' && text[j] != ']' && text[j] != '}' {
		if text[j] == ':' && (j+1 == len(text) || strings.IndexByte(" ,]}", text[j+1]) >= 0) {
			if !isKey {
				return nil, 0, &SyntaxError{Line: l.num, Msg: "mappings inside flow values are not supported"}
			}
			break
		}
		j++
	}
	v := strings.TrimRight(text[i:j], " ")
	if v == "" {
		return nil, 0, &SyntaxError{Line: l.num, Msg: "empty entry in flow collection"}
	}
	if err := checkPlain(l, v, col+i); err != nil {
		return nil, 0, err
	}
	if strings.ContainsAny(v, "[]{}#?:") {
		return nil, 0, &SyntaxError{Line: l.num, Msg: "quote flow entries that contain [ ] { } # ? or :"}
	}
	if isKey && len(v) > maxKey {
		return nil, 0, &SyntaxError{Line: l.num, Msg: fmt.Sprintf("mapping key longer than %d bytes", maxKey)}
	}
	return &Node{Kind: ScalarNode, Tag: resolve(v), Value: v, Line: l.num, Column: col + i}, j, nil
}

// flowSeq parses a one-line flow sequence of scalars, [a, "b", 0x48],
// starting at text[start], and returns the index just past its ].
func flowSeq(l line, text string, start, col int) (*Node, int, error) {
	s := &Node{Kind: SequenceNode, Tag: tagSeq, Line: l.num, Column: col + start}
	i := start + 1
	for {
		i = skipSpaces(text, i)
		if i >= len(text) {
			return nil, 0, &SyntaxError{Line: l.num, Msg: "flow sequence must close with ] on the same line"}
		}
		if text[i] == ']' && len(s.Content) == 0 {
			return s, i + 1, nil
		}
		item, end, err := flowScalar(l, text, i, col, false)
		if err != nil {
			return nil, 0, err
		}
		s.Content = append(s.Content, item)
		i = skipSpaces(text, end)
		switch {
		case i < len(text) && text[i] == ',':
			i++
		case i < len(text) && text[i] == ']':
			return s, i + 1, nil
		case i >= len(text):
			return nil, 0, &SyntaxError{Line: l.num, Msg: "flow sequence must close with ] on the same line"}
		default:
			return nil, 0, &SyntaxError{Line: l.num, Msg: "expected , or ] in flow sequence"}
		}
	}
}

// quoted parses the quoted scalar starting at text[i] and returns its value
// and the index just past the closing quote.
func quoted(l line, text string, i, col int) (string, int, error) {
	q := text[i]
	var b strings.Builder
	for j := i + 1; j < len(text); j++ {
		c := text[j]
		switch {
		case q == '\'' && c == '\'':
			if j+1 < len(text) && text[j+1] == '\'' {
				b.WriteByte('\'')
				j++
				continue
			}
			return b.String(), j + 1, nil
		case q == '"' && c == '"':
			return b.String(), j + 1, nil
		case q == '"' && c == '\\':
			if j+1 >= len(text) {
				return "", 0, &SyntaxError{Line: l.num, Msg: "unfinished escape in double-quoted value"}
			}
			j++
			r, n, err := unescape(text[j:])
			if err != nil {
				return "", 0, &SyntaxError{Line: l.num, Msg: err.Error()}
			}
			b.WriteString(r)
			j += n - 1
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, &SyntaxError{Line: l.num, Msg: "quoted value must close on the same line"}
}

// escapeChars are the single-character escapes of a double-quoted value,
// escapeValues what each stands for. A table, not a map literal: that
// compiles to code that builds the map, on every call.
const escapeChars = "0abt\tnvfre \"\\N_LP"

var escapeValues = [...]string{"\x00", "\a", "\b", "\t", "\t", "\n", "\v", "\f", "\r", "\x1b", " ", "\"", "\\",
	"\u0085", "\u00a0", "\u2028", "\u2029"}

// unescape decodes the escape at the start of s (after the backslash) and
// returns it with the number of bytes used.
func unescape(s string) (string, int, error) {
	if i := strings.IndexByte(escapeChars, s[0]); i >= 0 {
		return escapeValues[i], 1, nil
	}
	width := 0
	switch s[0] {
	case 'x':
		width = 2
	case 'u':
		width = 4
	case 'U':
		width = 8
	}
	if width == 0 || len(s) < 1+width {
		return "", 0, fmt.Errorf("unknown escape \\%c in double-quoted value", s[0])
	}
	v, err := strconv.ParseUint(s[1:1+width], 16, 32)
	if err != nil || !utf8.ValidRune(rune(v)) {
		return "", 0, fmt.Errorf("bad escape \\%s in double-quoted value", s[:1+width])
	}
	return string(rune(v)), 1 + width, nil
}
