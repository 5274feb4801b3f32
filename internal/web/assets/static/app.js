// floe fleet dashboard. Every string from the server goes into the page
// with textContent or setAttribute, never innerHTML: host names are
// supplied by hosts and are not trusted.
"use strict";
(function () {
  var RANK = { ok: 0, running: 1, never: 2, overdue: 3, failed: 4 };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svgEl(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }
  function bytes(n) {
    if (!n) return "0 B";
    var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
  }
  function age(sec) {
    if (sec <= 0) return "-";
    if (sec < 60) return sec + "s";
    if (sec < 3600) return Math.floor(sec / 60) + "m";
    if (sec < 172800) return Math.floor(sec / 3600) + "h";
    return Math.floor(sec / 86400) + "d";
  }
  function when(t) {
    if (!t || t.indexOf("0001-") === 0) return "-";
    var d = new Date(t);
    return isNaN(d) ? "-" : d.toLocaleString();
  }
  function timeOf(t) {
    if (!t || t.indexOf("0001-") === 0) return 0;
    return new Date(t).getTime() || 0;
  }
  function jobName(job, task) {
    if (!job) return "-";
    return task && task !== "backup" ? job + " (" + task + ")" : job;
  }
  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (r.status === 401) { window.location.href = "/ui/login"; throw new Error("session expired"); }
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  // ---- overview ----
  function overview(root) {
    var tbody = root.querySelector("#hosts tbody");
    var filter = root.querySelector("#filter");
    var counts = root.querySelector("#counts");
    var updated = root.querySelector("#updated");
    var jobs = [];
    var sortKey = "state", asc = false;

    var keyOf = {
      state: function (j) { return RANK[j.state] || 0; },
      host: function (j) { return j.host.toLowerCase(); },
      job: function (j) { return (j.job || "").toLowerCase(); },
      last_success: function (j) { return timeOf(j.last_success); },
      age: function (j) { return j.age_seconds || 0; },
      next_due: function (j) { return timeOf(j.next_due); },
      size: function (j) { return j.size || 0; }
    };

    function sorted(list) {
      var f = keyOf[sortKey];
      return list.slice().sort(function (a, b) {
        var x = f(a), y = f(b);
        var c = x < y ? -1 : x > y ? 1 : 0;
        if (!asc) c = -c;
        if (c === 0) c = a.host < b.host ? -1 : a.host > b.host ? 1 : 0;
        return c;
      });
    }

    function render() {
      var q = filter.value.trim().toLowerCase();
      var frag = document.createDocumentFragment();
      var shown = sorted(jobs).filter(function (j) {
        return !q || j.host.toLowerCase().indexOf(q) >= 0 || (j.job || "").toLowerCase().indexOf(q) >= 0 || j.state.indexOf(q) >= 0;
      });
      shown.forEach(function (j) {
        var tr = el("tr");
        tr.setAttribute("data-state", j.state);
        var td = el("td");
        td.appendChild(el("span", "state s-" + j.state, j.state));
        tr.appendChild(td);
        var th = el("td");
        var a = el("a", "hostlink", j.host);
        a.setAttribute("href", "/ui/host?name=" + encodeURIComponent(j.host));
        th.appendChild(a);
        tr.appendChild(th);
        tr.appendChild(el("td", "", jobName(j.job, j.task)));
        tr.appendChild(el("td", "", when(j.last_success)));
        tr.appendChild(el("td", "", age(j.age_seconds)));
        tr.appendChild(el("td", "", when(j.next_due)));
        tr.appendChild(el("td", "", bytes(j.size)));
        frag.appendChild(tr);
      });
      tbody.replaceChildren(frag);
      root.querySelectorAll("th[data-key]").forEach(function (h) {
        h.classList.toggle("sorted", h.getAttribute("data-key") === sortKey);
        h.classList.toggle("asc", h.getAttribute("data-key") === sortKey && asc);
      });
    }

    function renderCounts() {
      var hosts = {};
      jobs.forEach(function (j) {
        var w = hosts[j.host];
        if (w === undefined || RANK[j.state] > RANK[w]) hosts[j.host] = j.state;
      });
      var by = {};
      Object.keys(hosts).forEach(function (h) { by[hosts[h]] = (by[hosts[h]] || 0) + 1; });
      var frag = document.createDocumentFragment();
      ["failed", "overdue", "never", "running", "ok"].forEach(function (s) {
        if (by[s]) frag.appendChild(el("span", "count s-" + s, by[s] + " " + s));
      });
      if (!frag.childNodes.length) frag.appendChild(el("span", "muted", "No hosts enrolled yet."));
      counts.replaceChildren(frag);
    }

    function load() {
      var t0 = performance.now();
      return getJSON("/ui/api/status").then(function (st) {
        jobs = st.jobs || [];
        renderCounts();
        render();
        var ms = Math.round(performance.now() - t0);
        updated.textContent = "updated " + new Date().toLocaleTimeString() + " (" + jobs.length + " jobs, " + ms + " ms)";
        root.setAttribute("data-loaded", String(jobs.length));
        root.setAttribute("data-render-ms", String(ms));
      }).catch(function (e) { updated.textContent = "update failed: " + e.message; });
    }

    root.querySelectorAll("th[data-key]").forEach(function (h) {
      h.addEventListener("click", function () {
        var k = h.getAttribute("data-key");
        if (k === sortKey) asc = !asc; else { sortKey = k; asc = k === "host" || k === "job"; }
        render();
      });
    });
    filter.addEventListener("input", render);
    load();
    setInterval(load, 15000);
  }

  // ---- host page ----
  function barChart(svg, values, labels, failed, fmt) {
    var W = 600, H = 200, L = 50, B = 20, T = 10;
    var frag = document.createDocumentFragment();
    var max = Math.max.apply(null, values.concat([1]));
    frag.appendChild(svgEl("line", { x1: L, y1: H - B, x2: W, y2: H - B, "class": "axis" }));
    frag.appendChild(svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, "class": "axis" }));
    var top = svgEl("text", { x: 2, y: T + 10 });
    top.textContent = fmt(max);
    frag.appendChild(top);
    var zero = svgEl("text", { x: 2, y: H - B });
    zero.textContent = "0";
    frag.appendChild(zero);
    var n = values.length, slot = n ? (W - L - 4) / n : 0;
    values.forEach(function (v, i) {
      var h = Math.max(1, (v / max) * (H - B - T));
      var r = svgEl("rect", { x: L + 2 + i * slot, y: H - B - h, width: Math.max(1, slot * 0.8), height: h, "class": failed[i] ? "bar failed" : "bar" });
      var title = svgEl("title", {});
      title.textContent = labels[i] + ": " + fmt(v);
      r.appendChild(title);
      frag.appendChild(r);
    });
    if (!n) {
      var t = svgEl("text", { x: W / 2 - 30, y: H / 2 });
      t.textContent = "no runs yet";
      frag.appendChild(t);
    }
    svg.replaceChildren(frag);
    svg.setAttribute("data-bars", String(n));
  }

  function hostPage(root) {
    var host = root.getAttribute("data-host");
    var tbody = root.querySelector("#runs tbody");
    function load() {
      return getJSON("/ui/api/runs?limit=200&host=" + encodeURIComponent(host)).then(function (runs) {
        var frag = document.createDocumentFragment();
        runs.forEach(function (r) {
          var tr = el("tr");
          var dur = (timeOf(r.end) - timeOf(r.start)) / 1000;
          tr.appendChild(el("td", "", jobName(r.job, r.task)));
          tr.appendChild(el("td", "", when(r.start)));
          tr.appendChild(el("td", "", Math.round(dur) + " s"));
          var td = el("td");
          td.appendChild(el("span", "state s-" + r.status, r.status));
          if (r.error) td.appendChild(el("span", "muted", " " + r.error));
          tr.appendChild(td);
          tr.appendChild(el("td", "", r.files));
          tr.appendChild(el("td", "", bytes(r.bytes_read)));
          tr.appendChild(el("td", "", bytes(r.bytes_new)));
          tr.appendChild(el("td", "", bytes(r.bytes_stored)));
          tr.appendChild(el("td", "", r.errors));
          tr.appendChild(el("td", "", r.files_changed));
          tr.appendChild(el("td", "", r.version));
          frag.appendChild(tr);
        });
        tbody.replaceChildren(frag);
        var chron = runs.slice().reverse();
        var labels = chron.map(function (r) { return r.job + " " + when(r.start); });
        var failed = chron.map(function (r) { return r.status === "failed"; });
        barChart(root.querySelector("#chart-duration"), chron.map(function (r) { return Math.max(0, (timeOf(r.end) - timeOf(r.start)) / 1000); }), labels, failed,
          function (v) { return Math.round(v) + " s"; });
        barChart(root.querySelector("#chart-new"), chron.map(function (r) { return r.bytes_new || 0; }), labels, failed, bytes);
        root.setAttribute("data-loaded", String(runs.length));
      });
    }
    load();
    setInterval(load, 30000);
  }

  // ---- repository page ----
  function ratio(v) { return v > 0 ? v.toFixed(2) + "x" : "-"; }
  function percent(v) { return (v * 100).toFixed(1) + " %"; }
  function repoPage(root) {
    var repo = root.getAttribute("data-repo");
    function set(id, text) { root.querySelector("#" + id).textContent = text; }
    return getJSON("/ui/api/repo?name=" + encodeURIComponent(repo)).then(function (st) {
      set("stored", bytes(st.stored_bytes));
      set("objects", String(st.objects));
      set("quota", st.quota ? bytes(st.quota) + " (" + percent(st.stored_bytes / st.quota) + " used)" : "none");
      set("protected", bytes(st.protected_bytes));
      set("dedup", ratio(st.dedup_ratio));
      set("compression", ratio(st.compression_ratio));
      set("freed", bytes(st.freed_bytes));
      var g = st.growth || [];
      barChart(root.querySelector("#chart-growth"), g.map(function (p) { return Math.max(0, p.total); }),
        g.map(function (p) { return p.day + " (+" + bytes(p.added) + ", -" + bytes(p.freed) + ")"; }),
        g.map(function () { return false; }), bytes);
      var frag = document.createDocumentFragment();
      (st.hosts || []).forEach(function (h) {
        var tr = el("tr");
        var td = el("td");
        if (h.host) {
          var a = el("a", "hostlink", h.host);
          a.setAttribute("href", "/ui/host?name=" + encodeURIComponent(h.host));
          td.appendChild(a);
        } else {
          td.appendChild(el("span", "muted", "(unknown uploader)"));
        }
        tr.appendChild(td);
        tr.appendChild(el("td", "", bytes(h.bytes)));
        tr.appendChild(el("td", "", percent(h.share)));
        frag.appendChild(tr);
      });
      root.querySelector("#repohosts tbody").replaceChildren(frag);
      root.setAttribute("data-loaded", String((st.hosts || []).length));
    });
  }

  // ---- accounting ----
  function accounting(root) {
    return getJSON("/ui/api/accounting").then(function (rows) {
      var frag = document.createDocumentFragment();
      rows.forEach(function (r) {
        var tr = el("tr");
        tr.appendChild(el("td", "", r.month));
        var tdr = el("td");
        var ar = el("a", "", r.repo);
        ar.setAttribute("href", "/ui/repo?name=" + encodeURIComponent(r.repo));
        tdr.appendChild(ar);
        tr.appendChild(tdr);
        var tdh = el("td");
        var ah = el("a", "hostlink", r.host);
        ah.setAttribute("href", "/ui/host?name=" + encodeURIComponent(r.host));
        tdh.appendChild(ah);
        tr.appendChild(tdh);
        tr.appendChild(el("td", "", r.runs));
        tr.appendChild(el("td", "", bytes(r.protected_bytes)));
        tr.appendChild(el("td", "", bytes(r.new_stored_bytes)));
        tr.appendChild(el("td", "", percent(r.share)));
        tr.appendChild(el("td", "", bytes(r.attributed_bytes)));
        frag.appendChild(tr);
      });
      root.querySelector("#acct tbody").replaceChildren(frag);
      root.setAttribute("data-loaded", String(rows.length));
    });
  }

  // links to each repository's page in the header
  function repoLinks(span) {
    getJSON("/ui/api/repos").then(function (repos) {
      var frag = document.createDocumentFragment();
      repos.forEach(function (r) {
        var a = el("a", "repolink", r);
        a.setAttribute("href", "/ui/repo?name=" + encodeURIComponent(r));
        frag.appendChild(a);
        frag.appendChild(document.createTextNode(" "));
      });
      span.replaceChildren(frag);
    }).catch(function () {});
  }

  var rl = document.getElementById("repolinks");
  if (rl) repoLinks(rl);
  var rp = document.getElementById("repopage");
  if (rp) repoPage(rp);
  var ac = document.getElementById("accounting");
  if (ac) accounting(ac);
  var ov = document.getElementById("overview");
  if (ov) overview(ov);
  var hp = document.getElementById("hostpage");
  if (hp) hostPage(hp);
})();
