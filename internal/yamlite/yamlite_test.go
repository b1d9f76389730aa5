package yamlite

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// same reports how a yamlite tree differs from yaml.v3's, or "".
func same(a *Node, b *yaml.Node, path string) string {
	if a.Kind != Kind(b.Kind) {
		return fmt.Sprintf("%s: kind %d vs %d", path, a.Kind, b.Kind)
	}
	if a.Kind == ScalarNode && (a.Value != b.Value || a.Tag != b.Tag) {
		return fmt.Sprintf("%s: scalar %q %s vs %q %s", path, a.Value, a.Tag, b.Value, b.Tag)
	}
	if a.Kind != DocumentNode && !(a.Kind == ScalarNode && a.Tag == tagNull && a.Value == "") {
		if a.Line != b.Line || a.Column != b.Column {
			return fmt.Sprintf("%s (%q): at %d:%d vs %d:%d", path, a.Value, a.Line, a.Column, b.Line, b.Column)
		}
	}
	if len(a.Content) != len(b.Content) {
		return fmt.Sprintf("%s: %d children vs %d", path, len(a.Content), len(b.Content))
	}
	for i := range a.Content {
		if d := same(a.Content[i], b.Content[i], fmt.Sprintf("%s/%d", path, i)); d != "" {
			return d
		}
	}
	return ""
}

// agree checks that a document yamlite accepts reads the same in yaml.v3.
func agree(t *testing.T, doc string) bool {
	t.Helper()
	var got Node
	if err := Unmarshal([]byte(doc), &got); err != nil {
		return false
	}
	var want yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &want); err != nil {
		t.Fatalf("yamlite accepted what yaml.v3 refuses (%v):\n%s", err, doc)
	}
	if d := same(&got, &want, ""); d != "" {
		t.Fatalf("trees differ: %s\n%s", d, doc)
	}
	return true
}

func TestAgreesWithYAMLv3(t *testing.T) {
	example, err := os.ReadFile("../../deploy/agent.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := []string{
		string(example),
		"a: 1\nb: two\nc: 'three # not a comment'\nd: \"q\\tx\"\n",
		"list:\n- a\n- b\n-\n- [1, 2, \"x\"]\n",
		"gpio:\n  - name: led\n    pin: GPIO17\n    active_low: true\n  - name: b\n    debounce: 20ms\n",
		"---\nrelay: wss://relay.example.com:8443/v1/agent\ncredits: 0x10\nx: ~\ny:\nz: {}\n",
		"- - a\n  - b\n- c\n",
		"k: it's fine\nn: -12\nf: 1.5e3\nd: 2001-12-14\no: 0o17\nb: 0b101\ne: []\n",
		"  indented: root\n  second: 2\n",
		"key: value   # trailing comment\n# full comment\n\n\nother: 'it''s'\n",
		"just a scalar\n",
		"addresses: [0x48, 0x50]\n",
		"gpio:\n- {name: led, pin: GPIO17, active_low: true}\n- {'name': \"b\", pin: x}\nz: {}\n",
		"dup: 1\ndup: 2\n",
	}
	for _, d := range docs {
		if !agree(t, d) {
			t.Errorf("refused a supported document:\n%s", d)
		}
	}
}

func TestRefusesUnsupportedWithLine(t *testing.T) {
	tests := []struct{ doc, msg string }{
		{"a: 1\nb: &x 2\n", "anchors"},
		{"a: 1\nb: *x\n", "anchors"},
		{"a: !!str 1\n", "tags"},
		{"a: |\n  text\n", "block scalars"},
		{"a: {b: [[1]]}\n", "nested flow"},
		{"a: 1\n---\nb: 2\n", "one document"},
		{"a:\n\tb: 1\n", "tabs"},
		{"a: b: c\n", "not allowed"},
		{"a: [1, 2\n", "close with ]"},
		{"a: 'open\n", "close on the same line"},
		{"a: 1\n  b: 2\n", "indentation"},
		{"a: [[1]]\n", "nested flow"},
		{"%YAML 1.2\n---\na: 1\n", "directives"},
	}
	for _, tt := range tests {
		var n Node
		err := Unmarshal([]byte(tt.doc), &n)
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%q: error %v, want one mentioning %q", tt.doc, err, tt.msg)
			continue
		}
		if se, ok := err.(*SyntaxError); !ok || se.Line == 0 {
			t.Errorf("%q: %v has no line", tt.doc, err)
		}
	}
}

func TestDecode(t *testing.T) {
	var doc Node
	if err := Unmarshal([]byte("s: 1\nb: yes\ni: 0x48\nd: 20ms\nl: [0x48, 80]\nbad: [70000]\nss: [a, 'b']\n"), &doc); err != nil {
		t.Fatal(err)
	}
	m := doc.Content[0].Content
	var s string
	var b bool
	var i int
	var d time.Duration
	var l []uint16
	var ss []string
	for _, step := range []struct {
		idx int
		v   any
	}{{1, &s}, {3, &b}, {5, &i}, {7, &d}, {9, &l}, {13, &ss}} {
		if err := m[step.idx].Decode(step.v); err != nil {
			t.Fatalf("decode %d: %v", step.idx, err)
		}
	}
	if s != "1" || !b || i != 0x48 || d != 20*time.Millisecond || len(l) != 2 || l[1] != 80 || ss[1] != "b" {
		t.Fatalf("decoded %q %v %d %v %v %v", s, b, i, d, l, ss)
	}
	if err := m[11].Decode(&l); err == nil {
		t.Fatal("70000 accepted as a 16-bit address")
	}
	if err := m[1].Decode(&d); err == nil {
		t.Fatal("1 accepted as a duration")
	}
}

// FuzzAgreesWithYAMLv3 is the differential test: whatever yamlite accepts,
// yaml.v3 must read to the same tree.
func FuzzAgreesWithYAMLv3(f *testing.F) {
	for _, s := range []string{
		"a: 1\n", "- x\n- y: 2\n  z: [1, 'a']\n", "k: \"\\u00e9\"\n", "a:\n  b:\n    c: d\n",
		"gpio:\n- name: led\n  pin: GPIO17\n", "x: 1.5\ny: .5\nz: -0b11\n", "a: 'x''y' # c\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		var got Node
		if Unmarshal([]byte(doc), &got) != nil {
			return
		}
		var want yaml.Node
		if err := yaml.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatalf("yamlite accepted what yaml.v3 refuses (%v):\n%q", err, doc)
		}
		if d := same(&got, &want, ""); d != "" {
			t.Fatalf("trees differ: %s\n%q", d, doc)
		}
	})
}

// A byte order mark, which some editors write at the start of a UTF-8
// file, is not part of the document: the file reads as it would without.
func TestByteOrderMark(t *testing.T) {
	var with, without Node
	if err := Unmarshal([]byte("\ufeffrelay: wss://relay.example.com\nboard: mock\n"), &with); err != nil {
		t.Fatal(err)
	}
	if err := Unmarshal([]byte("relay: wss://relay.example.com\nboard: mock\n"), &without); err != nil {
		t.Fatal(err)
	}
	got, want := with.Content[0].Content, without.Content[0].Content
	if len(got) != len(want) {
		t.Fatalf("%d nodes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Value != want[i].Value {
			t.Errorf("node %d: %q, want %q", i, got[i].Value, want[i].Value)
		}
	}
}
