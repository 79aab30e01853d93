package controller

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/govnet/govnet/ca"
	"golang.org/x/crypto/ocsp"
)

// limiter is a token bucket per client: a verified certificate's identity,
// or the remote IP for callers without one. Controller nodes of the
// cluster forwarding writes are not limited (their clients already were);
// a node certificate of a node that is not a member is. Buckets idle for a
// minute are dropped, so the map stays as small as the set of active
// clients.
type limiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	// member says whether a request comes from a node of the cluster
	// (nil: none does).
	member func(r *http.Request) bool
	// memberHost says whether an address is a member node's: an OCSP
	// request it forwards is counted against the client it names
	// (X-Forwarded-For), not against the node (nil: none is).
	memberHost func(host string) bool

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

const defaultRateLimit = 100

func newLimiter(rate float64, now func() time.Time) *limiter {
	if rate <= 0 {
		rate = defaultRateLimit
	}
	return &limiter{rate: rate, burst: 2 * rate, now: now, buckets: map[string]*bucket{}}
}

// allow takes one token from key's bucket; when there is none it says how
// long until there will be.
func (l *limiter) allow(key string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.swept) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.last) > time.Minute {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	}
	b.tokens--
	return true, 0
}

// memberVerdict keys a request's context to what the limiter found of a
// node certificate: whether it is a member's (isMemberNode).
type memberVerdict struct{}

// forwardedFor returns the last address X-Forwarded-For names: the one
// the forwarding node added (earlier ones are the client's to claim).
func forwardedFor(r *http.Request) string {
	xff := r.Header.Values("X-Forwarded-For")
	if len(xff) == 0 {
		return ""
	}
	parts := strings.Split(xff[len(xff)-1], ",")
	ip, err := netip.ParseAddr(strings.TrimSpace(parts[len(parts)-1]))
	if err != nil {
		return ""
	}
	return ip.String()
}

func (l *limiter) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := ""
		if id, ok := identity(r); ok {
			if id.Kind == ca.KindNode && l.member != nil {
				member := l.member(r)
				// The handler asks again (internalNode): one chain check
				// per request.
				r = r.WithContext(context.WithValue(r.Context(), memberVerdict{}, member))
				if member {
					next.ServeHTTP(w, r)
					return
				}
			}
			key = limitKey(id)
		} else {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			key = "ip/" + host
			if r.Header.Get(proxiedHeader) != "" && l.memberHost != nil && l.memberHost(host) {
				if client := forwardedFor(r); client != "" {
					key = "ip/" + client
				}
			}
		}
		if ok, wait := l.allow(key); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
			if strings.HasPrefix(r.URL.Path, "/ocsp/") {
				// Relying parties understand OCSP's own "try later"
				// (RFC 6960 2.3), not an HTTP error.
				w.Header().Set("Content-Type", "application/ocsp-response")
				w.Write(ocsp.TryLaterErrorResponse)
				return
			}
			writeError(w, http.StatusTooManyRequests, "rate limit exceeded: slow down")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// limitKey is the bucket of a client with a certificate, the same for its
// API calls and its gateway stream.
func limitKey(id ca.Identity) string { return id.Kind + "/" + id.Name }
