package fleet

import (
	"fmt"
	"sort"
	"time"
)

// AlertKind is what an alert is about.
type AlertKind string

// The alerts.
const (
	AlertJobFailed    AlertKind = "job_failed"
	AlertOverdue      AlertKind = "overdue"
	AlertFilesChanged AlertKind = "files_changed"
	AlertAgentSilent  AlertKind = "agent_silent"
	AlertQuota        AlertKind = "quota"
)

// AlertKey names one alert: a kind about a host's job (Job empty: about
// the host; Host empty, Job the repository: about a repository).
type AlertKey struct {
	Kind AlertKind `json:"kind"`
	Host string    `json:"host,omitempty"`
	Job  string    `json:"job,omitempty"`
}

// Condition is an alert condition that holds now.
type Condition struct {
	AlertKey
	Message string `json:"message"`
}

// ActiveAlert is a condition that held at the last evaluation, with when
// it began and when it was last notified.
type ActiveAlert struct {
	AlertKey
	Since    time.Time `json:"since"`
	LastSent time.Time `json:"last_sent"`
	Message  string    `json:"message"`
}

// Notification events.
const (
	EventFiring   = "firing"
	EventReminder = "reminder"
	EventResolved = "resolved"
	EventTest     = "test"
)

// Notification is one message to send.
type Notification struct {
	AlertKey
	Event   string    `json:"event"`
	Message string    `json:"message"`
	Since   time.Time `json:"since"`
	Time    time.Time `json:"time"`
}

// Subject is a one-line summary (a mail subject).
func (n Notification) Subject() string {
	who := n.Host
	if n.Job != "" {
		if who != "" {
			who += " "
		}
		who += n.Job
	}
	return fmt.Sprintf("[floe %s] %s %s", n.Event, n.Kind, who)
}

// EvaluateAlerts compares the conditions that hold now with the alerts
// active before: a new condition fires once, a condition still active is
// reminded of every remind (0: never), and an active alert whose
// condition no longer holds is resolved. It returns the alerts active
// now and the notifications to send, in a stable order.
func EvaluateAlerts(active []ActiveAlert, conds []Condition, now time.Time, remind time.Duration) ([]ActiveAlert, []Notification) {
	prev := map[AlertKey]ActiveAlert{}
	for _, a := range active {
		prev[a.AlertKey] = a
	}
	var next []ActiveAlert
	var out []Notification
	seen := map[AlertKey]bool{}
	for _, c := range conds {
		if seen[c.AlertKey] {
			continue
		}
		seen[c.AlertKey] = true
		a, was := prev[c.AlertKey]
		switch {
		case !was:
			a = ActiveAlert{AlertKey: c.AlertKey, Since: now, LastSent: now, Message: c.Message}
			out = append(out, Notification{AlertKey: c.AlertKey, Event: EventFiring, Message: c.Message, Since: now, Time: now})
		case remind > 0 && !now.Before(a.LastSent.Add(remind)):
			a.LastSent, a.Message = now, c.Message
			out = append(out, Notification{AlertKey: c.AlertKey, Event: EventReminder, Message: c.Message, Since: a.Since, Time: now})
		default:
			a.Message = c.Message
		}
		next = append(next, a)
	}
	for _, a := range active {
		if !seen[a.AlertKey] {
			out = append(out, Notification{AlertKey: a.AlertKey, Event: EventResolved, Message: "resolved: " + a.Message, Since: a.Since, Time: now})
		}
	}
	less := func(x, y AlertKey) bool {
		if x.Kind != y.Kind {
			return x.Kind < y.Kind
		}
		if x.Host != y.Host {
			return x.Host < y.Host
		}
		return x.Job < y.Job
	}
	sort.Slice(next, func(i, j int) bool { return less(next[i].AlertKey, next[j].AlertKey) })
	sort.SliceStable(out, func(i, j int) bool { return less(out[i].AlertKey, out[j].AlertKey) })
	return next, out
}

// RepoUsage is what a repository holds against its quota.
type RepoUsage struct {
	Repo  string `json:"repo"`
	Bytes int64  `json:"bytes"`
	Quota int64  `json:"quota"`
}

// AlertRules are the thresholds of Conditions.
type AlertRules struct {
	// SilentAfter: an enrolled host that has not talked to the server for
	// this long is silent (0: never).
	SilentAfter time.Duration
	// QuotaPercent: a repository above this share of its quota alerts
	// (default 90).
	QuotaPercent int
}

// Conditions derives the alert conditions that hold at now from the
// fleet's state (JobStatus as computed at now) and the repositories'
// usage.
func Conditions(jobs []JobStatus, usage []RepoUsage, rules AlertRules, now time.Time) []Condition {
	var out []Condition
	silent := map[string]bool{}
	for _, j := range jobs {
		if j.Revoked {
			continue
		}
		if rules.SilentAfter > 0 && !j.LastSeen.IsZero() && now.Sub(j.LastSeen) > rules.SilentAfter && !silent[j.Host] {
			silent[j.Host] = true
			out = append(out, Condition{AlertKey{AlertAgentSilent, j.Host, ""},
				fmt.Sprintf("the agent of %s has not reported since %s", j.Host, j.LastSeen.Format(time.RFC3339))})
		}
		if j.Job == "" {
			continue
		}
		switch j.State {
		case StateFailed:
			msg := fmt.Sprintf("job %s on %s failed", j.Job, j.Host)
			if j.LastRun != nil && j.LastRun.Error != "" {
				msg += ": " + j.LastRun.Error
			}
			out = append(out, Condition{AlertKey{AlertJobFailed, j.Host, j.Job}, msg})
		case StateOverdue:
			last := "never"
			if !j.LastSuccess.IsZero() {
				last = j.LastSuccess.Format(time.RFC3339)
			}
			out = append(out, Condition{AlertKey{AlertOverdue, j.Host, j.Job},
				fmt.Sprintf("job %s on %s is overdue: due %s, last success %s", j.Job, j.Host, j.NextDue.Format(time.RFC3339), last)})
		}
		if j.LastRun != nil && j.LastRun.FilesChanged > 0 {
			// (ui.Count says this elsewhere; fleet imports nothing of floe)
			files := "files"
			if j.LastRun.FilesChanged == 1 {
				files = "file"
			}
			out = append(out, Condition{AlertKey{AlertFilesChanged, j.Host, j.Job},
				fmt.Sprintf("job %s on %s: %d %s changed while they were read (the snapshot holds them inconsistent)", j.Job, j.Host, j.LastRun.FilesChanged, files)})
		}
	}
	pct := rules.QuotaPercent
	if pct <= 0 {
		pct = 90
	}
	for _, u := range usage {
		if u.Quota > 0 && u.Bytes*100 > u.Quota*int64(pct) {
			out = append(out, Condition{AlertKey{AlertQuota, "", u.Repo},
				fmt.Sprintf("repository %s holds %d of its %d bytes quota (%d%%)", u.Repo, u.Bytes, u.Quota, u.Bytes*100/u.Quota)})
		}
	}
	return out
}
