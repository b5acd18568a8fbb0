// Package conformance runs the official Gateway API conformance suite against
// the e2e cluster (see ../README.md). The suite's test file lands together
// with the controller; this module already pins the version it will run.
package conformance
