package main

import (
	"os"
	"path/filepath"
)

// defaultStoreURL is the embedded default: a local directory store, so
// convert and mount work on one machine with nothing else running.
// SKIFF_STORE overrides it for every command.
func defaultStoreURL() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return "file://" + filepath.Join(dir, "skiff", "store")
}

const storeFlagHelp = "blob store: file:///abs/path or s3://bucket?endpoint=host:port[&insecure=true] (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; default $SKIFF_STORE or a local directory)"
