package fleet

import "sort"

// What the server can say about a repository's use without keys: what it
// stores (and who uploaded it, from its upload journal) and what the
// agents report of each run (bytes read, new before compression, stored
// after it, freed by retention).

// RepoStats is the repository page of the dashboard.
type RepoStats struct {
	Repo string `json:"repo"`
	// StoredBytes and Objects are what the server stores now; Quota is
	// the repository's (0: none).
	StoredBytes int64 `json:"stored_bytes"`
	Objects     int64 `json:"objects"`
	Quota       int64 `json:"quota,omitempty"`
	// ProtectedBytes is the data the repository protects: the bytes read
	// by the last successful backup of each host's job, summed.
	ProtectedBytes int64 `json:"protected_bytes"`
	// From the reports of all backups: read, new (not deduplicated, before
	// compression) and stored (after compression and encryption); freed
	// by retention runs.
	ReadBytes  int64 `json:"read_bytes"`
	NewBytes   int64 `json:"new_bytes"`
	AddedBytes int64 `json:"added_bytes"`
	FreedBytes int64 `json:"freed_bytes"`
	// DedupRatio is read / new over every backup reported (how many
	// bytes read each new byte stands for); CompressionRatio new /
	// stored. 0: not known yet.
	DedupRatio       float64 `json:"dedup_ratio"`
	CompressionRatio float64 `json:"compression_ratio"`
	// Growth is, per day, the stored bytes added and freed as reported,
	// and the running total of both.
	Growth []GrowthPoint `json:"growth"`
	// Hosts, most stored data first: what each uploaded and still stored
	// (the server's upload journal: deduplicated data counts for whoever
	// uploaded it first, so this is each host's unique data).
	Hosts []HostStorage `json:"hosts"`
}

// GrowthPoint is one day of a repository's growth.
type GrowthPoint struct {
	Day   string `json:"day"` // YYYY-MM-DD, UTC
	Added int64  `json:"added"`
	Freed int64  `json:"freed"`
	Total int64  `json:"total"`
}

// HostStorage is what one uploader stores in a repository.
type HostStorage struct {
	Host  string  `json:"host"` // "": unknown (uploaded before the journal)
	Bytes int64   `json:"bytes"`
	Share float64 `json:"share"` // of StoredBytes
}

// AccountingRow is one host's use of one repository in one month, for
// charge-back.
type AccountingRow struct {
	Month string `json:"month"` // YYYY-MM, UTC
	Host  string `json:"host"`
	Repo  string `json:"repo"`
	// ProtectedBytes is the bytes read by the host's last successful
	// backup of each job in the month, summed over its jobs.
	ProtectedBytes int64 `json:"protected_bytes"`
	// NewStoredBytes is what its backups added to the repository in the
	// month (after compression).
	NewStoredBytes int64 `json:"new_stored_bytes"`
	Runs           int   `json:"runs"`
	// Share is the host's part of the storage added to the repository in
	// the month (its new stored bytes over all hosts'): what a
	// charge-back attributes to it. AttributedBytes is that share of the
	// repository's stored bytes now.
	Share           float64 `json:"share"`
	AttributedBytes int64   `json:"attributed_bytes"`
}

// ComputeRepoStats builds the repository page from the runs of its hosts
// (any order) and what the server stores.
func ComputeRepoStats(repo string, stored, objects, quota int64, byHost map[string]int64, runs []RunRecord) RepoStats {
	st := RepoStats{Repo: repo, StoredBytes: stored, Objects: objects, Quota: quota, Hosts: []HostStorage{}, Growth: []GrowthPoint{}}
	sorted := append([]RunRecord(nil), runs...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].End.Before(sorted[j].End) })
	last := map[[2]string]int64{}
	days := map[string]*GrowthPoint{}
	var order []string
	for _, r := range sorted {
		day := r.End.UTC().Format("2006-01-02")
		g := days[day]
		if g == nil {
			g = &GrowthPoint{Day: day}
			days[day] = g
			order = append(order, day)
		}
		switch {
		case r.Task == TaskBackup && r.Status.Succeeded():
			st.ReadBytes += r.BytesRead
			st.NewBytes += r.BytesNew
			st.AddedBytes += r.BytesStored
			g.Added += r.BytesStored
			last[[2]string{r.Host, r.Job}] = r.BytesRead
		case r.Task == TaskRetention:
			st.FreedBytes += r.BytesFreed
			g.Freed += r.BytesFreed
		}
	}
	var total int64
	for _, d := range order {
		g := days[d]
		total += g.Added - g.Freed
		g.Total = total
		st.Growth = append(st.Growth, *g)
	}
	for _, v := range last {
		st.ProtectedBytes += v
	}
	if st.NewBytes > 0 {
		st.DedupRatio = float64(st.ReadBytes) / float64(st.NewBytes)
	}
	if st.AddedBytes > 0 {
		st.CompressionRatio = float64(st.NewBytes) / float64(st.AddedBytes)
	}
	for h, b := range byHost {
		hs := HostStorage{Host: h, Bytes: b}
		if stored > 0 {
			hs.Share = float64(b) / float64(stored)
		}
		st.Hosts = append(st.Hosts, hs)
	}
	sort.Slice(st.Hosts, func(i, j int) bool {
		if st.Hosts[i].Bytes != st.Hosts[j].Bytes {
			return st.Hosts[i].Bytes > st.Hosts[j].Bytes
		}
		return st.Hosts[i].Host < st.Hosts[j].Host
	})
	return st
}

// ComputeAccounting builds the accounting rows (by month, then repository
// and host) from runs, the repository of each host and what each
// repository stores now.
func ComputeAccounting(runs []RunRecord, repoOf map[string]string, stored map[string]int64) []AccountingRow {
	type key struct{ month, repo, host string }
	rows := map[key]*AccountingRow{}
	lastRead := map[key]map[string]RunRecord{}
	monthTotal := map[[2]string]int64{}
	for _, r := range runs {
		if r.Task != TaskBackup || !r.Status.Succeeded() {
			continue
		}
		repo := repoOf[r.Host]
		k := key{r.End.UTC().Format("2006-01"), repo, r.Host}
		row := rows[k]
		if row == nil {
			row = &AccountingRow{Month: k.month, Host: r.Host, Repo: repo}
			rows[k] = row
			lastRead[k] = map[string]RunRecord{}
		}
		row.Runs++
		row.NewStoredBytes += r.BytesStored
		monthTotal[[2]string{k.month, repo}] += r.BytesStored
		if prev, ok := lastRead[k][r.Job]; !ok || r.End.After(prev.End) {
			lastRead[k][r.Job] = r
		}
	}
	out := make([]AccountingRow, 0, len(rows))
	for k, row := range rows {
		for _, r := range lastRead[k] {
			row.ProtectedBytes += r.BytesRead
		}
		if t := monthTotal[[2]string{k.month, k.repo}]; t > 0 {
			row.Share = float64(row.NewStoredBytes) / float64(t)
		}
		row.AttributedBytes = int64(row.Share * float64(stored[k.repo]))
		out = append(out, *row)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Month != b.Month {
			return a.Month > b.Month
		}
		if a.Repo != b.Repo {
			return a.Repo < b.Repo
		}
		return a.Host < b.Host
	})
	return out
}
