// Package yamlfile reads govnet's YAML configuration files strictly: an
// unknown key is an error, and errors name the file, line and column.
package yamlfile

import (
	"bytes"
	"fmt"
	"os"

	"github.com/goccy/go-yaml"
)

// Decode reads the YAML file at path over the values already in v.
func Decode(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := decode(data, v); err != nil {
		return fmt.Errorf("config %s: %s", path, yaml.FormatError(err, false, true))
	}
	return nil
}

// decode decodes strictly, turning a panic of the YAML decoder (it has
// some on malformed input) into an error.
func decode(data []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("YAML decoder failed: %v", r)
		}
	}()
	return yaml.NewDecoder(bytes.NewReader(data), yaml.DisallowUnknownField()).Decode(v)
}
