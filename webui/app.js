/* BRK coin miner web UI: reads the webui function once a second, draws the speed
 * and shows each function's throughput and latency.
 *
 * Works served by the webui function itself (same origin, relative URLs as in
 * DockerCoins) or from any static host with ?api=http://HOST:PORT pointing at it.
 * Pure helpers (rate, addSample, ...) are on window.brkcoin for the tests.
 */
(function () {
  "use strict";

  const POLL_MS = 1000;
  const HEALTH_MS = 5000;
  const FETCH_TIMEOUT_MS = 3000;
  // Why 5 s: see rate() below.
  const RATE_WINDOW_S = 5;
  // No speed until the readings span this long: a shorter span is too coarse.
  const MIN_SPAN_S = 3;
  const CHART_SPAN_S = 300; // the chart shows the last 5 minutes
  const MIN_CHART_S = 30;
  const KEEP_SAMPLES_S = 60; // readings kept for the rate (far more than the window)
  const COIN_ROWS = 10;
  const FUNCTIONS = ["rng", "hasher", "worker"];
  const UPSTREAMS = ["rng", "hasher"]; // the worker's calls, timed by the worker
  // What the page shows for a null figure: its Redis key holds what the worker
  // never writes there (the answer's `unreadable` says why).
  const UNKNOWN = "unknown";

  /* Hashes per second at the newest reading: delta hashes / delta now, as in
   * DockerCoins, but across the last >= 5 s of readings instead of the last poll.
   *
   * The worker adds its count to `hashes` about once a second on its own clock,
   * not aligned with our polls. A delta between two successive polls therefore
   * holds 0, 1 or 2 of those updates and the speed would jump between zero and
   * double. Across 5 s one update landing just before or after a poll moves the
   * result by at most one update in five. Deltas use the server's `now`, so a
   * late poll, a missed one, or a Redis outage followed by the worker's catch-up
   * update still gives the true average over the time it covers.
   * samples: [{now, hashes}], oldest first. Returns null until there is enough.
   */
  function rate(samples) {
    const n = samples.length;
    if (n < 2) return null;
    const last = samples[n - 1];
    let first = samples[0];
    for (let i = n - 2; i >= 0; i--) {
      if (last.now - samples[i].now >= RATE_WINDOW_S) {
        first = samples[i]; // the newest reading at least one window old
        break;
      }
    }
    const span = last.now - first.now;
    if (span < MIN_SPAN_S) return null;
    return (last.hashes - first.hashes) / span;
  }

  function newState() {
    return { samples: [], xs: [], ys: [], gap: false, speed: null, last: null };
  }

  /* Adds one /json reading; updates the speed and the chart series. */
  function addSample(state, data) {
    const sample = { now: data.now, hashes: data.hashes };
    const prev = state.samples[state.samples.length - 1];
    if (prev && (sample.hashes < prev.hashes || sample.now <= prev.now)) {
      // The counter went down (Redis emptied) or the clock went back: start afresh.
      state.samples = [];
      state.xs.length = 0;
      state.ys.length = 0;
      state.gap = false;
    }
    state.samples.push(sample);
    while (state.samples.length > 2 && sample.now - state.samples[0].now > KEEP_SAMPLES_S) {
      state.samples.shift();
    }
    state.speed = rate(state.samples);
    state.last = data;
    if (state.speed !== null) {
      const lastX = state.xs[state.xs.length - 1];
      if (state.gap && lastX !== undefined) {
        // A null point breaks the line where readings failed.
        state.xs.push((lastX + sample.now) / 2);
        state.ys.push(null);
      }
      state.xs.push(sample.now);
      state.ys.push(state.speed);
      state.gap = false;
    }
    while (state.xs.length && sample.now - state.xs[0] > CHART_SPAN_S) {
      state.xs.shift();
      state.ys.shift();
    }
    return state.speed;
  }

  /* The counter's history (/history: [second, hashes] points, oldest first) as
   * the readings a page polling once a second would have taken, ending at `now`.
   *
   * Every change of the counter is a worker's flush, and every flush writes the
   * point of its second (the last flush in a second wins). So at the whole
   * second t the counter held the point of the latest second before t, and
   * between points it did not move: a second without a point is a second
   * without mining, read as such, not drawn across. Fed through addSample,
   * these readings get the same 5 s smoothing as the live ones.
   */
  function historySamples(points, now) {
    const valid = points.filter(
      (p) => Array.isArray(p) && p.length === 2 && Number.isFinite(p[0]) && Number.isFinite(p[1])
    );
    const samples = [];
    if (!valid.length || !Number.isFinite(now)) return samples;
    const end = Math.floor(now);
    // Enough for the chart's span, plus the rate's window before its first point.
    const start = Math.max(valid[0][0] + 1, end - CHART_SPAN_S - RATE_WINDOW_S);
    let next = 0;
    let hashes = null;
    for (let t = start; t <= end; t++) {
      while (next < valid.length && valid[next][0] < t) hashes = valid[next++][1];
      if (hashes !== null) samples.push({ now: t, hashes });
    }
    return samples;
  }

  /* The upstream the worker waits on longest: the highest p50 latency, then
   * p95, among rng and hasher when both had timed calls; null on a tie or
   * without both (one alone is not slower than anything). */
  function slowest(functions) {
    const timed = UPSTREAMS.filter((name) => functions[name] && isMs(functions[name].p50_ms));
    if (timed.length < UPSTREAMS.length) return null;
    const latency = (name) => [functions[name].p50_ms, functions[name].p95_ms || 0];
    const [a, b] = timed.map(latency);
    const order = a[0] - b[0] || a[1] - b[1];
    return order > 0 ? timed[0] : order < 0 ? timed[1] : null;
  }

  function isMs(value) {
    return typeof value === "number" && isFinite(value) && value >= 0;
  }

  function isCount(value) {
    return Number.isInteger(value) && value >= 0;
  }

  /* "instances × concurrency · queued" from the local platform's report of a
   * function; null when it has none (every other target), unknown when its
   * numbers are not counts. */
  function scaleText(report) {
    if (!report) return null;
    if (!isCount(report.instances) || !isCount(report.concurrency)) return UNKNOWN;
    const each = report.concurrency === 0 ? "unlimited" : String(report.concurrency);
    let text = report.instances + " \u00d7 " + each;
    if (isCount(report.queued)) text += " \u00b7 " + report.queued + " queued";
    return text;
  }

  function scheduleText(scheduler) {
    if (!scheduler) return null;
    if (typeof scheduler.schedule !== "string") return UNKNOWN;
    let text = scheduler.schedule.slice(0, 40);
    if (isCount(scheduler.fanout)) text += " \u00b7 fan-out " + scheduler.fanout;
    if (isCount(scheduler.skipped) && scheduler.skipped > 0) {
      text += " \u00b7 " + scheduler.skipped + " skipped";
    }
    if (scheduler.paused === true) text += " \u00b7 paused";
    return text;
  }

  /* ---- the local platform's autoscaling, per function ----
   * Each helper takes the platform's report of one function as /stats passes it
   * on from Redis: anything may be of the wrong type. A row is shown only when
   * the report carries its field (so never without the local platform); a field
   * of the wrong type reads "unknown". */

  const SPARK_WIDTH = 120;
  const SPARK_HEIGHT = 24;
  const SPARK_POINTS = 120; // the platform keeps 120, one every 5 s

  function isObject(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value);
  }

  function isSeconds(value) {
    return typeof value === "number" && isFinite(value) && value >= 0;
  }

  /* Whether a row for `key` shows. A report that is no object at all (a string,
   * a list) carries every field, each one unknown. */
  function carries(report, key) {
    if (!report) return false;
    return !isObject(report) || Object.prototype.hasOwnProperty.call(report, key);
  }

  function member(report, key) {
    return isObject(report) ? report[key] : undefined;
  }

  /* 1.4 s, 12 s, 2.5 min, 1.2 h. */
  function formatSeconds(value) {
    if (value < 10) return oneDecimal.format(value) + " s";
    if (value < 60) return integer.format(value) + " s";
    if (value < 3600) return oneDecimal.format(value / 60) + " min";
    return oneDecimal.format(value / 3600) + " h";
  }

  /* The valid [epoch seconds, instances] points of `history`, oldest first; null
   * when it is no list. */
  function sparkPoints(history) {
    if (!Array.isArray(history)) return null;
    return history
      .filter((p) => Array.isArray(p) && p.length === 2 && Number.isFinite(p[0]) && isCount(p[1]))
      .sort((a, b) => a[0] - b[0])
      .slice(-SPARK_POINTS);
  }

  /* The sparkline's polyline: a step line (the count holds until it changes),
   * time across the history's span, 0 to the highest count upwards. */
  function sparkLine(points) {
    if (!points || !points.length) return "";
    const first = points[0][0];
    const span = points[points.length - 1][0] - first;
    const top = Math.max(1, ...points.map((p) => p[1]));
    const x = (t) => (span > 0 ? ((t - first) / span) * SPARK_WIDTH : 0);
    const y = (n) => SPARK_HEIGHT - 1 - (n / top) * (SPARK_HEIGHT - 2);
    const xy = (a, b) => a.toFixed(1) + "," + b.toFixed(1);
    const out = [xy(x(first), y(points[0][1]))];
    for (let i = 1; i < points.length; i++) {
      out.push(xy(x(points[i][0]), y(points[i - 1][1])), xy(x(points[i][0]), y(points[i][1])));
    }
    if (span === 0) out.push(xy(SPARK_WIDTH, y(points[0][1])));
    return out.join(" ");
  }

  function readyText(report) {
    const ready = member(report, "instances");
    return isCount(ready) ? integer.format(ready) : UNKNOWN;
  }

  /* "wanted N" while the autoscaler wants another count than is ready; null when
   * they agree. */
  function wantedText(report) {
    if (!carries(report, "wanted")) return null;
    const wanted = member(report, "wanted");
    if (!isCount(wanted)) return "wanted " + UNKNOWN;
    return wanted === member(report, "instances") ? null : "wanted " + integer.format(wanted);
  }

  function modeText(report) {
    const autoscaled = member(report, "autoscaled");
    if (autoscaled === false) return "pinned";
    if (autoscaled !== true) return UNKNOWN;
    const kind = member(report, "kind");
    let text = kind === "kpa" ? "KPA autoscaling" : kind === "cpu" ? "CPU autoscaling"
      : "autoscaling (" + UNKNOWN + ")";
    if (member(report, "panic") === true) text += " \u00b7 panic";
    return text;
  }

  /* The autoscaler's latest change: "1 → 4: reason (12 s ago)". */
  function decisionText(report, now) {
    const decision = member(report, "decision");
    if (decision === null) return "none yet";
    if (!isObject(decision) || !isCount(decision.from) || !isCount(decision.to)) return UNKNOWN;
    let text = decision.from + " \u2192 " + decision.to;
    const reason = decision.reason;
    if (typeof reason === "string") {
      if (reason) text += ": " + reason.slice(0, 200);
    } else if (reason !== undefined && reason !== null) {
      text += ": " + UNKNOWN;
    }
    if (Number.isFinite(decision.at) && Number.isFinite(now)) {
      text += " (" + formatAge(now - decision.at) + ")";
    }
    return text;
  }

  /* "3 cold starts, latest 1.4 s (2 min ago)". */
  function coldStartsText(report, now) {
    const count = member(report, "cold_starts");
    if (!isCount(count)) return UNKNOWN;
    let text = integer.format(count) + (count === 1 ? " cold start" : " cold starts");
    const latest = member(report, "cold_start_seconds");
    if (isSeconds(latest)) {
      text += ", latest " + formatSeconds(latest);
    } else if (latest !== null && latest !== undefined) {
      text += ", latest " + UNKNOWN;
    }
    const at = member(report, "cold_start_at");
    if (count > 0 && Number.isFinite(at) && Number.isFinite(now)) {
      text += " (" + formatAge(now - at) + ")";
    }
    return text;
  }

  /* Requests that waited for an instance to start; null when none did. */
  function coldRequestsText(report) {
    if (!carries(report, "cold_requests")) return null;
    const count = member(report, "cold_requests");
    if (!isCount(count)) return "requests waiting for a start: " + UNKNOWN;
    if (count === 0) return null;
    let text = integer.format(count) + (count === 1 ? " request" : " requests") +
      " waited for a start";
    const latest = member(report, "cold_wait_seconds");
    if (isSeconds(latest)) text += ", latest " + formatSeconds(latest);
    return text;
  }

  /* Instance-seconds as /stats gives them: a number, or null when unknown. */
  function instanceSecondsText(value) {
    if (!isSeconds(value)) return UNKNOWN;
    return (value < 100 ? oneDecimal : integer).format(value) + " s";
  }

  /* Requests answered 429; null when none was. */
  function throttledText(report) {
    if (!carries(report, "throttled")) return null;
    const count = member(report, "throttled");
    if (!isCount(count)) return UNKNOWN;
    return count > 0 ? integer.format(count) : null;
  }

  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat(undefined, {
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  });

  function formatSpeed(value) {
    if (value === null) return "\u2026";
    return value < 100 ? oneDecimal.format(value) : integer.format(value);
  }

  const threeDigits = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 3 });

  /* A latency bucket's bound as it is (1.25 ms, 315 ms, 2.5 s). */
  function formatMs(value) {
    if (value === null) return "\u2013"; // no timed call
    if (value < 1000) return threeDigits.format(value) + " ms";
    return threeDigits.format(value / 1000) + " s";
  }

  /* A figure that may be unknown (null), else as `format` shows it. */
  function orUnknown(value, format) {
    return value === null ? UNKNOWN : format(value);
  }

  /* Why an answer's nulls are unknown, from its `unreadable` ({key: why}); "" when none. */
  function unreadableText(data) {
    const keys = data.unreadable && typeof data.unreadable === "object" ? data.unreadable : {};
    return Object.keys(keys)
      .map((key) => "Redis key '" + key + "' " + String(keys[key]).slice(0, 200))
      .join("; ");
  }

  function formatAge(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  }

  function compact(value) {
    if (value >= 1e6) return (value / 1e6).toFixed(value >= 1e7 ? 0 : 1) + "M";
    if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
    // The demo rate is ~3 hashes/s: its ticks (0.5, 1.5...) need their decimal.
    if (value < 10 && !Number.isInteger(value)) return value.toFixed(1);
    return integer.format(value);
  }

  /* The base URL of the webui function: "" (relative, same origin) or ?api=. */
  function apiBase(search) {
    const raw = new URLSearchParams(search).get("api");
    if (!raw) return "";
    let url;
    try {
      url = new URL(raw);
    } catch (e) {
      throw new Error("?api= must be a URL like http://127.0.0.1:8000, got " + raw);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new Error("?api= must be an http or https URL, got " + raw);
    }
    return url.href.replace(/\/+$/, "") + "/";
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJSON(url) {
    const shown = new URL(url, location.href).href;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(url, { cache: "no-store", signal: abort.signal });
    } catch (e) {
      throw new HttpError(0, "no answer from " + shown);
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok || body === null) {
      const why = body && typeof body.error === "string" ? body.error : "not the webui function?";
      const message = "HTTP " + response.status + " from " + shown + ": " + why;
      throw new HttpError(response.status, message);
    }
    return body;
  }

  function isWallet(data) {
    const isNumber = (v) => typeof v === "number" && isFinite(v);
    return isNumber(data.now) && [data.coins, data.hashes].every((v) => v === null || isNumber(v));
  }

  function isStats(data) {
    const rate = (v) => v === null || (typeof v === "number" && isFinite(v) && v >= 0);
    const msOrNull = (v) => v === null || isMs(v);
    const isUpstream = (u) => Boolean(u) && rate(u.calls_per_s) && rate(u.errors_per_s) &&
      msOrNull(u.p50_ms) && msOrNull(u.p95_ms);
    const isWorker = (w) => Boolean(w) && rate(w.hashes_per_s) &&
      ["instances", "invocations", "loops"].every((k) => w[k] === null || isCount(w[k]));
    const f = data.functions || {};
    return rate(data.window) && UPSTREAMS.every((name) => isUpstream(f[name])) &&
      isWorker(f.worker);
  }

  /* ---- the page ---- */

  const $ = (id) => document.getElementById(id);

  function setNumber(id, value, text) {
    const el = $(id);
    el.dataset.value = value === null ? "" : String(value);
    el.textContent = text;
  }

  function setStatus(kind, text, detail) {
    // Only on change: the status is a live region, read out by screen readers.
    if ($("status-text").textContent !== text) $("status-text").textContent = text;
    $("status").className = "status status-" + kind;
    // Numbers that stopped updating are dimmed, so a frozen value is never taken as live.
    document.body.classList.toggle("stale", kind !== "live");
    const alert = $("alert");
    alert.hidden = !detail;
    if (alert.textContent !== (detail || "")) alert.textContent = detail || "";
  }

  function setHealth(name, up, detail) {
    const row = document.querySelector('#health li[data-name="' + name + '"]');
    if (!row) return;
    row.className = up === null ? "" : up ? "up" : "down";
    row.querySelector(".detail").textContent = detail;
    // The per-function panel's dot says the same: from /health, never from the
    // numbers (a worker busy mining still answers, and idle is not down).
    const tile = document.querySelector('.fn[data-name="' + name + '"]');
    if (tile) {
      tile.classList.toggle("up", up === true);
      tile.classList.toggle("down", up === false);
      tile.querySelector(".dot").title = detail;
    }
  }

  /* A value in the per-function panel; data-value (where present) keeps the
   * number as a test or a script can read it. */
  function fieldOf(name, field) {
    return document.querySelector('.fn[data-name="' + name + '"] [data-field="' + field + '"]');
  }

  function setField(name, field, value, text) {
    const el = fieldOf(name, field);
    if (el.dataset.value !== undefined) el.dataset.value = value === null ? "" : String(value);
    el.textContent = text;
  }

  /* A row shown only with the local platform's report. */
  function setOptional(name, field, text) {
    setField(name, field, null, text || "");
    fieldOf(name, field).parentElement.hidden = !text;
  }

  /* A part of a row: hidden when `text` is null. */
  function setPart(name, field, value, text) {
    setField(name, field, value, text || "");
    fieldOf(name, field).hidden = text === null;
  }

  function showRow(name, row, shown) {
    const el = document.querySelector('.fn[data-name="' + name + '"] [data-row="' + row + '"]');
    if (el.hidden === shown) el.hidden = !shown;
  }

  function setSparkline(name, history) {
    const svg = fieldOf(name, "history");
    const points = sparkPoints(history);
    const last = points && points.length ? points[points.length - 1][1] : null;
    svg.dataset.value = last === null ? "" : String(last);
    svg.dataset.points = points ? String(points.length) : "";
    svg.querySelector("polyline").setAttribute("points", sparkLine(points));
    svg.classList.toggle("empty", !points || !points.length);
    let label = "instances over time " + UNKNOWN;
    if (points && points.length) {
      const minutes = Math.round((points[points.length - 1][0] - points[0][0]) / 60);
      label = "instances over the last " + minutes + " min: " +
        points.map((p) => p[1]).join(", ");
    }
    svg.setAttribute("aria-label", label.slice(0, 600));
  }

  /* The autoscaling rows of one card, from the platform's report of the function
   * and /stats' figures for it. */
  function renderPlatform(name, report, figures, now) {
    showRow(name, "instances", carries(report, "history") || carries(report, "wanted"));
    setSparkline(name, member(report, "history"));
    const ready = member(report, "instances");
    setField(name, "ready", isCount(ready) ? ready : null, readyText(report));
    const wanted = member(report, "wanted");
    setPart(name, "wanted", isCount(wanted) ? wanted : null, wantedText(report));

    showRow(name, "mode", carries(report, "autoscaled"));
    setField(name, "mode", null, modeText(report));
    fieldOf(name, "mode").classList.toggle("panic", member(report, "panic") === true);
    showRow(name, "decision", carries(report, "decision"));
    setField(name, "decision", null, decisionText(report, now));

    showRow(name, "cold", carries(report, "cold_starts") || carries(report, "cold_requests"));
    const cold = member(report, "cold_starts");
    setField(name, "cold_starts", isCount(cold) ? cold : null, coldStartsText(report, now));
    const waited = member(report, "cold_requests");
    setPart(name, "cold_requests", isCount(waited) ? waited : null, coldRequestsText(report));

    showRow(name, "instance_seconds", carries(report, "instance_seconds"));
    const seconds = figures.instance_seconds;
    setField(name, "instance_seconds", isSeconds(seconds) ? seconds : null,
      instanceSecondsText(seconds));
    const throttled = throttledText(report);
    showRow(name, "throttled", throttled !== null);
    const count = member(report, "throttled");
    setField(name, "throttled", isCount(count) ? count : null, throttled || "");
    fieldOf(name, "throttled").classList.toggle("bad", isCount(count) && count > 0);
  }

  function renderStats(data) {
    const f = data.functions;
    const platform = data.platform && typeof data.platform === "object" ? data.platform : {};
    const reports = platform.functions && typeof platform.functions === "object"
      ? platform.functions : {};
    for (const name of UPSTREAMS) {
      const u = f[name];
      // A null p50 with calls known means no timed call ("–"); with calls unknown, unknown.
      const ms = (v) => (u.calls_per_s === null ? UNKNOWN : formatMs(v));
      setField(name, "calls_per_s", u.calls_per_s, orUnknown(u.calls_per_s, formatSpeed));
      setField(name, "p50_ms", u.p50_ms, ms(u.p50_ms));
      setField(name, "p95_ms", u.p95_ms, ms(u.p95_ms));
      setField(name, "errors_per_s", u.errors_per_s, orUnknown(u.errors_per_s, formatSpeed));
      fieldOf(name, "errors_per_s").classList.toggle("bad", u.errors_per_s > 0);
    }
    const w = f.worker;
    setField("worker", "hashes_per_s", w.hashes_per_s, orUnknown(w.hashes_per_s, formatSpeed));
    for (const key of ["invocations", "loops", "instances"]) {
      setField("worker", key, w[key], orUnknown(w[key], integer.format));
    }
    for (const name of FUNCTIONS) {
      setOptional(name, "scale", scaleText(reports[name]));
      // Ages from Redis' clock (data.now): the local platform's host is Redis' host.
      renderPlatform(name, reports[name], f[name], data.now);
    }
    setOptional("worker", "schedule", scheduleText(platform.scheduler));

    const slow = slowest(f);
    const bottleneck = $("bottleneck");
    bottleneck.dataset.slowest = slow || "";
    for (const name of UPSTREAMS) {
      const tile = document.querySelector('.fn[data-name="' + name + '"]');
      tile.classList.toggle("slowest", name === slow);
      tile.querySelector(".badge").hidden = name !== slow;
    }
    let text;
    if (slow) {
      const other = UPSTREAMS.find((name) => name !== slow);
      text = "Slowest: " + slow + " (p50 " + formatMs(f[slow].p50_ms) + "; " + other + " " +
        formatMs(f[other].p50_ms) + ")";
    } else if (UPSTREAMS.some((name) => f[name].calls_per_s === null)) {
      text = "Per-function figures unknown.";
    } else if (UPSTREAMS.every((name) => f[name].p50_ms !== null)) {
      text = "rng and hasher answer alike (p50 " + formatMs(f.rng.p50_ms) + ").";
    } else {
      text = "No timed calls in the last " + data.window + " s: is the worker mining?";
    }
    if (bottleneck.textContent !== text) bottleneck.textContent = text;
  }

  /* list: null when unknown, `why` says why. */
  function renderCoins(list, now, why) {
    const body = $("coins-body");
    body.replaceChildren();
    for (const coin of (list || []).slice(0, COIN_ROWS)) {
      const row = document.createElement("tr");
      const when = document.createElement("td");
      when.className = "col-time";
      const clock = document.createElement("span");
      clock.textContent = new Date(coin.time * 1000).toLocaleTimeString();
      const age = document.createElement("small");
      age.textContent = formatAge(now - coin.time);
      when.append(clock, age);
      const digest = document.createElement("td");
      digest.className = "digest";
      digest.title = coin.digest;
      const zero = document.createElement("span");
      zero.className = "zero";
      zero.textContent = coin.digest.slice(0, 1);
      digest.append(zero, coin.digest.slice(1));
      row.append(when, digest);
      body.append(row);
    }
    const empty = $("coins-empty");
    empty.hidden = Boolean(list && list.length);
    empty.textContent = list ? "No coins recorded yet." : "Recent coins unknown: " + why;
  }

  function createChart(container) {
    const ink = "#a9b4c9";
    const grid = { stroke: "rgba(169,180,201,0.14)", width: 1 };
    const ticks = { stroke: "rgba(169,180,201,0.3)", width: 1, size: 5 };
    const font = "12px system-ui, sans-serif";
    const labelFont = "600 12px system-ui, sans-serif";
    const size = () => {
      const width = Math.max(240, container.clientWidth);
      return { width, height: Math.round(Math.min(320, Math.max(200, width * 0.38))) };
    };
    const opts = Object.assign(size(), {
      padding: [14, 18, 0, 4],
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // At least 30 s across, so a fresh page shows whole-second ticks.
        x: {
          time: true,
          range: (u, min, max) => {
            const end = max === null ? Date.now() / 1000 : max;
            return [Math.min(min === null ? end : min, end - MIN_CHART_S), end];
          },
        },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.2 : 1] },
      },
      axes: [
        { label: "time (local)", stroke: ink, grid, ticks, font, labelFont, labelSize: 22 },
        {
          label: "hashes / second",
          stroke: ink,
          grid,
          ticks,
          font,
          labelFont,
          labelSize: 22,
          size: 52,
          values: (u, splits) => splits.map(compact),
        },
      ],
      series: [
        {},
        {
          label: "speed",
          stroke: "#f5b53d",
          width: 2,
          fill: "rgba(245,181,61,0.14)",
          points: { show: false },
          spanGaps: false,
        },
      ],
    });
    const chart = new uPlot(opts, [[], []], container);
    new ResizeObserver(() => chart.setSize(size())).observe(container);
    return chart;
  }

  function start() {
    const state = newState();
    let base;
    try {
      base = apiBase(location.search);
    } catch (e) {
      setStatus("down", "bad ?api=", e.message);
      return;
    }
    const url = (path) => base + path;
    $("api").textContent = new URL(url("json"), location.href).href;
    const panel = $("per-function");
    const chart = createChart($("chart"));
    let coins = []; // null: unknown, coinsWhy says why
    let coinsWhy = "";
    let coinsSeen = null; // the `coins` count the table was last loaded for
    window.brkcoin.chart = chart;
    window.brkcoin.state = state;

    async function loadCoins() {
      try {
        const data = await getJSON(url("coins?limit=" + COIN_ROWS));
        coins = Array.isArray(data.coins) ? data.coins : null;
        coinsWhy = unreadableText(data);
      } catch (e) {
        coinsSeen = null; // try again next poll
      }
    }

    async function poll() {
      const started = Date.now();
      try {
        const data = await getJSON(url("json"));
        if (!isWallet(data)) {
          throw new HttpError(200, url("json") + " did not answer {coins, hashes, now}");
        }
        if (data.hashes === null) {
          state.gap = true; // no reading: the line breaks here, as when Redis is down
          state.speed = null;
        } else {
          addSample(state, data);
          chart.setData([state.xs, state.ys]);
        }
        const speed = data.hashes === null ? UNKNOWN : formatSpeed(state.speed);
        setNumber("speed", state.speed, speed);
        setNumber("hashes", data.hashes, orUnknown(data.hashes, integer.format));
        setNumber("coins", data.coins, orUnknown(data.coins, integer.format));
        const why = unreadableText(data);
        setStatus("live", "live", why && "Shown as unknown: " + why);
        setHealth("webui", true, "answering /json");
        if (data.coins === null || data.coins !== coinsSeen) {
          coinsSeen = data.coins;
          await loadCoins();
        }
        renderCoins(coins, data.now, coinsWhy);
      } catch (e) {
        state.gap = true;
        coinsSeen = null;
        if (e.status === 503) {
          setStatus("down", "Redis unreachable", e.message);
          setHealth("webui", true, "answering, but Redis is not");
          setHealth("redis", false, "unreachable");
        } else {
          const hint = base
            ? ""
            : " (static copy? add ?api=http://HOST:PORT of the webui function)";
          setStatus("down", "webui unreachable", e.message + hint);
          setHealth("webui", false, e.message);
        }
      }
      setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
    }

    /* Pre-fills the chart with the last minutes, so a page opened mid-lesson
     * does not start empty. Before the first live reading: samples go oldest first. */
    async function loadHistory() {
      try {
        const data = await getJSON(url("history"));
        if (!Array.isArray(data.points)) return;
        for (const sample of historySamples(data.points, data.now)) addSample(state, sample);
        chart.setData([state.xs, state.ys]);
      } catch (e) {
        // No history (an older webui, Redis down): the live readings still come.
      }
    }

    async function pollStats() {
      const started = Date.now();
      try {
        const data = await getJSON(url("stats"));
        if (!isStats(data)) {
          throw new HttpError(200, url("stats") + " did not answer {window, functions}");
        }
        renderStats(data);
        panel.classList.remove("stale");
        const why = unreadableText(data);
        $("fn-note").textContent = why
          ? "unknown: " + why
          : "last " + data.window + " s, as the worker timed its calls";
      } catch (e) {
        panel.classList.add("stale");
        $("fn-note").textContent = "not updating: " + e.message;
        if (e.status === 404) return; // a webui without /stats: asking again will not help
      }
      setTimeout(pollStats, Math.max(0, POLL_MS - (Date.now() - started)));
    }

    async function checkHealth() {
      try {
        const data = await getJSON(url("health"));
        const show = (name, probe) =>
          setHealth(name, probe.up, (probe.up ? "up" : "down") + " \u00b7 " + Math.round(probe.ms) +
            " ms \u00b7 " + probe.detail);
        show("redis", data.redis);
        for (const name of FUNCTIONS) if (data.functions[name]) show(name, data.functions[name]);
        const checked = new Date(data.checked * 1000).toLocaleTimeString();
        $("health-note").textContent = "checked " + checked;
      } catch (e) {
        for (const name of FUNCTIONS) setHealth(name, null, "unknown: " + e.message);
      }
      setTimeout(checkHealth, HEALTH_MS);
    }

    loadHistory().then(poll);
    pollStats();
    checkHealth();
  }

  window.brkcoin = {
    rate, addSample, newState, apiBase, formatSpeed, formatMs, compact, historySamples, slowest,
    scaleText, scheduleText, sparkPoints, sparkLine, readyText, wantedText, modeText,
    decisionText, coldStartsText, coldRequestsText, instanceSecondsText, throttledText,
    formatSeconds, RATE_WINDOW_S, MIN_SPAN_S,
  };
  if (document.getElementById("chart") && typeof uPlot === "function") start();
})();
