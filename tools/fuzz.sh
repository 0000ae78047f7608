#!/usr/bin/env bash
# Runs every fuzz target of every module for FUZZTIME each, then copies the
# inputs the fuzzer found interesting from Go's cache into the package's
# testdata/fuzz/<Target>/, so the corpus is kept in the repository and
# replayed by every plain `go test` run.
set -euo pipefail
FUZZTIME=${FUZZTIME:-30s}
cache=$(go env GOCACHE)/fuzz
root=$(pwd)
for mod in $(go list -m -f '{{.Dir}}'); do
	cd "$mod"
	{ grep -rl --include='*_test.go' '^func Fuzz' . || true; } | xargs -r -n1 dirname | sort -u | while read -r dir; do
		pkg=$(go list "$dir")
		for target in $(grep -h -o '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | cut -d' ' -f2); do
			echo "=== $pkg $target ($FUZZTIME)"
			go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$dir"
			if [ -d "$cache/$pkg/$target" ]; then
				mkdir -p "$dir/testdata/fuzz/$target"
				cp -n "$cache/$pkg/$target"/* "$dir/testdata/fuzz/$target/" 2>/dev/null || true
			fi
		done
	done
	cd "$root"
done
