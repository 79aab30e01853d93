package loadtest

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/hsm/hsmtest"
)

func TestMain(m *testing.M) {
	RunWorkerIfChild()
	os.Exit(m.Run())
}

// TestRunSmall runs the whole harness at 50 gateways: a real cluster, the
// fleet enrolled through the API, two worker processes, two publications,
// two joins, two revocations and a re-issue of every certificate. Then
// again on the kept cluster, whose identities file must hold the renewed
// certificates (the controllers refuse the old ones).
func TestRunSmall(t *testing.T) {
	hsmtest.Require(t)
	if testing.Short() {
		t.Skip("builds govnetd and runs a 3-node cluster")
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "../../cmd/govnetd")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build govnetd: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const n = 50
	apiPort, raftPort := freePort(t), freePort(t)
	o := Options{
		Gateways: n, Govnetd: filepath.Join(bin, "govnetd"), Workers: 2, Rounds: 2, Changes: 2,
		ReportEvery: 2 * time.Second, Log: testLog{t}, CacheDir: t.TempDir(), APIPort: apiPort, RaftPort: raftPort,
	}
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *res)
	if res.FinalVersion != 3 {
		t.Errorf("final policy version %d, want 3 (first, then two rounds)", res.FinalVersion)
	}
	if res.Acked != n || res.Reported != n {
		t.Errorf("policy version %d: acknowledged by %d and reported to the controllers by %d of %d gateways", res.FinalVersion, res.Acked, res.Reported, n)
	}
	if res.EnrollSeconds <= 0 || res.FanoutMax <= 0 || res.FanoutP50 > res.FanoutP99 || res.FanoutP99 > res.FanoutMax {
		t.Errorf("fan-out figures out of order: enroll %v, p50 %v, p99 %v, max %v", res.EnrollSeconds, res.FanoutP50, res.FanoutP99, res.FanoutMax)
	}
	if res.RevokeP99 <= 0 || res.RSSAfter <= 0 || res.RSSBefore <= 0 {
		t.Errorf("revocation or memory not measured: %+v", *res)
	}
	if res.ReissueP50 <= 0 || res.ReissueP50 > res.ReissueSeconds {
		t.Errorf("re-issue figures out of order: median %v, last %v", res.ReissueP50, res.ReissueSeconds)
	}
	// Each renewal costs the nodes at least a signature and a lint, and
	// the gateway a key and a CSR: a zero says the processes were not
	// measured.
	if res.ReissueNodeCPU <= 0 || res.ReissueGatewayCPU <= 0 {
		t.Errorf("re-issue CPU per renewal: nodes %v s, gateways %v s", res.ReissueNodeCPU, res.ReissueGatewayCPU)
	}
	if t.Failed() {
		return
	}
	o.Rounds, o.Changes = 1, 1
	again, err := Run(ctx, o)
	if err != nil {
		t.Fatalf("the kept cluster with the renewed identities: %v", err)
	}
	if again.EnrollSeconds != 0 || again.Acked != n {
		t.Errorf("second run: enrolled again (%vs) or %d of %d acknowledged", again.EnrollSeconds, again.Acked, n)
	}
}

// freePort returns a port free on the harness's first node address.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.11:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestCountReissue: the ready mark counts the re-issues a kept cluster
// went through, which retire it at maxKeptReissues.
func TestCountReissue(t *testing.T) {
	mark := []byte(`{"Gateways":50,"APIPort":17443}`)
	for want := 1; want <= maxKeptReissues; want++ {
		mark = countReissue(mark)
		var st struct{ Gateways, APIPort, Reissues int }
		if err := json.Unmarshal(mark, &st); err != nil || st.Reissues != want || st.Gateways != 50 || st.APIPort != 17443 {
			t.Fatalf("mark %s (%v): want %d re-issues, the rest kept", mark, err, want)
		}
	}
}
