// Tollway dashboard: fetches /dashboard/api/summary and draws it. Plain DOM and SVG, no libraries,
// nothing loaded from anywhere but Tollway. Names from the ledger are user data: they only ever go
// into textContent, never into markup.
"use strict";

(() => {
  const RANGES = { "24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days" };
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];
  const OTHER_COLOR = "#bab0ac";
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const REFRESH_MS = 60000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  let current = null; // the last summary, redrawn on resize
  let timer = null;

  // ---- formatting ------------------------------------------------------------------------------

  // USD from the server's exact decimal string, rounded half-up as text (never through a float):
  // cents from $1 up, four decimals below so small spend does not read as $0.00.
  function fmtUSD(value) {
    let text = plainDecimal(String(value).trim());
    const negative = text.startsWith("-");
    if (negative) text = text.slice(1);
    let [whole, frac = ""] = text.split(".");
    whole = whole.replace(/^0+(?=\d)/, "") || "0";
    const places = whole !== "0" || /^0*$/.test(frac) ? 2 : 4;
    const padded = (frac + "0".repeat(places + 1)).slice(0, places + 1);
    let scaled = BigInt(whole + padded.slice(0, places));
    if (padded[places] >= "5") scaled += 1n;
    const digits = scaled.toString().padStart(places + 1, "0");
    const intPart = digits.slice(0, -places).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    const fracPart = digits.slice(-places);
    const zero = scaled === 0n;
    return (negative && !zero ? "-" : "") + "$" + intPart + "." + fracPart;
  }

  // "1.5E-7" → "0.00000015": Python's str(Decimal) may use an exponent (a zero is often "0E-10").
  function plainDecimal(text) {
    const match = /^(-?)(\d*)(?:\.(\d*))?[eE]([+-]?\d+)$/.exec(text);
    if (!match) return text;
    const [, sign, whole, frac = "", exponent] = match;
    const digits = whole + frac;
    const point = whole.length + Number(exponent); // where the decimal point lands in `digits`
    if (point <= 0) return sign + "0." + "0".repeat(-point) + digits;
    if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
    return sign + digits.slice(0, point) + "." + digits.slice(point);
  }

  const intFormat = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => intFormat.format(n);

  function fmtCompact(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(n >= 1e10 ? 0 : 1) + "B";
    if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(0) + "K";
    return fmtInt(n);
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    return Math.round(ms) + " ms";
  }

  function fmtBucket(bucket, unit) {
    // "2026-11-29" or "2026-11-29T14:00:00Z": read as text, so the browser's time zone never applies.
    const month = MONTHS[Number(bucket.slice(5, 7)) - 1];
    const day = Number(bucket.slice(8, 10));
    if (unit === "hour") return bucket.slice(11, 16);
    return month + " " + day;
  }

  function fmtBucketLong(bucket, unit) {
    const date = MONTHS[Number(bucket.slice(5, 7)) - 1] + " " + Number(bucket.slice(8, 10));
    return unit === "hour" ? date + ", " + bucket.slice(11, 16) + " UTC" : date + " (UTC)";
  }

  // ---- DOM helpers -----------------------------------------------------------------------------

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function swatch(color) {
    const box = svg("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true" });
    box.append(svg("rect", { width: 12, height: 12, rx: 3, fill: color }));
    return box;
  }

  function meter(share, color, width, height) {
    const bar = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "aria-hidden": "true" });
    bar.append(svg("rect", { width, height, rx: height / 2, fill: "#e9edf3" }));
    const filled = Math.max(0, Math.min(1, share)) * width;
    if (filled > 0) bar.append(svg("rect", { width: Math.max(filled, height / 2), height, rx: height / 2, fill: color }));
    return bar;
  }

  // ---- charts ----------------------------------------------------------------------------------

  function niceStep(max, ticks) {
    const raw = max / ticks;
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / magnitude;
    const nice = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
    return nice * magnitude;
  }

  function decimalsOf(step) {
    for (let d = 0; d < 10; d++) {
      const scaled = step * Math.pow(10, d);
      if (Math.abs(Math.round(scaled) - scaled) < 1e-6) return d;
    }
    return 10;
  }

  function fmtAxis(value, decimals) {
    if (value === 0) return "$0";
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
  }

  function colorFor(series, index) {
    return series.key === "(other)" ? OTHER_COLOR : PALETTE[index % PALETTE.length];
  }

  function stackedBars(container, data, unit) {
    container.replaceChildren();
    const width = Math.max(container.clientWidth || 600, 320);
    const height = 240;
    const m = { top: 10, right: 8, bottom: 26, left: 64 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const n = data.buckets.length;
    const totals = data.buckets.map((_, i) => data.series.reduce((sum, s) => sum + Number(s.values[i]), 0));
    const maxTotal = Math.max(0, ...totals);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });

    const step = maxTotal > 0 ? niceStep(maxTotal, 4) : 1;
    const top = maxTotal > 0 ? Math.ceil(maxTotal / step - 1e-9) * step : 4;
    const decimals = step >= 1 ? decimalsOf(step) : Math.max(2, decimalsOf(step));
    for (let v = 0; v <= top + step / 2; v += step) {
      const y = m.top + plotH - (v / top) * plotH;
      chart.append(svg("line", { x1: m.left, x2: width - m.right, y1: y, y2: y, class: v === 0 ? "axis" : "grid" }));
      chart.append(svg("text", { x: m.left - 8, y: y + 4, "text-anchor": "end" }, fmtAxis(v, decimals)));
    }

    const slot = plotW / n;
    const barW = Math.max(2, Math.min(48, slot * 0.7));
    const labelEvery = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(plotW / 64))));
    data.buckets.forEach((bucket, i) => {
      const x = m.left + slot * i + (slot - barW) / 2;
      let y = m.top + plotH;
      data.series.forEach((s, j) => {
        const value = Number(s.values[i]);
        if (value <= 0) return;
        const h = (value / top) * plotH;
        y -= h;
        const rect = svg("rect", { x, y, width: barW, height: Math.max(h, 0.5), fill: colorFor(s, j), class: "bar" });
        rect.append(svg("title", {}, `${s.label} · ${fmtBucketLong(bucket, unit)}: ${fmtUSD(s.values[i])}`));
        chart.append(rect);
      });
      if (i % labelEvery === 0) {
        chart.append(svg("text", { x: m.left + slot * i + slot / 2, y: height - 8, "text-anchor": "middle" }, fmtBucket(bucket, unit)));
      }
    });

    if (maxTotal === 0) {
      chart.append(svg("text", { x: m.left + plotW / 2, y: m.top + plotH / 2, "text-anchor": "middle", class: "empty" }, "No spend in this range"));
    }
    container.append(chart);
  }

  function legend(list, data) {
    list.replaceChildren();
    data.series.forEach((s, j) => {
      const item = el("li");
      item.append(swatch(colorFor(s, j)), el("span", {}, s.label), el("span", { class: "amount" }, fmtUSD(s.total_usd)));
      list.append(item);
    });
  }

  // ---- panels ----------------------------------------------------------------------------------

  function renderTotals(summary) {
    const t = summary.totals;
    setText("total-spend", fmtUSD(t.cost_usd));
    setText("range-label", RANGES[summary.range] + (summary.unit === "hour" ? ", by the hour" : ", by UTC day"));
    setText("total-requests", fmtInt(t.requests));
    const errors = document.getElementById("total-errors");
    errors.textContent = t.errors === 1 ? "1 error" : fmtInt(t.errors) + " errors";
    errors.classList.toggle("bad", t.errors > 0);
    setText("total-tokens", fmtInt(t.tokens));
    setText("tokens-split", `${fmtCompact(t.input_tokens + t.cache_write_tokens + t.cache_read_tokens)} in · ${fmtCompact(t.output_tokens)} out`);
    setText("total-savings", fmtUSD(t.savings_usd));
    setText("savings-pct", t.savings_pct === null ? "no cacheable spend yet" : `${t.savings_pct}% of ${fmtUSD(t.uncached_cost_usd)} without caching`);
    setText("latency-p50", fmtMs(summary.latency.p50_ms));
    setText("latency-p99", fmtMs(summary.latency.p99_ms));
    setText("latency-count", fmtInt(summary.latency.count));
  }

  function renderTokens(t) {
    const box = document.getElementById("tokens-by-type");
    box.replaceChildren();
    const kinds = [
      ["Input (uncached)", t.input_tokens, PALETTE[0]],
      ["Output", t.output_tokens, PALETTE[1]],
      ["Cache write", t.cache_write_tokens, PALETTE[2]],
      ["Cache read", t.cache_read_tokens, PALETTE[4]],
    ];
    const max = Math.max(...kinds.map((k) => k[1]));
    if (max === 0) {
      box.append(el("p", { class: "muted" }, "No tokens in this range."));
      return;
    }
    const grid = el("div", { class: "hbars" });
    for (const [label, value, color] of kinds) {
      grid.append(el("span", { class: "label" }, label), meter(value / max, color, 200, 12), el("span", { class: "num" }, fmtInt(value)));
    }
    box.append(grid);
  }

  function renderStatuses(statuses) {
    const box = document.getElementById("statuses");
    box.replaceChildren();
    const classes = { "2xx": 0, "4xx": 0, "5xx": 0, ...statuses.classes };
    const names = Object.keys(classes).sort();
    if (Object.keys(statuses.classes).length === 0) {
      box.append(el("p", { class: "muted" }, "No requests in this range."));
      return;
    }
    const tiles = el("div", { class: "statuses" });
    const tile = (name, count, tone) => {
      const t = el("div", { class: "status-tile " + tone });
      t.append(el("div", { class: "name" }, name), el("div", { class: "count" }, fmtInt(count)));
      return t;
    };
    for (const name of names) {
      const count = classes[name];
      const tone = count === 0 ? "" : name.startsWith("2") ? "ok" : name.startsWith("4") ? "warn" : "bad";
      tiles.append(tile(name, count, tone));
    }
    const rejections = statuses.budget_rejections;
    const note = el("p", { class: "status-note" + (rejections > 0 ? " bad" : "") , id: "budget-rejections" });
    note.textContent =
      (rejections === 1 ? "1 request" : fmtInt(rejections) + " requests") +
      " rejected by budget limits (HTTP 429 before any upstream call).";
    box.append(tiles, note);
  }

  const WINDOW_LABELS = {
    tokens_per_day: "tokens today",
    tokens_per_month: "tokens this month",
    usd_per_day: "spend today",
    usd_per_month: "spend this month",
  };
  const STATUS_LABELS = { ok: "within budget", warning: "over 80%", exceeded: "over budget", unlimited: "no limits" };
  const STATUS_COLORS = { ok: "#1f8a4c", warning: "#b7791f", exceeded: "#c0392b" };

  function budgetCell(budget) {
    const cell = el("div", { class: "budget" });
    const head = el("div");
    head.append(el("span", { class: "pill " + budget.status }, STATUS_LABELS[budget.status]));
    cell.append(head);
    for (const w of budget.windows) {
      const share = Number(w.share);
      const usd = w.window.startsWith("usd");
      const used = usd ? fmtUSD(w.used) : fmtInt(Number(w.used));
      const limit = usd ? fmtUSD(w.limit) : fmtInt(Number(w.limit));
      const tone = share >= 1 ? "exceeded" : share >= 0.8 ? "warning" : "ok";
      const row = el("div", { class: "budget-window" });
      row.append(
        el("span", {}, WINDOW_LABELS[w.window] || w.window),
        meter(share, STATUS_COLORS[tone], 80, 8),
        el("span", { class: "figures" }, `${used} / ${limit} (${Math.floor(share * 100)}%)`),
      );
      cell.append(row);
    }
    return cell;
  }

  function emptyRow(tbody, columns, text) {
    const row = el("tr");
    row.append(el("td", { colspan: columns, class: "empty" }, text));
    tbody.append(row);
  }

  function renderTeams(teams) {
    const tbody = document.querySelector("#teams-table tbody");
    tbody.replaceChildren();
    if (teams.length === 0) return emptyRow(tbody, 7, "No teams yet: create one with POST /admin/teams.");
    for (const team of teams) {
      const row = el("tr", { "data-team": team.group });
      const name = el("td");
      name.append(el("span", { class: "team-name" }, team.name));
      if (!team.exists) name.append(el("span", { class: "tag" }, "deleted"));
      const savings = team.savings_pct === null ? fmtUSD(team.savings_usd) : `${fmtUSD(team.savings_usd)} (${team.savings_pct}%)`;
      const budget = el("td");
      budget.append(budgetCell(team.budget));
      row.append(
        name,
        el("td", { class: "num" }, fmtUSD(team.cost_usd)),
        el("td", { class: "num" }, fmtInt(team.requests)),
        el("td", { class: "num" }, fmtInt(team.errors)),
        el("td", { class: "num" }, fmtInt(team.tokens)),
        el("td", { class: "num" }, savings),
        budget,
      );
      tbody.append(row);
    }
  }

  function renderModels(models) {
    const tbody = document.querySelector("#models-table tbody");
    tbody.replaceChildren();
    if (models.length === 0) return emptyRow(tbody, 8, "No traffic in this range.");
    for (const m of models) {
      const row = el("tr");
      row.append(
        el("td", { class: "team-name" }, m.label),
        el("td", { class: "num" }, fmtUSD(m.cost_usd)),
        el("td", { class: "num" }, fmtInt(m.requests)),
        el("td", { class: "num" }, fmtInt(m.input_tokens)),
        el("td", { class: "num" }, fmtInt(m.output_tokens)),
        el("td", { class: "num" }, fmtInt(m.cache_write_tokens)),
        el("td", { class: "num" }, fmtInt(m.cache_read_tokens)),
        el("td", { class: "num" }, fmtUSD(m.savings_usd)),
      );
      tbody.append(row);
    }
  }

  // Lines of mean milliseconds per bucket, one per model; a gap where a bucket had no request.
  function lineChart(container, buckets, series, unit, emptyText) {
    container.replaceChildren();
    const width = Math.max(container.clientWidth || 600, 320);
    const height = 220;
    const m = { top: 10, right: 8, bottom: 26, left: 64 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const n = buckets.length;
    const values = series.flatMap((s) => s.values.filter((v) => v !== null));
    const maxValue = Math.max(0, ...values);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    const step = maxValue > 0 ? niceStep(maxValue, 4) : 1;
    const top = maxValue > 0 ? Math.ceil(maxValue / step - 1e-9) * step : 4;
    for (let v = 0; v <= top + step / 2; v += step) {
      const y = m.top + plotH - (v / top) * plotH;
      chart.append(svg("line", { x1: m.left, x2: width - m.right, y1: y, y2: y, class: v === 0 ? "axis" : "grid" }));
      chart.append(svg("text", { x: m.left - 8, y: y + 4, "text-anchor": "end" }, fmtMs(v)));
    }
    const slot = plotW / n;
    const xOf = (i) => m.left + slot * i + slot / 2;
    const yOf = (v) => m.top + plotH - (v / top) * plotH;
    const labelEvery = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(plotW / 64))));
    buckets.forEach((bucket, i) => {
      if (i % labelEvery === 0) chart.append(svg("text", { x: xOf(i), y: height - 8, "text-anchor": "middle" }, fmtBucket(bucket, unit)));
    });
    series.forEach((s) => {
      const color = s.color;
      let path = "";
      let open = false;
      s.values.forEach((v, i) => {
        if (v === null) {
          open = false;
          return;
        }
        path += (open ? " L" : " M") + xOf(i).toFixed(1) + " " + yOf(v).toFixed(1);
        open = true;
        const dot = svg("circle", { cx: xOf(i), cy: yOf(v), r: 3, fill: color, class: "point" });
        dot.append(svg("title", {}, `${s.label} · ${fmtBucketLong(buckets[i], unit)}: ${fmtMs(v)}`));
        chart.append(dot);
      });
      if (path) chart.insertBefore(svg("path", { d: path.trim(), fill: "none", stroke: color, "stroke-width": 2, class: "line" }), chart.firstChild);
    });
    if (values.length === 0) {
      chart.append(svg("text", { x: m.left + plotW / 2, y: m.top + plotH / 2, "text-anchor": "middle", class: "empty" }, emptyText));
    }
    container.append(chart);
  }

  function lineLegend(list, series, total) {
    list.replaceChildren();
    series.forEach((s) => {
      const item = el("li");
      item.append(swatch(s.color), el("span", {}, s.label), el("span", { class: "amount" }, total(s)));
      list.append(item);
    });
  }

  function renderLatencyCharts(summary) {
    const data = summary.latency_by_model;
    const unit = summary.unit === "hour" ? "per hour" : "per day";
    setText("unit-latency", "mean, answered requests, " + unit);
    setText("unit-ttft", "mean, streams, " + unit);
    // A model keeps its colour in both charts.
    const color = (m) => PALETTE[data.models.indexOf(m) % PALETTE.length];
    const latency = data.models.map((m) => ({ label: m.model, values: m.latency_ms, color: color(m) }));
    const streamed = data.models.filter((m) => m.streams > 0);
    const ttft = streamed.map((m) => ({ label: m.model, values: m.ttft_ms, color: color(m) }));
    lineChart(document.getElementById("chart-latency"), data.buckets, latency, summary.unit, "No answered requests in this range");
    lineLegend(document.getElementById("legend-latency"), latency, (s) => fmtMs(data.models.find((m) => m.model === s.label).mean_latency_ms));
    lineChart(document.getElementById("chart-ttft"), data.buckets, ttft, summary.unit, "No streams in this range");
    lineLegend(document.getElementById("legend-ttft"), ttft, (s) => fmtMs(streamed.find((m) => m.model === s.label).mean_ttft_ms));
  }

  function countRows(tableId, rows, emptyText) {
    const tbody = document.querySelector(`#${tableId} tbody`);
    tbody.replaceChildren();
    if (rows.length === 0) return emptyRow(tbody, 2, emptyText);
    for (const [label, count] of rows) {
      const row = el("tr");
      row.append(el("td", { class: "team-name" }, label), el("td", { class: "num" }, fmtInt(count)));
      tbody.append(row);
    }
  }

  function renderRouting(routing) {
    setText("routing-named", fmtInt(routing.named));
    setText("routing-routed", fmtInt(routing.routed));
    setText("routing-unrouted", fmtInt(routing.unrouted));
    const escalations = routing.escalations || {};
    setText("escalations-total", escalations.total === undefined ? "–" : fmtInt(escalations.total));
    countRows("tiers-table", routing.by_tier.map((t) => [t.tier, t.requests]), "No requests in this range.");
    countRows("routes-table", routing.by_route.map((r) => [r.route, r.requests]), "No routed requests in this range.");
    const reasons = routing.reasons.map((r) => [r.reason, r.requests]);
    if (routing.other_reasons > 0) reasons.push(["(other decisions)", routing.other_reasons]);
    countRows("reasons-table", reasons, "No routed requests in this range.");
  }

  function renderLatencyTable(data) {
    const tbody = document.querySelector("#latency-table tbody");
    tbody.replaceChildren();
    if (data.models.length === 0) return emptyRow(tbody, 5, "No answered requests in this range.");
    for (const m of data.models) {
      const row = el("tr");
      row.append(
        el("td", { class: "team-name" }, m.model),
        el("td", { class: "num" }, fmtInt(m.requests)),
        el("td", { class: "num" }, fmtMs(m.mean_latency_ms)),
        el("td", { class: "num" }, fmtInt(m.streams)),
        el("td", { class: "num" }, fmtMs(m.mean_ttft_ms)),
      );
      tbody.append(row);
    }
  }

  function renderPrincipals(tableId, countId, data, noun) {
    const tbody = document.querySelector(`#${tableId} tbody`);
    tbody.replaceChildren();
    const shown = data.rows.length;
    setText(countId, data.count > shown ? `top ${shown} of ${fmtInt(data.count)} ${noun}, by spend` : `${fmtInt(data.count)} ${noun}`);
    if (shown === 0) return emptyRow(tbody, 5, `No ${noun} in this range.`);
    for (const r of data.rows) {
      const row = el("tr", { "data-group": r.group });
      row.append(
        el("td", { class: "team-name" }, r.label),
        el("td", { class: "num" }, fmtUSD(r.cost_usd)),
        el("td", { class: "num" }, fmtInt(r.requests)),
        el("td", { class: "num" }, fmtInt(r.errors)),
        el("td", { class: "num" }, fmtInt(r.tokens)),
      );
      tbody.append(row);
    }
  }

  function renderErrors(errors) {
    const tbody = document.querySelector("#errors-table tbody");
    tbody.replaceChildren();
    if (errors.length === 0) return emptyRow(tbody, 3, "No errors in this range.");
    for (const e of errors) {
      const statuses = Object.entries(e.statuses).map(([status, n]) => `${status} × ${fmtInt(n)}`).join(", ");
      const row = el("tr");
      row.append(el("td", { class: "team-name" }, e.error_type), el("td", { class: "num" }, fmtInt(e.requests)), el("td", {}, statuses));
      tbody.append(row);
    }
  }

  function renderCharts(summary) {
    const unitText = summary.unit === "hour" ? "USD per hour" : "USD per day";
    setText("unit-team", unitText);
    setText("unit-model", unitText);
    stackedBars(document.getElementById("chart-team"), summary.spend_by_team, summary.unit);
    legend(document.getElementById("legend-team"), summary.spend_by_team);
    stackedBars(document.getElementById("chart-model"), summary.spend_by_model, summary.unit);
    legend(document.getElementById("legend-model"), summary.spend_by_model);
    renderLatencyCharts(summary);
  }

  function render(summary) {
    current = summary;
    renderTotals(summary);
    renderCharts(summary);
    renderTokens(summary.totals);
    renderStatuses(summary.statuses);
    renderTeams(summary.teams);
    renderModels(summary.models);
    renderRouting(summary.routing);
    renderLatencyTable(summary.latency_by_model);
    renderPrincipals("keys-table", "keys-count", summary.keys, "keys");
    renderPrincipals("end-users-table", "end-users-count", summary.end_users, "end users");
    renderErrors(summary.errors);
    setText("updated", "Updated " + summary.generated_at.slice(11, 19) + " UTC");
    document.getElementById("dashboard").setAttribute("aria-busy", "false");
  }

  // ---- loading ---------------------------------------------------------------------------------

  function selectedRange() {
    const hash = location.hash.slice(1);
    return hash in RANGES ? hash : "7d";
  }

  async function load() {
    const range = selectedRange();
    for (const button of document.querySelectorAll(".ranges button")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
    const banner = document.getElementById("load-error");
    try {
      const response = await fetch("/dashboard/api/summary?range=" + encodeURIComponent(range), {
        credentials: "same-origin",
        headers: { accept: "application/json" },
      });
      if (response.status === 401) {
        location.assign("/dashboard/login");
        return;
      }
      if (!response.ok) throw new Error(`the summary request failed with HTTP ${response.status}`);
      const summary = await response.json();
      if (summary.range !== selectedRange()) return; // the range changed while this was loading
      banner.hidden = true;
      render(summary);
    } catch (err) {
      banner.textContent = "Could not load the dashboard data: " + err.message + ". Retrying in a minute.";
      banner.hidden = false;
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = setInterval(load, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const button of document.querySelectorAll(".ranges button")) {
      button.addEventListener("click", () => {
        location.hash = button.dataset.range;
      });
    }
    window.addEventListener("hashchange", () => {
      load();
      schedule();
    });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => current && renderCharts(current), 150);
    });
    load();
    schedule();
  });
})();
