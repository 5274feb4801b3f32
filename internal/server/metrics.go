package server

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the server's Prometheus metrics. They are served on a
// separate listener (--metrics-listen), not on the repository port, so
// that scraping needs no token and exposes nothing to hosts.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	bytesIn   *prometheus.CounterVec
	bytesOut  *prometheus.CounterVec
	refused   *prometheus.CounterVec
	uploading prometheus.Gauge
	lastWrite *prometheus.GaugeVec
	// lastWrites is what lastWrite holds, so that a write seen live and a
	// journal read at a repository's first use (seedLastWrites) keep the
	// later of the two; seeded marks the repositories read
	lastMu     sync.Mutex
	lastWrites map[[2]string]time.Time
	seeded     map[string]bool
	// ledger, when set (SetLedger), gives the bytes each repository
	// holds at every scrape
	ledger atomic.Pointer[Ledger]
}

// repoBytesDesc is the gauge of what each repository holds.
var repoBytesDesc = prometheus.NewDesc("floe_server_repository_bytes",
	"Bytes each repository holds, counted as quotas count them (each object in whole 4 KiB blocks), for the repositories opened since the server started.",
	[]string{"repo"}, nil)

// repoCollector reads the ledger's repository sizes at a scrape.
type repoCollector struct{ m *Metrics }

func (c repoCollector) Describe(ch chan<- *prometheus.Desc) { ch <- repoBytesDesc }

func (c repoCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.m.ledger.Load()
	if l == nil {
		return
	}
	for repo, v := range l.RepoUsage() {
		ch <- prometheus.MustNewConstMetric(repoBytesDesc, prometheus.GaugeValue, float64(v[0]), repo)
	}
}

// SetLedger makes the metrics report the repositories' sizes the ledger
// keeps.
func (m *Metrics) SetLedger(l *Ledger) {
	if m != nil {
		m.ledger.Store(l)
	}
}

// NewMetrics returns the server's metrics in their own registry (plus the
// Go runtime and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "floe_server_requests_total", Help: "Requests by operation, the roles of their credential (none: not authenticated) and HTTP status.",
		}, []string{"op", "role", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "floe_server_request_duration_seconds", Help: "Time to answer a request, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"op"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "floe_server_stored_bytes_total", Help: "Bytes of new objects stored, by repository.",
		}, []string{"repo"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "floe_server_loaded_bytes_total", Help: "Bytes sent to clients by loads, by repository.",
		}, []string{"repo"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "floe_server_refused_total", Help: "Refused requests by error code (unauthorized, forbidden, name_mismatch, quota, ...).",
		}, []string{"code"}),
		uploading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "floe_server_uploads_in_progress", Help: "Uploads being received.",
		}),
		lastWrite: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "floe_server_last_write_timestamp_seconds", Help: "When each host (of its credential) last stored a new object in a repository (Unix time); a repository's hosts appear from its upload journal once the server has served it since it started.",
		}, []string{"repo", "host"}),
	}
	m.reg.MustRegister(m.requests, m.duration, m.bytesIn, m.bytesOut, m.refused, m.uploading, m.lastWrite, repoCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// observe records one finished request. A nil *Metrics records nothing.
func (m *Metrics) observe(q *request, start time.Time) {
	if m == nil {
		return
	}
	op := q.rec.Op
	switch Op(op) {
	case OpCreate, OpList, OpStat, OpLoad, OpSave, OpRemove:
	default:
		op = "invalid" // bounded label values: never the client's method
	}
	role := "none"
	if q.tok.ID != "" {
		role = q.tok.Roles.String()
	}
	m.requests.WithLabelValues(op, role, strconv.Itoa(q.status)).Inc()
	m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if q.code != "" && q.code != CodeInternal && q.status != http.StatusNotFound && q.status != http.StatusRequestedRangeNotSatisfiable {
		m.refused.WithLabelValues(q.code).Inc()
	}
	if q.status == http.StatusCreated && Op(op) == OpSave {
		m.bytesIn.WithLabelValues(q.rec.Repo).Add(float64(q.rec.Size))
		m.noteWrite(q.rec.Repo, q.tok.Host, time.Now())
	}
	if q.status == http.StatusOK && Op(op) == OpLoad {
		m.bytesOut.WithLabelValues(q.rec.Repo).Add(float64(q.sent))
	}
}

// noteWrite records that host stored an object in repo at t, unless a
// later write of it is known already.
func (m *Metrics) noteWrite(repo, host string, t time.Time) {
	m.lastMu.Lock()
	defer m.lastMu.Unlock()
	k := [2]string{repo, host}
	if last, ok := m.lastWrites[k]; ok && !t.After(last) {
		return
	}
	if m.lastWrites == nil {
		m.lastWrites = map[[2]string]time.Time{}
	}
	m.lastWrites[k] = t
	m.lastWrite.WithLabelValues(repo, host).Set(float64(t.Unix()))
}

// seedLastWrites gives repo's hosts their last writes from before the
// server started, once per repository: each is the latest upload of the
// host in the repository's journal, read in the background (a bucket's
// journal is a listing). Without it a host that has not written since a
// restart would have no metric, and an alert on its age would not fire.
func (m *Metrics) seedLastWrites(repo string, read func() (map[string]time.Time, error)) {
	m.lastMu.Lock()
	if m.seeded[repo] {
		m.lastMu.Unlock()
		return
	}
	if m.seeded == nil {
		m.seeded = map[string]bool{}
	}
	m.seeded[repo] = true
	m.lastMu.Unlock()
	go func() {
		last, err := read()
		if err != nil {
			m.lastMu.Lock()
			delete(m.seeded, repo) // read again at the repository's next request
			m.lastMu.Unlock()
			return
		}
		for host, t := range last {
			m.noteWrite(repo, host, t)
		}
	}()
}
