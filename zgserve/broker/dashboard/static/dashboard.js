// The provider dashboard: polls the broker's admin JSON routes and renders them.
// Amounts arrive as decimal strings of neuron and stay exact (BigInt); each shown amount
// carries its neuron value in data-neuron and in its tooltip. Text from the server is
// only ever set as textContent, never parsed as HTML.
"use strict";
(() => {
  const POLL_MS = 5000;
  const TOKEN_KEY = "zgserve.adminToken";
  const NEURON_PER_OG = 10n ** 18n;
  const $ = (id) => document.getElementById(id);
  const charts = {};
  let refreshes = 0;
  let timer = null;

  // -- formatting ---------------------------------------------------------------------------

  function og(neuron, digits = 6) {
    const n = BigInt(neuron);
    const sign = n < 0n ? "-" : "";
    const abs = n < 0n ? -n : n;
    const whole = abs / NEURON_PER_OG;
    let frac = (abs % NEURON_PER_OG).toString().padStart(18, "0").slice(0, digits).replace(/0+$/, "");
    if (!frac && abs % NEURON_PER_OG !== 0n) frac = "0".repeat(digits - 1) + "1";  // never show a fee as 0
    return `${sign}${whole.toLocaleString("en-US")}${frac ? "." + frac : ""} 0G`;
  }
  const ogNumber = (neuron) => Number(BigInt(neuron)) / 1e18;  // charts only: not exact

  function amount(neuron, id) {
    const span = el("span", "amt", neuron === null || neuron === undefined ? "—" : og(neuron));
    if (neuron !== null && neuron !== undefined) {
      span.dataset.neuron = String(neuron);
      span.title = `${BigInt(neuron).toLocaleString("en-US")} neuron`;
    }
    if (id) span.id = id;
    return span;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function put(id, node) {
    const host = $(id);
    host.replaceChildren(node);
    if (node.dataset && node.dataset.neuron !== undefined) host.dataset.neuron = node.dataset.neuron;
  }

  const short = (addr) => (addr ? `${addr.slice(0, 8)}…${addr.slice(-6)}` : "—");
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
  const secs = (s) => (s === null || s === undefined ? "—" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s} s`);

  function address(addr) {
    const span = el("span", "mono", short(addr));
    span.title = addr || "";
    return span;
  }

  function pill(text, kind) {
    return el("span", `pill ${kind || ""}`, text);
  }

  function txLink(hash, explorer) {
    if (!hash) return el("span", "muted", "—");
    if (!explorer) return address(hash);
    const a = el("a", "mono", short(hash));
    a.href = `${explorer}/tx/${hash}`;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.title = hash;
    return a;
  }

  function table(id, head, rows, numeric = []) {
    const t = $(id);
    const thead = el("thead");
    const tr = el("tr");
    head.forEach((h, i) => tr.append(el("th", numeric.includes(i) ? "num" : "", h)));
    thead.append(tr);
    const body = el("tbody");
    for (const row of rows) {
      const r = el("tr");
      if (row.key) r.dataset.key = row.key;
      row.cells.forEach((c, i) => {
        const td = el("td", numeric.includes(i) ? "num" : "");
        td.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "—" : String(c)));
        r.append(td);
      });
      body.append(r);
    }
    if (!rows.length) {
      const r = el("tr");
      const td = el("td", "muted", "nothing yet");
      td.colSpan = head.length;
      r.append(td);
      body.append(r);
    }
    t.replaceChildren(thead, body);
  }

  // -- the admin API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.error && body.error.code;
    }
  }

  async function api(path, body) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  // -- panels -------------------------------------------------------------------------------

  function renderEarnings(e) {
    put("earn-onchain", amount(e.settledOnChain));
    put("earn-recorded", amount(e.recorded));
    put("earn-unsettled", amount(e.unsettled));
    put("earn-debt", amount(e.openDebt.total));
    $("earn-requests").textContent = `${e.recordedRequests} billed requests`;
    $("earn-debt-sub").textContent = e.openDebt.users
      ? `${e.openDebt.users} user(s) owe the remainder of a PARTIAL settlement`
      : "no PARTIAL settlement left a debt";
    const s = e.series;
    chart("chart-earnings", ["recorded", "settled on-chain"], ["#5b3cc4", "#17803d"],
      [s.start, s.recorded.map(ogNumber), s.settledOnChain.map(ogNumber)]);
  }

  function renderTraffic(t) {
    const names = Object.keys(t.models).sort();
    const palette = ["#5b3cc4", "#0e7490", "#b45309", "#be185d", "#15803d", "#4338ca"];
    const metric = $("traffic-metric").value;
    const pick = (m) => (metric === "tokens" ? m.inputTokens.map((n, i) => n + m.outputTokens[i])
      : metric === "fee" ? m.fee.map(ogNumber) : m[metric]);
    chart("chart-traffic", names.length ? names : [metric], palette,
      [t.start, ...(names.length ? names.map((m) => pick(t.models[m])) : [t.start.map(() => 0)])]);
    table("routes", ["route", "requests", "4xx", "5xx", "p50 ≤", "p95 ≤"],
      t.routes.map((r) => ({ cells: [r.route, r.requests, r.clientErrors, r.serverErrors,
        secs(r.p50Seconds), secs(r.p95Seconds)] })), [1, 2, 3, 4, 5]);
  }

  function deadlineText(d) {
    const rule = { refund_unlock: "refund unlocks", deposit_share: "share of balance", max_age: "fee age",
      debt: "debt", manual: "operator" }[d.trigger] || d.trigger;
    if (d.dueNow) return pill(`due now: ${rule}`, "warn");
    if (!d.trigger) return el("span", "muted", "none");
    return el("span", "", d.at ? `${rule}, ${when(d.at)}` : rule);
  }

  function share(u) {
    const d = u.deadline;
    if (d.shareBps === null) return "—";
    const tiny = d.shareBps === 0 && BigInt(u.unsettledFee) > 0n;  // under one basis point
    return `${tiny ? "< 0.01" : (d.shareBps / 100).toFixed(2)} % of ${d.shareLimitBps / 100} %`;
  }

  function renderBacklog(b) {
    const owing = b.items.filter((u) => BigInt(u.unsettledFee) > 0n || BigInt(u.debt) > 0n);
    owing.sort((x, y) => (y.deadline.dueNow - x.deadline.dueNow) || ((x.deadline.at || "9") < (y.deadline.at || "9") ? -1 : 1));
    table("backlog", ["user", "unsettled", "balance", "share of balance", "pending refund", "debt", "next deadline", ""],
      owing.map((u) => ({ key: u.user, cells: [address(u.user), amount(u.unsettledFee), amount(u.balance),
        share(u),
        amount(u.pendingRefund), amount(u.debt), deadlineText(u.deadline), settleUserButton(u.user)] })),
      [1, 2, 3, 4, 5]);
    const s = b.settlement;
    $("backlog-note").textContent = s.enabled
      ? `Automatic settlement every ${s.intervalSeconds} s; fees older than ${s.maxAgeSeconds / 3600} h are settled.`
      : "Automatic settlement is off: settle with the button or POST /v1/settle.";
    const top = [...b.items].sort((x, y) => (BigInt(y.spent) > BigInt(x.spent) ? 1 : BigInt(y.spent) < BigInt(x.spent) ? -1 : 0));
    table("users", ["user", "requests", "spent", "balance", "debt", "revoked keys"],
      top.slice(0, 50).map((u) => ({ key: u.user, cells: [address(u.user), u.requests, amount(u.spent),
        amount(u.balance), amount(u.debt), u.revokedKeys] })), [1, 2, 3, 4, 5]);
  }

  function renderTransactions(t) {
    table("transactions", ["sent", "transaction", "state", "block", "entries", "paid", "gas used", "gas cost"],
      t.items.map((x) => ({ key: x.txHash, cells: [when(x.createdAt), txLink(x.txHash, t.explorerUrl),
        pill(x.partial ? `${x.state}, ${x.partial} partial` : x.state,
          x.state === "done" ? (x.partial || x.failed ? "warn" : "ok") : x.state === "reverted" ? "bad" : ""),
        x.blockNumber, x.entries, amount(x.paid), x.gasUsed, amount(x.gasCost)] })), [3, 4, 5, 6, 7]);
  }

  // Entry outcomes: settled, settled in part (a debt remains), still open; anything else failed.
  const STATUS_PILL = { success: "ok", partial: "warn", unverified: "warn", pending: "" };

  function renderSettlements(s, explorer) {
    table("settlements", ["user", "nonce", "why", "status", "paid", "unpaid", "transaction"],
      s.items.map((x) => ({ cells: [address(x.user), x.nonce, x.trigger,
        pill(x.status.toUpperCase(), STATUS_PILL[x.status] === undefined ? "bad" : STATUS_PILL[x.status]),
        amount(x.paid), amount(x.unpaid), txLink(x.txHash, explorer)] })), [1, 4, 5]);
    const note = $("debt-note");
    note.replaceChildren(el("span", "", `${s.total} settlements; open debt: ${s.openDebt.users} user(s), `),
      amount(s.openDebt.total));
  }

  function renderService(svc, wallet) {
    const dl = $("service");
    dl.replaceChildren();
    const row = (k, v) => dl.append(el("dt", "", k), v instanceof Node ? wrap(v) : el("dd", "", v));
    const wrap = (node) => { const dd = el("dd"); dd.append(node); return dd; };
    const chain = svc.onChain;
    row("registered", chain ? pill("on chain", "ok") : pill("not registered", "bad"));
    row("owner acknowledgement", chain ? (chain.teeSignerAcknowledged ? pill("acknowledged", "ok")
      : pill("not acknowledged: users cannot settle with this signer", "bad")) : "—");
    row("TEE", svc.tee.simulated ? pill(`${svc.tee.backend || "simulated"}: SIMULATED, no hardware evidence`, "warn")
      : pill(svc.tee.backend, "ok"));
    row("model", svc.model);
    row("serving URL", svc.url);
    const prices = el("span");
    prices.append(amount(svc.inputPrice), el("span", "muted", " in / "), amount(svc.outputPrice),
      el("span", "muted", " out per token"));
    row("prices", prices);
    if (chain && (chain.inputPrice !== svc.inputPrice || chain.outputPrice !== svc.outputPrice)) {
      row("prices on chain", pill(`differ: ${og(chain.inputPrice, 12)} / ${og(chain.outputPrice, 12)}`, "warn"));
    }
    row("provider", el("span", "mono", svc.provider));
    row("settlement signer", el("span", "mono", svc.teeSignerAddress));
    if (chain && chain.teeSignerAddress.toLowerCase() !== svc.teeSignerAddress.toLowerCase()) {
      row("signer on chain", pill(chain.teeSignerAddress, "bad"));
    }
    row("service signer", el("span", "mono", svc.targetTeeAddress || "—"));
    if (wallet.chain) row("gas price", `${(Number(wallet.chain.gasPrice) / 1e9).toFixed(3)} gwei`);
  }

  function renderWallet(w) {
    $("provider").textContent = w.provider;
    $("provider").title = "provider wallet";
    if (!w.chain) {
      put("wallet-balance", el("span", "muted", "no chain"));
      return;
    }
    $("chain").textContent = `chain ${w.chain.chainId} · block ${w.chain.blockNumber}`;
    put("wallet-balance", amount(w.chain.balance));
    $("wallet-sub").textContent =
      `gas for ~${w.chain.settlementsLeft.toLocaleString("en-US")} full settlement transactions`;
    $("gas").hidden = !w.chain.lowGas;
    $("gas").textContent = w.chain.lowGas
      ? `Low gas: the provider wallet pays for about ${w.chain.settlementsLeft} more settlement transactions ` +
        `(${og(w.chain.fullSettlementCost)} each at today's gas price). Top it up before fees are at risk.`
      : "";
  }

  // -- charts (uPlot) -----------------------------------------------------------------------

  function chart(id, names, colors, data) {
    const host = $(id);
    const key = names.join("\u0000");
    let c = charts[id];
    if (c && c.key !== key) { c.plot.destroy(); c = null; }
    if (!c) {
      const opts = {
        width: Math.max(host.clientWidth, 300), height: 220,
        series: [{}, ...names.map((n, i) => ({ label: n, stroke: colors[i % colors.length], width: 2,
          points: { size: 5 } }))],
        axes: [{}, { size: 70, values: (u, vals) => vals.map((v) => +v.toPrecision(3)) }],
        legend: { live: true },
      };
      c = charts[id] = { key, plot: new uPlot(opts, data, host) };
    } else {
      c.plot.setData(data);
    }
  }

  window.addEventListener("resize", () => {
    for (const id of Object.keys(charts)) charts[id].plot.setSize({ width: $(id).clientWidth, height: 220 });
  });

  // -- actions ------------------------------------------------------------------------------

  function log(text) {
    $("log").textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  }

  function settleReport(r) {
    if (r.settled === false) return r.reason;
    return `settled ${og(r.settled)} in ${r.transactions.length} transaction(s)` +
      (Object.keys(r.skipped || {}).length ? `; skipped ${Object.keys(r.skipped).length}` : "");
  }

  async function act(question, path, body) {
    if (!window.confirm(question)) return;
    log("working…");
    try {
      log(settleReportOr(await api(path, body)));
    } catch (err) {
      log(`refused: ${err.message}`);
    }
    await refresh();
  }
  const settleReportOr = (r) => (r && "transactions" in r ? settleReport(r) : r && r.outcome ? `service ${r.outcome}` : "done");

  function settleUserButton(user) {
    const b = el("button", "small", "settle");
    b.addEventListener("click", () => act(`Settle ${user} now? This sends a transaction.`, "/v1/settle", { users: [user] }));
    return b;
  }

  $("settle-now").addEventListener("click", () =>
    act("Settle every user with unsettled fees or debt now? This sends transactions.", "/v1/settle", {}));

  $("update-prices").addEventListener("click", () => {
    const body = {};
    for (const [id, key] of [["price-in", "inputPrice"], ["price-out", "outputPrice"]]) {
      const v = $(id).value.trim();
      if (v && !/^[0-9]{1,78}$/.test(v)) { log(`${key}: an integer number of neuron`); return; }
      if (v) body[key] = v;
    }
    if (!Object.keys(body).length) { log("type a price first"); return; }
    act(`Update the service's prices to ${JSON.stringify(body)} (neuron per token)? This updates the on-chain service.`,
      "/v1/service", body);
  });

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    refresh();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); refresh(); });
  $("window").addEventListener("change", () => refresh());
  $("traffic-metric").addEventListener("change", () => refresh());

  // -- the loop -----------------------------------------------------------------------------

  let inFlight = false;
  let again = false;

  async function refresh() {
    // One update at a time: a click during a poll asks for one more update after it.
    if (inFlight) { again = true; return; }
    inFlight = true;
    clearTimeout(timer);
    try {
      await update();
    } finally {
      inFlight = false;
    }
    if (again) { again = false; await refresh(); return; }
    timer = setTimeout(refresh, POLL_MS);
  }

  async function update() {
    const [windowS, bucketS] = $("window").value.split(",");
    const span = `window=${windowS}&bucket=${bucketS}`;
    const names = ["earnings", "traffic", "backlog", "transactions", "settlements", "service", "wallet"];
    const results = await Promise.allSettled([
      api(`/v1/earnings?${span}`), api(`/v1/traffic?${span}`), api("/v1/backlog"),
      api("/v1/settlement/transactions?limit=50"), api("/v1/settlement?limit=50"), api("/v1/service"),
      api("/v1/wallet"),
    ]);
    const got = {};
    const failed = [];
    results.forEach((r, i) => (r.status === "fulfilled" ? (got[names[i]] = r.value) : failed.push([names[i], r.reason])));
    const locked = failed.find(([, e]) => e instanceof ApiError && e.code === "admin_forbidden");
    $("login").hidden = !locked;
    $("forget").hidden = !sessionStorage.getItem(TOKEN_KEY);
    const render = [
      ["earnings", () => renderEarnings(got.earnings)], ["traffic", () => renderTraffic(got.traffic)],
      ["backlog", () => renderBacklog(got.backlog)], ["wallet", () => renderWallet(got.wallet)],
      ["transactions", () => renderTransactions(got.transactions)],
      ["settlements", () => renderSettlements(got.settlements, got.transactions && got.transactions.explorerUrl)],
      ["service", () => got.wallet && renderService(got.service, got.wallet)],
    ];
    for (const [name, fn] of render) {
      if (!got[name]) continue;
      try { fn(); } catch (err) { failed.push([name, err]); }
    }
    const shown = failed.filter(([, e]) => !(locked && e instanceof ApiError && e.code === "admin_forbidden"));
    $("error").hidden = !shown.length;
    $("error").textContent = shown.map(([n, e]) => `${n}: ${e.message}`).join(" · ");
    const status = $("status");
    status.className = `pill ${failed.length ? "bad" : "ok"}`;
    status.textContent = failed.length ? "not all panels updated" : `live · ${new Date().toLocaleTimeString()}`;
    if (++refreshes === 1) performance.mark("zg-first-data");
    document.body.dataset.refreshes = String(refreshes);
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
})();
