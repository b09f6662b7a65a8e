// tandem search console: plain JavaScript over the public HTTP API (/info, /search, /metrics).
// No framework and no build step; every string from the server is put in the page as text.
"use strict";

(() => {
  const KEY_STORAGE = "tandem.console.apiKey";
  const METRICS_EVERY_MS = 3000;
  const METRICS_WINDOW_S = 60;
  const API_ROUTES = new Set(["/search", "/search/batch", "/v1/embeddings"]);
  const STAGES = ["queue", "tokenize", "embed", "search", "rescore"];
  // Page at "/" or "/console": the API lives next to it (a path prefix set by a proxy is kept).
  const BASE = new URL(".", document.baseURI);

  const $ = (id) => document.getElementById(id);
  let info = null;

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmtMs = (ms) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)) + " ms";
  const fmtNum = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "–");
  const short = (fp) => (fp ? String(fp).slice(0, 12) : "–");

  // ------------------------------------------------------------------ API client

  class ApiError extends Error {
    constructor(status, type, message, details) {
      super(message);
      this.status = status;
      this.type = type;
      this.details = details || null;
    }
  }

  async function request(path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = "Bearer " + key;
    let response;
    try {
      response = await fetch(new URL(path, BASE), {
        method: body === undefined ? "GET" : "POST",
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "network_error", "cannot reach the server (" + err.message + ")");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message =
        data && typeof data.error === "string"
          ? data.error
          : `${response.status} ${response.statusText || "error"}`.trim();
      throw new ApiError(response.status, (data && data.type) || "http_error", message, data && data.details);
    }
    return data;
  }

  // The key is asked for once per tab; a refused key asks again with the server's reason.
  let keyPrompt = null;

  function askForKey(reason) {
    if (keyPrompt) return keyPrompt;
    const dialog = $("key-dialog");
    const input = $("api-key");
    $("key-message").textContent = reason || "";
    input.value = "";
    keyPrompt = new Promise((resolve) => {
      const done = () => {
        dialog.removeEventListener("close", done);
        keyPrompt = null;
        const key = input.value.trim();
        if (dialog.returnValue === "ok" && key) {
          sessionStorage.setItem(KEY_STORAGE, key);
          $("change-key").hidden = false;
          resolve(true);
        } else {
          resolve(false);
        }
      };
      dialog.addEventListener("close", done);
    });
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
    return keyPrompt;
  }

  async function api(path, body) {
    for (;;) {
      try {
        return await request(path, body);
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 401) throw err;
        $("change-key").hidden = false; // the way back to the prompt after a cancel
        const hadKey = sessionStorage.getItem(KEY_STORAGE) !== null;
        sessionStorage.removeItem(KEY_STORAGE);
        const reason = hadKey ? "The server refused that key: " + err.message : "";
        if (!(await askForKey(reason))) throw err;
      }
    }
  }

  // ------------------------------------------------------------------ errors

  function errorBox(target, err) {
    target.replaceChildren();
    const status = err.status ? ` (${err.status}${err.type ? " " + err.type : ""})` : "";
    target.append(el("strong", { text: "The API answered with an error" + status }));
    target.append(el("div", { className: "error-message", text: err.message }));
    if (Array.isArray(err.details) && err.details.length) {
      target.append(
        el(
          "ul",
          {},
          err.details.map((d) =>
            el("li", {}, el("code", { text: (d.loc || []).join(".") }), " ", d.msg || ""),
          ),
        ),
      );
    }
    target.hidden = false;
  }

  function showError(err) {
    errorBox($("error"), err);
  }

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function setConnection(state, text) {
    const box = $("connection");
    box.classList.toggle("ok", state === "ok");
    box.classList.toggle("bad", state === "bad");
    $("connection-text").textContent = text;
  }

  // ------------------------------------------------------------------ /info

  async function loadInfo() {
    try {
      info = await api("info");
    } catch (err) {
      setConnection("bad", "not connected: " + err.message);
      showError(err);
      return;
    }
    const bundle = info.bundle;
    setConnection("ok", `serving ${bundle.version} · ${bundle.n_docs.toLocaleString()} documents`);
    if (sessionStorage.getItem(KEY_STORAGE)) $("change-key").hidden = false;
    renderInfo(info);
    fillVariantSelects(info);
  }

  function fact(list, label, ...value) {
    list.append(el("dt", { text: label }), el("dd", {}, ...value));
  }

  function renderInfo(data) {
    const bundle = data.bundle;
    const student = data.student;
    $("bundle-version").textContent = bundle.version;

    const facts = $("bundle-facts");
    facts.replaceChildren();
    fact(facts, "documents", bundle.n_docs.toLocaleString());
    fact(facts, "vectors", `${bundle.dim}-d ${bundle.vectors_dtype}`);
    fact(facts, "default", el("code", { text: bundle.default_variant }));
    fact(facts, "created", String(bundle.created_at || "–").replace("T", " "));
    fact(facts, "faiss", `${data.faiss.version} on ${data.faiss.device}`);

    const body = $("variants").tBodies[0];
    body.replaceChildren();
    for (const v of bundle.variants) {
      const row = el(
        "tr",
        { className: v.name === bundle.default_variant ? "default" : null },
        el("td", {}, el("code", { text: v.name })),
        el("td", { text: v.kind }),
        el("td", { className: "num", text: v.bytes_per_doc == null ? "–" : fmtNum(v.bytes_per_doc, 0) }),
        el("td", { text: v.device }),
      );
      body.append(row);
    }

    const models = $("model-facts");
    models.replaceChildren();
    fact(models, "teacher", bundle.teacher.name, el("br"), el("span", { className: "fp", title: bundle.teacher.fingerprint, text: short(bundle.teacher.fingerprint) }));
    fact(models, "student", student.name, el("br"), el("span", { className: "fp", title: student.fingerprint, text: short(student.fingerprint) }));
    fact(models, "runs as", `${student.precision} · ${(student.providers || []).join(", ")}`);
    const aligned = student.aligned_to;
    if (aligned) {
      fact(models, "alignment", `${aligned.method} on ${Number(aligned.n_texts).toLocaleString()} texts`);
      const cos = Object.entries(aligned.heldout_cosine || {});
      fact(
        models,
        "held-out cos",
        cos.length ? cos.map(([kind, value]) => `${kind} ${Number(value).toFixed(3)}`).join(" · ") : "–",
      );
    } else {
      fact(models, "alignment", student.pairing || "none");
    }

    const settings = data.settings || {};
    if (settings.max_k) $("k").max = settings.max_k;
    if (settings.oversample) $("oversample").placeholder = `default ${settings.oversample}`;
    // With a key the server publishes no /docs: do not link to a 404.
    $("docs-link").hidden = Boolean(settings.api_key);
  }

  function fillVariantSelects(data) {
    const names = data.bundle.variants.map((v) => v.name);
    const fallback = data.bundle.default_variant;
    for (const id of ["variant-a", "variant-b"]) {
      const select = $(id);
      const keep = select.value;
      select.replaceChildren(el("option", { value: "", text: `default (${fallback})` }));
      for (const name of names) select.append(el("option", { value: name, text: name }));
      if (names.includes(keep)) select.value = keep;
    }
    // A useful first comparison: the default variant against full-precision floats, or
    // against its own first pass when there is no float index.
    if (!$("variant-b").dataset.touched) {
      const full = data.bundle.variants.find((v) => v.kind === "f32" && v.dim === data.bundle.dim && !v.hnsw);
      if (full && full.name !== fallback) {
        $("variant-b").value = full.name;
      } else {
        $("variant-b").value = fallback;
        $("rescore-b").value = "off";
      }
    }
  }

  // ------------------------------------------------------------------ search

  function parseFilter(text) {
    const trimmed = text.trim();
    if (!trimmed) return undefined;
    if (trimmed.startsWith("{")) {
      let parsed;
      try {
        parsed = JSON.parse(trimmed);
      } catch (err) {
        throw new ApiError(0, "invalid_filter", "metadata filter: not valid JSON (" + err.message + ")");
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new ApiError(0, "invalid_filter", "metadata filter: write a JSON object such as {\"topic\": \"health\"}");
      }
      return parsed;
    }
    const filter = {};
    for (const part of trimmed.split(",")) {
      if (!part.trim()) continue;
      const at = part.indexOf("=");
      if (at < 1) {
        throw new ApiError(0, "invalid_filter", `metadata filter: "${part.trim()}" is not key=value`);
      }
      const key = part.slice(0, at).trim();
      const raw = part.slice(at + 1).trim();
      // Bare numbers and booleans are typed, "quoted" values stay strings.
      let value = raw;
      if (/^".*"$/.test(raw)) value = raw.slice(1, -1);
      else if (raw === "true" || raw === "false") value = raw === "true";
      else if (raw !== "" && Number.isFinite(Number(raw))) value = Number(raw);
      filter[key] = value;
    }
    return filter;
  }

  function intOrUndefined(input) {
    const raw = input.value.trim();
    if (raw === "") return undefined;
    const n = Number(raw);
    return Number.isFinite(n) ? n : raw; // the API names what is wrong with a non-number
  }

  function searchBody(query, side) {
    const body = { query, include_text: true, include_metadata: true };
    const k = intOrUndefined($("k"));
    if (k !== undefined) body.k = k;
    const variant = $("variant-" + side).value;
    if (variant) body.variant = variant;
    const rescore = $("rescore-" + side).value;
    if (rescore) body.rescore = rescore === "on";
    const oversample = intOrUndefined($("oversample"));
    if (oversample !== undefined) body.oversample = oversample;
    const filter = parseFilter($("filter").value);
    if (filter !== undefined) body.filter = filter;
    return body;
  }

  let searchSeq = 0;

  async function runSearch(event) {
    event.preventDefault();
    const query = $("query").value;
    if (!query.trim()) {
      $("query").focus();
      $("search-status").textContent = "Type a query first.";
      markDone();
      return;
    }
    const compare = $("compare").checked;
    let bodies;
    try {
      bodies = compare ? [searchBody(query, "a"), searchBody(query, "b")] : [searchBody(query, "a")];
    } catch (err) {
      showError(err);
      markDone();
      return;
    }
    clearError();
    const seq = ++searchSeq;
    const results = $("results");
    results.setAttribute("aria-busy", "true");
    $("search-button").disabled = true;
    $("search-status").textContent = compare ? "Searching both configurations…" : "Searching…";
    const started = performance.now();
    const outcomes = await Promise.allSettled(bodies.map((b) => api("search", b)));
    if (seq !== searchSeq) return; // a newer search owns the page
    results.setAttribute("aria-busy", "false");
    $("search-button").disabled = false;
    const elapsed = performance.now() - started;

    const failed = outcomes.filter((o) => o.status === "rejected");
    if (failed.length === outcomes.length) {
      showError(failed[0].reason);
      $("search-status").textContent = "The search failed.";
      markDone();
      return;
    }
    renderResults(query, bodies, outcomes);
    updateMoreButtons();
    const answered = outcomes.find((o) => o.status === "fulfilled").value;
    $("search-status").textContent =
      `${answered.results.length} results in ${fmtMs(elapsed)} round trip` +
      (answered.truncated ? " · the query was truncated to the student's maximum length" : "");
    markDone();
  }

  // Counts finished searches on the results element, for anyone waiting on the page.
  let searchesDone = 0;
  function markDone() {
    $("results").dataset.done = String(++searchesDone);
  }

  // Marked only to show where words do meet: dense retrieval needs no shared word at all.
  const STOPWORDS = new Set(
    "the and for that this with from what which when where who whom why how are was were been has have had does did can could should would will not but its into about than then them they their there these those our your".split(" "),
  );

  function queryTerms(query) {
    const words = query.toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || [];
    return [...new Set(words.filter((w) => !STOPWORDS.has(w)))];
  }

  function highlighted(text, terms) {
    if (!terms.length) return [text];
    const escaped = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const pattern = new RegExp("(" + escaped.join("|") + ")", "giu");
    return text.split(pattern).map((part, i) => (i % 2 === 1 ? el("mark", { text: part }) : part));
  }

  function timingBar(timings) {
    const total = Math.max(timings.total, 1e-9);
    const parts = STAGES.map((stage) => [stage, Math.max(0, timings[stage] || 0)]);
    const other = Math.max(0, timings.total - parts.reduce((sum, [, v]) => sum + v, 0));
    parts.push(["other", other]);
    const bar = el("div", { className: "timing-bar", role: "img" });
    const label = parts.map(([stage, ms]) => `${stage} ${fmtMs(ms)}`).join(", ");
    bar.setAttribute("aria-label", `stage timings: ${label}; total ${fmtMs(timings.total)}`);
    for (const [stage, ms] of parts) {
      if (ms <= 0) continue;
      const seg = el("span", { className: "stage-" + stage, title: `${stage} ${fmtMs(ms)}` });
      seg.style.width = ((100 * ms) / total).toFixed(2) + "%";
      bar.append(seg);
    }
    const legend = el(
      "ul",
      { className: "timing-legend", "aria-hidden": "true" },
      parts.map(([stage, ms]) =>
        el("li", { "data-stage": stage }, el("span", { className: "swatch stage-" + stage }), `${stage} ${fmtMs(ms)}`),
      ),
    );
    return [bar, legend];
  }

  function hitItem(hit, rank, terms, move) {
    const meta = hit.metadata || {};
    const text = hit.text || "";
    const snippet = el("p", { className: "snippet" }, highlighted(text, terms));
    const titled = typeof meta.title === "string";
    const shownMeta = Object.entries(meta).filter(([key]) => !(titled && key === "title"));
    const item = el(
      "li",
      { className: "hit", "data-id": hit.id, "data-rank": rank },
      el("span", { className: "rank", text: rank }),
      el(
        "div",
        {},
        el(
          "div",
          { className: "hit-head" },
          el("span", { className: "hit-id", text: hit.id }),
          el("span", { className: "score", title: "score", text: hit.score.toFixed(4) }),
          move,
        ),
        titled ? el("p", { className: "hit-title", text: meta.title }) : null,
        text ? snippet : null,
        text ? el("button", { type: "button", className: "more", "aria-expanded": "false", text: "more", hidden: true }) : null,
        shownMeta.length
          ? el(
              "ul",
              { className: "meta", "aria-label": "metadata" },
              shownMeta.map(([key, value]) =>
                el("li", {}, key + ": ", el("b", { text: typeof value === "object" ? JSON.stringify(value) : String(value) })),
              ),
            )
          : null,
      ),
    );
    return item;
  }

  function moveBadge(id, rank, otherRanks, side) {
    const other = otherRanks.get(id);
    if (other === undefined) {
      return el("span", {
        className: "move " + (side === "b" ? "new" : "gone"),
        title: side === "b" ? "not in A's results" : "not in B's results",
        text: side === "b" ? "new" : "only A",
      });
    }
    if (side === "a") return null;
    const delta = other - rank; // positive: B ranks it higher than A did
    if (delta === 0) return el("span", { className: "move same", title: "same rank as in A", text: "=" });
    return el("span", {
      className: "move " + (delta > 0 ? "up" : "down"),
      title: `rank ${other} in A`,
      text: (delta > 0 ? "▲" : "▼") + Math.abs(delta),
    });
  }

  function pane(side, body, outcome, terms, otherRanks) {
    const label = side.toUpperCase();
    const box = el("section", { className: "card pane", id: "pane-" + side, "aria-label": "Results " + label });
    if (outcome.status === "rejected") {
      const title = el("h2", { className: "pane-title" }, el("span", { className: "label", text: label }), body.variant || "server default");
      const errorDiv = el("div", { className: "error", role: "alert" });
      errorBox(errorDiv, outcome.reason);
      box.append(el("div", { className: "pane-head" }, title), errorDiv);
      return box;
    }
    const answer = outcome.value;
    const title = el(
      "h2",
      { className: "pane-title" },
      el("span", { className: "label", text: label }),
      el("code", { text: answer.variant }),
      el("span", { className: "badge" + (answer.rescored ? "" : " plain"), text: answer.rescored ? "rescored" : "first pass only" }),
      el("span", { className: "pane-total", text: fmtMs(answer.timings_ms.total) }),
    );
    box.append(el("div", { className: "pane-head" }, title, ...timingBar(answer.timings_ms)));
    if (!answer.results.length) {
      box.append(el("p", { className: "no-hits", text: "No results (a filter may exclude every document)." }));
      return box;
    }
    const list = el("ol", { className: "hits" });
    answer.results.forEach((hit, i) => {
      const move = otherRanks ? moveBadge(hit.id, i + 1, otherRanks, side) : null;
      list.append(hitItem(hit, i + 1, terms, move));
    });
    box.append(list);
    return box;
  }

  function ranksOf(outcome) {
    if (!outcome || outcome.status !== "fulfilled") return null;
    return new Map(outcome.value.results.map((hit, i) => [hit.id, i + 1]));
  }

  function renderResults(query, bodies, outcomes) {
    const terms = queryTerms(query);
    const panes = $("panes");
    const summary = $("compare-summary");
    const two = outcomes.length === 2;
    const ranksA = two ? ranksOf(outcomes[0]) : null;
    const ranksB = two ? ranksOf(outcomes[1]) : null;
    const both = ranksA && ranksB;
    panes.classList.toggle("two", two);
    panes.replaceChildren(
      pane("a", bodies[0], outcomes[0], terms, both ? ranksB : null),
      ...(two ? [pane("b", bodies[1], outcomes[1], terms, both ? ranksA : null)] : []),
    );
    if (both) {
      const shared = [...ranksA.keys()].filter((id) => ranksB.has(id)).length;
      const size = Math.max(ranksA.size, ranksB.size, 1);
      const fill = el("span");
      fill.style.width = ((100 * shared) / size).toFixed(1) + "%";
      summary.replaceChildren(
        el("span", { className: "overlap", id: "overlap", text: `${shared} of ${size} shared` }),
        el("span", { className: "overlap-bar", role: "img", "aria-label": `overlap ${Math.round((100 * shared) / size)}%` }, fill),
        el("span", { className: "muted small", text: `${ranksA.size - shared} only in A · ${ranksB.size - shared} only in B · ▲▼ rank change from A to B` }),
      );
      summary.className = "card compare-summary";
      summary.hidden = false;
    } else {
      summary.hidden = true;
    }
  }

  // "more" only where the clamped snippet hides text (rechecked when the panes resize).
  function updateMoreButtons() {
    for (const button of document.querySelectorAll("#panes button.more")) {
      const snippet = button.previousElementSibling;
      if (snippet.classList.contains("open")) continue;
      button.hidden = snippet.scrollHeight <= snippet.clientHeight + 1;
    }
  }

  // ------------------------------------------------------------------ /metrics

  // Prometheus text format: enough of it for counters, gauges and histograms.
  function parseMetrics(text) {
    const samples = [];
    const line = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"/g;
    for (const row of text.split("\n")) {
      if (!row || row.startsWith("#")) continue;
      const m = line.exec(row);
      if (!m) continue;
      const labels = {};
      if (m[2]) for (const l of m[2].matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
      samples.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return samples;
  }

  function snapshotOf(samples) {
    const snap = { t: performance.now() / 1000, requests: 0, buckets: new Map(), count: 0, batchSum: 0, batchCount: 0, queue: NaN, inFlight: NaN };
    for (const s of samples) {
      const route = s.labels.route;
      if (s.name === "tandem_requests_total" && API_ROUTES.has(route)) snap.requests += s.value;
      else if (s.name === "tandem_request_duration_seconds_bucket" && API_ROUTES.has(route)) {
        const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
        snap.buckets.set(le, (snap.buckets.get(le) || 0) + s.value);
      } else if (s.name === "tandem_request_duration_seconds_count" && API_ROUTES.has(route)) snap.count += s.value;
      else if (s.name === "tandem_batch_size_sum") snap.batchSum += s.value;
      else if (s.name === "tandem_batch_size_count") snap.batchCount += s.value;
      else if (s.name === "tandem_queue_depth") snap.queue = (Number.isNaN(snap.queue) ? 0 : snap.queue) + s.value;
      else if (s.name === "tandem_in_flight") snap.inFlight = (Number.isNaN(snap.inFlight) ? 0 : snap.inFlight) + s.value;
    }
    return snap;
  }

  // histogram_quantile as Prometheus does it: linear inside the bucket that holds the rank.
  function quantile(q, buckets) {
    const bounds = [...buckets.keys()].sort((a, b) => a - b);
    if (!bounds.length) return NaN;
    const total = buckets.get(bounds[bounds.length - 1]);
    if (!(total > 0)) return NaN;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const bound of bounds) {
      const count = buckets.get(bound);
      if (count >= rank) {
        if (bound === Infinity) return lower; // beyond the last finite bucket
        const inside = count - below;
        return inside > 0 ? lower + ((bound - lower) * (rank - below)) / inside : bound;
      }
      lower = bound;
      below = count;
    }
    return lower;
  }

  const snapshots = [];

  function renderLive() {
    const last = snapshots[snapshots.length - 1];
    $("live-queue").textContent = Number.isNaN(last.queue) ? "–" : String(last.queue);
    $("live-inflight").textContent = Number.isNaN(last.inFlight) ? "–" : String(last.inFlight);
    if (snapshots.length < 2) return;
    const first = snapshots[0];
    const dt = last.t - first.t;
    const requests = last.requests - first.requests;
    $("live-rps").textContent = fmtNum(requests / dt, requests / dt >= 10 ? 0 : 2);
    const window = new Map();
    for (const [le, count] of last.buckets) window.set(le, count - (first.buckets.get(le) || 0));
    const p50 = quantile(0.5, window);
    const p99 = quantile(0.99, window);
    $("live-p50").textContent = Number.isFinite(p50) ? fmtMs(p50 * 1000) : "–";
    $("live-p99").textContent = Number.isFinite(p99) ? fmtMs(p99 * 1000) : "–";
    const batches = last.batchCount - first.batchCount;
    $("live-batch").textContent = batches > 0 ? fmtNum((last.batchSum - first.batchSum) / batches, 1) : "–";
    drawSpark();
  }

  // Requests per second as steps: each rate holds over its interval.
  function drawSpark() {
    const svg = $("live-spark");
    svg.replaceChildren();
    if (snapshots.length < 2) return;
    // The x axis spans the snapshots held: the last minute once the page has been open that long.
    const now = snapshots[snapshots.length - 1].t;
    const span = Math.max(now - snapshots[0].t, 1e-6);
    const x = (t) => 200 - ((now - t) / span) * 200;
    const steps = [];
    for (let i = 1; i < snapshots.length; i++) {
      const dt = snapshots[i].t - snapshots[i - 1].t;
      const rate = dt > 0 ? (snapshots[i].requests - snapshots[i - 1].requests) / dt : 0;
      steps.push([x(snapshots[i - 1].t), x(snapshots[i].t), rate]);
    }
    const max = Math.max(...steps.map((s) => s[2]), 1);
    const y = (rate) => (34 - (32 * rate) / max).toFixed(1);
    const line = steps
      .map(([x0, x1, rate], i) => `${i ? "L" : "M"}${x0.toFixed(1)},${y(rate)} L${x1.toFixed(1)},${y(rate)}`)
      .join(" ");
    const ns = "http://www.w3.org/2000/svg";
    const area = document.createElementNS(ns, "path");
    area.setAttribute("class", "area");
    area.setAttribute("d", `${line} L${steps[steps.length - 1][1].toFixed(1)},36 L${steps[0][0].toFixed(1)},36 Z`);
    const stroke = document.createElementNS(ns, "path");
    stroke.setAttribute("class", "line");
    stroke.setAttribute("d", line);
    svg.append(area, stroke);
  }

  async function pollMetrics() {
    try {
      const response = await fetch(new URL("metrics", BASE), { cache: "no-store" });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      const snap = snapshotOf(parseMetrics(await response.text()));
      const previous = snapshots[snapshots.length - 1];
      if (previous && snap.requests < previous.requests) snapshots.length = 0; // server restarted
      snapshots.push(snap);
      while (snapshots.length > 2 && snap.t - snapshots[1].t >= METRICS_WINDOW_S) snapshots.shift();
      $("live-error").hidden = true;
      renderLive();
    } catch (err) {
      $("live-error").textContent = "metrics unavailable: " + err.message;
      $("live-error").hidden = false;
    }
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("search-form").addEventListener("submit", runSearch);
    $("compare").addEventListener("change", () => {
      $("compare").closest("fieldset").classList.toggle("on", $("compare").checked);
    });
    $("variant-b").addEventListener("change", () => {
      $("variant-b").dataset.touched = "1";
    });
    $("change-key").addEventListener("click", async () => {
      if (await askForKey("")) {
        clearError();
        loadInfo();
      }
    });
    $("key-cancel").addEventListener("click", () => {
      $("key-dialog").close("cancel");
    });
    // "more" toggles a clamped snippet open; delegated so it works for every result.
    $("panes").addEventListener("click", (event) => {
      const button = event.target.closest("button.more");
      if (!button) return;
      const snippet = button.previousElementSibling;
      const open = snippet.classList.toggle("open");
      button.setAttribute("aria-expanded", String(open));
      button.textContent = open ? "less" : "more";
    });
    new ResizeObserver(updateMoreButtons).observe($("panes"));
    loadInfo().then(() => $("query").focus());
    pollMetrics();
    setInterval(pollMetrics, METRICS_EVERY_MS);
  }

  init();
})();
