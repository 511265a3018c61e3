package main

import _ "embed"

// The shipped lab, built in so `mta lab` runs with no files at hand. The
// user-facing copies are configs/lab.zone and configs/lab.yaml;
// TestLabFilesMatchConfigs keeps these identical to them (go:embed cannot
// reach ../../configs).
var (
	//go:embed labdata/lab.zone
	labZone string
	//go:embed labdata/lab.yaml
	labYAML []byte
)
