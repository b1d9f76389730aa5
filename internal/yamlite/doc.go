// Package yamlite reads the YAML that tether's configuration files use: block
// mappings and sequences, flow sequences of scalars, plain and quoted
// scalars, and comments. It builds a node tree with line numbers, shaped like
// go.yaml.in/yaml/v3's Node, so configuration code can report the line and
// field of every mistake.
//
// Why not yaml.v3 itself: the agent must fit a Pi Zero's 6 MiB binary
// budget, and yaml.v3 (with the regexp and unicode tables it pulls in) costs
// about a quarter of a megabyte of it. Configuration files need none of
// YAML's harder parts, so they are refused with a clear error instead:
// anchors and aliases, tags, block scalars (| and >), flow mappings other
// than {}, multi-line plain scalars and multiple documents. Everything this
// package accepts, yaml.v3 reads to the same tree; a differential fuzz test
// holds it to that.
package yamlite
