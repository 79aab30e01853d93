package yamlfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type conf struct {
	Name string   `yaml:"name"`
	Port int      `yaml:"port"`
	Tags []string `yaml:"tags"`
}

func TestDecode(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c := conf{Name: "default", Port: 1}
	if err := Decode(write("port: 2\n"), &c); err != nil || c.Name != "default" || c.Port != 2 {
		t.Fatalf("%+v %v", c, err)
	}
	for _, tt := range []struct{ src, want string }{
		{"prot: 2\n", `unknown field "prot"`},
		{"name: x\nport: abc\n", "[2:7]"},
		{"tags:\n  ! #x\n", "YAML decoder failed"}, // the decoder panics on this
	} {
		err := Decode(write(tt.src), &c)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "c.yaml") {
			t.Errorf("%q: got %v, want an error naming c.yaml and %q", tt.src, err, tt.want)
		}
	}
	if err := Decode(filepath.Join(dir, "missing.yaml"), &c); err == nil {
		t.Error("missing file accepted")
	}
}
