// Package stepcabench measures standalone step-ca (the smallstep CA server,
// built from the Go module proxy by deploy/scripts/stepca-build.sh) issuing
// through its API with its intermediate key in a SoftHSM2 token and its
// default database, the comparison for govnet's CA figures (issue 3,
// docs/performance.md). It holds only a benchmark: go test -bench
// BenchmarkStepCAIssueAPI ./internal/stepcabench.
package stepcabench
