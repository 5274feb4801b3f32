package fleetsrv

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// FuzzServiceBodies: whatever an enrolled (possibly hostile) host sends to
// the enrollment, lease and report routes is answered, never a panic and
// never a 5xx.
func FuzzServiceBodies(f *testing.F) {
	// no limits: a lease request never waits (a fuzz run must not stall)
	tf := newTestFleet(f, LeaseLimits{}, time.Minute)
	cl := tf.enroll(f, "fuzz", "fleet")
	f.Add(uint8(0), []byte(`{"token":"floe_enroll_x"}`))
	f.Add(uint8(1), []byte(`{"job":"daily","wait_seconds":0}`))
	f.Add(uint8(1), []byte(`{"job":"daily","ticket":"abc","wait_seconds":-5}`))
	f.Add(uint8(2), []byte(`{"job":"daily","task":"backup","status":"ok","started":"2026-01-01T00:00:00Z","finished":"2026-01-01T00:01:00Z"}`))
	f.Add(uint8(2), []byte(`{"host":"other","job":"daily"}`))
	paths := []string{"enroll", "leases", "runs"}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		req := httptest.NewRequestWithContext(context.Background(), http.MethodPost, fleet.APIPrefix+paths[int(route)%len(paths)], bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+cl.Token)
		rec := httptest.NewRecorder()
		tf.svc.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%d for %q: %s", rec.Code, body, rec.Body.String())
		}
		// leases granted by the fuzzer are given back
		for _, le := range tf.svc.opts.Leases.Held() {
			tf.svc.opts.Leases.Release(le.ID, le.Host)
		}
	})
}
