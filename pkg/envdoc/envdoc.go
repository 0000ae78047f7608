// Package envdoc prints the settings of a service configured from the
// environment with caarlos0/env: every variable, its default and the
// meaning given in the field's help tag, so `--help` can never drift from
// the struct that is actually parsed.
package envdoc

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"

	"github.com/caarlos0/env/v11"
)

// Write lists the variables of the config struct type T, as parsed with
// opts (which may give every variable a prefix).
func Write[T any](w io.Writer, opts env.Options) error {
	var zero T
	params, err := env.GetFieldParamsWithOptions(&zero, opts)
	if err != nil {
		return fmt.Errorf("envdoc: %w", err)
	}
	help := map[string]string{}
	for f := range reflect.TypeFor[T]().Fields() {
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		help[key] = f.Tag.Get("help")
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, p := range params {
		def := p.DefaultValue
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Key, def, help[p.OwnKey])
	}
	return tw.Flush()
}
