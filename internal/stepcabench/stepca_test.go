package stepcabench

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
	"go.step.sm/crypto/jose"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

// clients is the number of concurrent clients, the same as govnet's
// controller BenchmarkIssueAPI.
const clients = 16

// stepCA is a running step-ca.
type stepCA struct {
	pid      int
	url      string // https://127.0.0.1:port
	audience string
	provName string
	provKey  *ecdsa.PrivateKey
	kid      string
	http     *http.Client
}

// startStepCA configures step-ca with a root and an intermediate whose
// keys are made in a fresh SoftHSM2 token (the intermediate's used by
// step-ca through its PKCS#11 KMS), a JWK provisioner and step-ca's
// default database (badgerv2, what `step ca init` writes), starts it on
// loopback and waits until it answers /health.
func startStepCA(b *testing.B, bin string) *stepCA {
	hsmtest.Require(b)
	hc := hsmtest.NewToken(b)
	tok, err := hsm.Open(hc)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	// The key types of a govnet controller (controller.Init): a P-384
	// root, a P-256 intermediate.
	rootKey, err := tok.GenerateKey("stepca-root", elliptic.P384())
	if err != nil {
		b.Fatal(err)
	}
	interKey, err := tok.GenerateKey("stepca-intermediate", elliptic.P256())
	if err != nil {
		b.Fatal(err)
	}
	root, err := ca.NewRoot(rootKey, "step-ca bench root", now)
	if err != nil {
		b.Fatal(err)
	}
	inter, err := ca.NewIntermediate(root, rootKey, interKey.Public(), "step-ca bench intermediate", now)
	if err != nil {
		b.Fatal(err)
	}
	if err := tok.Close(); err != nil {
		b.Fatal(err)
	}

	dir := b.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			b.Fatal(err)
		}
		return p
	}
	rootPath := write("root.crt", ca.EncodePEM(root))
	interPath := write("intermediate.crt", ca.EncodePEM(inter))

	provKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk := jose.JSONWebKey{Key: provKey.Public(), Algorithm: "ES256", Use: "sig"}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		b.Fatal(err)
	}
	jwk.KeyID = base64.RawURLEncoding.EncodeToString(tp)

	addr := freePort(b)
	conf := map[string]any{
		"root":     rootPath,
		"crt":      interPath,
		"key":      "pkcs11:object=stepca-intermediate",
		"kms":      map[string]any{"type": "pkcs11", "uri": fmt.Sprintf("pkcs11:module-path=%s;token=%s?pin-value=%s", hc.Module, hc.TokenLabel, hc.PIN)},
		"address":  addr,
		"dnsNames": []string{"127.0.0.1"},
		"logger":   map[string]any{"format": "text"},
		"db":       map[string]any{"type": "badgerv2", "dataSource": filepath.Join(dir, "db")},
		"authority": map[string]any{
			"provisioners": []any{map[string]any{"type": "JWK", "name": "bench", "key": jwk}},
		},
		"tls": map[string]any{"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false},
	}
	cj, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	confPath := write("ca.json", cj)

	logf, err := os.Create(filepath.Join(dir, "step-ca.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, confPath)
	cmd.Env = append(os.Environ(), "STEPPATH="+dir, "HOME="+dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logf.Close()
	})

	pool := x509.NewCertPool()
	pool.AddCert(root)
	s := &stepCA{
		pid: cmd.Process.Pid, url: "https://" + addr, audience: "https://127.0.0.1/1.0/sign",
		provName: "bench", provKey: provKey, kid: jwk.KeyID,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			MaxIdleConnsPerHost: clients,
		}},
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := s.http.Get(s.url + "/health")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case err := <-exited:
			logf.Sync()
			log, _ := os.ReadFile(logf.Name())
			b.Fatalf("step-ca exited: %v\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			b.Fatalf("step-ca not healthy after 60s: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cpuTime is the user+system CPU time so far of this process (the
// clients) and of step-ca, so that it compares with govnet's figure
// for clients and node in one process.
func (s *stepCA) cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): utime and
	// stime are the 12th and 13th, in clock ticks of 1/100 s.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) + time.Duration(utime+stime)*10*time.Millisecond
}

func freePort(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ott is a one-time token of the JWK provisioner for name, as `step ca
// token` makes it.
func (s *stepCA) ott(name string) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.provKey},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", s.kid))
	if err != nil {
		return "", err
	}
	jti := make([]byte, 16)
	rand.Read(jti)
	now := time.Now()
	claims := jose.Claims{
		Issuer: s.provName, Subject: name, Audience: jose.Audience{s.audience}, ID: hex.EncodeToString(jti),
		NotBefore: jose.NewNumericDate(now.Add(-time.Minute)), IssuedAt: jose.NewNumericDate(now), Expiry: jose.NewNumericDate(now.Add(5 * time.Minute)),
	}
	return jose.Signed(signer).Claims(claims).Claims(map[string]any{"sans": []string{name}}).CompactSerialize()
}

// sign asks for a certificate through POST /1.0/sign and returns its PEM
// chain.
func (s *stepCA) sign(ctx context.Context, csrPEM, name string) (string, error) {
	ott, err := s.ott(name)
	if err != nil {
		return "", err
	}
	body, _ := json.Marshal(map[string]string{"csr": csrPEM, "ott": ott})
	return s.post(ctx, s.http, "/1.0/sign", body)
}

// post POSTs body to path with hc and returns the certificate chain of
// the answer.
func (s *stepCA) post(ctx context.Context, hc *http.Client, path string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url+path, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("POST %s: %s: %s", path, resp.Status, out)
	}
	var sr struct {
		Crt string `json:"crt"`
		CA  string `json:"ca"`
	}
	if err := json.Unmarshal(out, &sr); err != nil || sr.Crt == "" {
		return "", fmt.Errorf("POST %s: no certificate in %q", path, out)
	}
	return sr.Crt + sr.CA, nil
}

// renewer is a client renewing its certificate over mTLS (POST
// /1.0/renew), presenting its current one on a new connection each time,
// as govnet's gateways do.
type renewer struct {
	key  *ecdsa.PrivateKey
	cert atomic.Pointer[tls.Certificate]
	tr   *http.Transport
	http *http.Client
}

func (r *renewer) use(pemChain string) error {
	chain, err := ca.ParsePEM([]byte(pemChain))
	if err != nil {
		return err
	}
	var der [][]byte
	for _, c := range chain {
		der = append(der, c.Raw)
	}
	r.cert.Store(&tls.Certificate{Certificate: der, PrivateKey: r.key})
	r.tr.CloseIdleConnections()
	return nil
}

// BenchmarkStepCAIssueAPI measures certificates per second that standalone
// step-ca issues through its API for 16 concurrent clients, with its
// intermediate key in SoftHSM2 (PKCS#11 KMS) and the certificates recorded
// in its default database:
//
//   - path=renew: POST /1.0/renew over mTLS with the client's current
//     certificate, a new TLS connection per renewal: the operation that
//     govnet's controller BenchmarkIssueAPI measures
//     (stepca.issue_api_per_s);
//   - path=sign: POST /1.0/sign with a JWK provisioner one-time token and
//     a CSR over keep-alive connections (its token is recorded too).
//
// The step-ca binary is STEPCA_BIN, or what deploy/scripts/stepca-build.sh
// builds.
func BenchmarkStepCAIssueAPI(b *testing.B) {
	bin := os.Getenv("STEPCA_BIN")
	if bin == "" {
		out, err := exec.Command("../../deploy/scripts/stepca-build.sh").Output()
		if err != nil {
			b.Fatalf("build step-ca: %v", err)
		}
		bin = string(bytes.TrimSpace(out))
		if !filepath.IsAbs(bin) {
			bin = filepath.Join("../..", bin)
		}
	}
	s := startStepCA(b, bin)
	type client struct {
		name, csr string
		r         *renewer
	}
	ctx := context.Background()
	cs := make([]client, clients)
	for i := range cs {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		name := fmt.Sprintf("gw%d.gateway.govnet", i+1)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}}, key)
		if err != nil {
			b.Fatal(err)
		}
		c := client{name: name, csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}
		chain, err := s.sign(ctx, c.csr, c.name) // the first certificate, which renewals replace
		if err != nil {
			b.Fatal(err)
		}
		c.r = &renewer{key: key, tr: s.http.Transport.(*http.Transport).Clone()}
		c.r.tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c.r.cert.Load(), nil }
		c.r.http = &http.Client{Timeout: 30 * time.Second, Transport: c.r.tr}
		if err := c.r.use(chain); err != nil {
			b.Fatal(err)
		}
		cs[i] = c
	}
	run := func(b *testing.B, one func(c client) error) {
		var next atomic.Int64
		b.ResetTimer()
		start, cpu0 := time.Now(), s.cpuTime(b)
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Go(func() {
				for next.Add(1) <= int64(b.N) {
					if err := one(c); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
		b.ReportMetric(float64((s.cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/cert")
	}
	b.Run("path=renew", func(b *testing.B) {
		run(b, func(c client) error {
			chain, err := s.post(ctx, c.r.http, "/1.0/renew", nil)
			if err != nil {
				return err
			}
			return c.r.use(chain)
		})
	})
	b.Run("path=sign", func(b *testing.B) {
		run(b, func(c client) error {
			_, err := s.sign(ctx, c.csr, c.name)
			return err
		})
	})
}
