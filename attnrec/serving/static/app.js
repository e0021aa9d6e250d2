/* attnrec explorer: vanilla JS over the service's JSON API. No build step, no dependencies. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    mode: "user",          // "user" | "session"
    user: null,            // raw id of the loaded user
    session: [],           // raw item ids of the anonymous session
    seq: null,             // last /attention payload
    recs: [],              // last recommendation items
    prevIds: null,         // item ids of the list before the last event (to mark what changed)
    layer: "rollout",      // "rollout" (all layers, as the explanations) or a layer index
    head: "mean",
    cursor: null,          // [query, key] cell under the keyboard cursor
    card: null,
    requestId: 0,
  };

  // ---- helpers ------------------------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  async function api(method, path, body, headers = {}) {
    // a service with a read key answers nothing without one: send the key typed in the page
    const key = $("write-key").value.trim();
    const init = { method, headers: { Accept: "application/json", ...(key ? { "X-API-Key": key } : {}), ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (res.status === 401 && !key && method === "GET") askForKey();
    if (!res.ok) {
      const detail = data && (data.message || (typeof data.detail === "string" ? data.detail : null));
      const err = new Error(detail || `${res.status} ${res.statusText}`);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  function askForKey() {
    $("key-row").hidden = false;
    setStatus("event-status", "This service needs a key to read: type the read key (or the write key) "
      + "in the key field and press Enter.", "error");
    $("write-key").focus();
  }

  function setStatus(id, text, kind = "") {
    const node = $(id);
    node.textContent = text;
    node.className = "status" + (kind ? " " + kind : "");
  }

  function debounce(fn, ms) {
    let t = null;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  const CATEGORY_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9",
    "#8C6D31", "#7F7F7F", "#117733", "#882255", "#44AA99", "#332288"];
  function categoryColour(cat) {
    if (!cat) return "#9aa4ae";
    let h = 0;
    for (const ch of cat) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return CATEGORY_COLOURS[h % CATEGORY_COLOURS.length];
  }

  function itemLabel(it) { return it.name || it.item; }
  function pct(w) { return `${(w * 100).toFixed(1)}%`; }

  // ---- model card -----------------------------------------------------------------------------
  async function loadCard() {
    try {
      const card = await api("GET", "/explorer/model");
      state.card = card;
      $("model-line").textContent = `${card.model} · ${card.n_users.toLocaleString()} users · ` +
        `${card.n_items.toLocaleString()} items · version ${card.version}`;
      renderCard(card);
    } catch (e) {
      $("model-line").textContent = "The model could not be loaded: " + e.message;
      $("model-card").textContent = "";
    }
  }

  function renderCard(card) {
    const rows = [
      ["Model", card.model],
      ["Version", card.version],
      ["Saved", card.saved_at || "unknown"],
      ["Dataset", card.dataset || "not recorded"],
      ["Protocol", card.protocol || "not recorded"],
      ["Training data", `${card.n_users.toLocaleString()} users, ${card.n_items.toLocaleString()} items, ` +
        `${card.n_interactions.toLocaleString()} interactions`],
      ["Catalogue", card.has_catalogue ? `${card.categories.length} categories` : "none (ids only)"],
      ["Explanations", card.explain_method],
      ["Privacy", privacyText(card.privacy)],
    ];
    const dl = el("dl", { class: "card" });
    for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: String(v) }));

    const params = Object.entries(card.params);
    const paramsDl = el("dl", { class: "card params" });
    for (const [k, v] of params) paramsDl.append(el("dt", { text: k }), el("dd", { text: String(v) }));

    const metrics = Object.entries(card.metrics || {}).filter(([, v]) => typeof v === "number");
    let metricsNode;
    if (metrics.length) {
      const table = el("table", { class: "metrics" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "metric" }),
          el("th", { scope: "col", text: "test" }))));
      const tbody = el("tbody");
      for (const [k, v] of metrics) {
        tbody.append(el("tr", {}, el("th", { scope: "row", text: k }),
          el("td", { text: Math.abs(v) < 10 ? v.toFixed(4) : v.toFixed(1) })));
      }
      table.append(tbody);
      metricsNode = table;
    } else {
      metricsNode = el("p", { class: "help", text: "No offline metrics stored in this bundle." });
    }
    const v = card.validation;
    const valNode = v && v.best_metric !== undefined && v.best_metric !== null
      ? el("p", { class: "help", text: `Validation NDCG@10 ${Number(v.best_metric).toFixed(4)} at epoch ${v.best_epoch}.` })
      : null;
    const epochs = card.training || [];
    const trainNode = epochs.length
      ? el("p", { class: "help", text: `${epochs.length} epochs; loss ${fmtNum(epochs[0].loss)} → ${fmtNum(epochs[epochs.length - 1].loss)}.` })
      : null;

    $("model-card").replaceChildren(
      dl,
      el("details", { class: "sub" }, el("summary", { text: `Training settings (${params.length})` }), paramsDl, trainNode),
      el("details", { class: "sub", open: true }, el("summary", { text: "Offline metrics" }), metricsNode, valNode),
    );
  }
  function privacyText(p) {
    if (!p) return "not differentially private";
    return `user-level DP: ε = ${fmtNum(p.epsilon)} (target ${p.epsilon_target}), δ = ${p.delta.toExponential(2)}, ` +
      `${p.accountant.toUpperCase()} accountant, sampling rate ${fmtNum(p.sample_rate)}, ` +
      `clipping norm ${p.max_grad_norm}, noise multiplier ${fmtNum(p.noise_multiplier)}, ` +
      `${p.steps}/${p.planned_steps} steps (weights only; the bundle's histories are raw data)`;
  }
  function fmtNum(x) { return typeof x === "number" ? x.toFixed(4) : "n/a"; }

  // ---- user search ----------------------------------------------------------------------------
  const searchUsers = debounce(async (q) => {
    try {
      const res = await api("GET", `/explorer/users?limit=30&q=${encodeURIComponent(q)}`);
      $("user-count").textContent = q
        ? `${res.matches.toLocaleString()} of ${res.total.toLocaleString()} users match “${q}”.`
        : `${res.total.toLocaleString()} users; the first ${res.users.length} are listed.`;
      const items = res.users.map((u) => el("li", {},
        el("button", { type: "button", class: "pick", "data-user": u.user, onclick: () => loadUser(u.user) },
          el("span", { class: "pick-main", text: u.user }),
          el("span", { class: "pick-sub", text: `${u.history_length} items` }))));
      $("user-list").replaceChildren(...items);
    } catch (e) {
      $("user-count").textContent = "User search failed: " + e.message;
    }
  }, 150);

  // ---- item search ----------------------------------------------------------------------------
  const searchItems = debounce(async (q) => {
    if (!q.trim()) { $("item-list").replaceChildren(); return; }
    try {
      const res = await api("GET", `/explorer/items?limit=8&q=${encodeURIComponent(q)}`);
      const rows = res.items.map((it) => el("li", { class: "item-hit" },
        el("span", { class: "swatch", "data-cat": it.category || "" }),
        el("span", { class: "pick-main", text: itemLabel(it) }),
        el("span", { class: "pick-sub", text: [it.category, it.item].filter(Boolean).join(" · ") }),
        el("button", { type: "button", class: "small", "data-item": it.item,
          "aria-label": `Add ${itemLabel(it)} as an event`, onclick: () => addEvent(it.item, itemLabel(it)) }, "Add")));
      if (!rows.length) rows.push(el("li", { class: "help", text: "No item matches." }));
      $("item-list").replaceChildren(...rows);
      paintSwatches($("item-list"));
    } catch (e) {
      setStatus("event-status", "Item search failed: " + e.message, "error");
    }
  }, 150);

  function paintSwatches(root) {
    for (const s of root.querySelectorAll(".swatch")) s.style.background = categoryColour(s.dataset.cat);
  }

  // ---- loading a user or session --------------------------------------------------------------
  async function loadDemoUser() {
    // a first-time visitor sees a real user straight away: the first one the model knows
    try {
      const res = await api("GET", "/explorer/users?limit=1");
      if (res.users.length && !state.user && state.mode === "user") await loadUser(res.users[0].user);
    } catch (_) { /* the user list shows its own error */ }
  }

  async function loadUser(user, { keepPrev = false } = {}) {
    user = user.trim();
    if (!user) return;
    state.mode = "user";
    state.user = user;
    $("user-input").value = user;
    const url = new URL(window.location.href);
    url.searchParams.set("user", user);
    window.history.replaceState(null, "", url);
    for (const b of document.querySelectorAll("#user-list button")) {
      b.setAttribute("aria-current", b.dataset.user === user ? "true" : "false");
    }
    if (!keepPrev) state.prevIds = null;
    await refresh();
  }

  async function loadSession({ keepPrev = false } = {}) {
    state.mode = "session";
    state.session = parseItems($("session-input").value);
    if (!keepPrev) state.prevIds = null;
    await refresh();
  }

  function parseItems(text) {
    return text.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
  }

  async function refresh() {
    const id = ++state.requestId;
    const k = Number($("k-select").value);
    setStatus("recs-status", "Loading…", "busy");
    let seqP, recP;
    if (state.mode === "user") {
      const u = encodeURIComponent(state.user);
      seqP = api("GET", `/users/${u}/attention`);
      recP = api("GET", `/users/${u}/recommendations?k=${k}&explain=true`);
    } else {
      seqP = api("POST", "/sessions/attention", { items: state.session });
      recP = api("POST", "/recommendations/session", { items: state.session, k, explain: true });
    }
    const [seq, recs] = await Promise.allSettled([seqP, recP]);
    if (id !== state.requestId) return; // a newer request superseded this one
    if (seq.status === "fulfilled") {
      state.seq = seq.value;
      renderHistory(seq.value);
      setupHeatmap(seq.value);
    } else {
      $("history-summary").textContent = "Could not load the history: " + seq.reason.message;
    }
    if (recs.status === "fulfilled") {
      renderRecs(recs.value);
    } else {
      setStatus("recs-status", "Could not load recommendations: " + recs.reason.message, "error");
    }
  }

  // ---- history --------------------------------------------------------------------------------
  function renderHistory(seq) {
    const who = state.mode === "user" ? `User ${seq.user}` : "This session";
    const n = seq.history_total;
    let summary;
    if (n === 0) {
      summary = state.mode === "user"
        ? `${who} has no history yet${seq.known_to_model ? "" : " (not in the training data)"}: add an event.`
        : "The session is empty: add items to it.";
    } else {
      summary = `${who}: ${n} item${n === 1 ? "" : "s"}, oldest first` +
        (n > seq.history.length ? ` (the last ${seq.history.length} shown)` : "") +
        (state.mode === "user" && !seq.known_to_model ? "; not in the training data" : "") + ".";
    }
    const live = seq.history.filter((h) => h.live).length;
    if (state.mode === "user" && live) summary += ` ${live} added live.`;
    if (seq.unknown_items && seq.unknown_items.length) {
      summary += ` Ignored ${seq.unknown_items.length} item(s) the model does not know: ${seq.unknown_items.slice(0, 5).join(", ")}.`;
    }
    $("history-summary").textContent = summary;
    const seen = seq.attention ? seq.attention.offset : 0;
    const cards = seq.history.map((h) => {
      const li = el("li", { class: "event" + (h.live ? " live" : "") + (h.position < seen ? " unseen" : ""),
        "data-position": String(h.position), "data-item": h.item },
        el("span", { class: "pos", text: `#${h.position}` }),
        el("span", { class: "ev-name", text: itemLabel(h) }),
        h.name ? el("span", { class: "ev-meta" },
          el("span", { class: "swatch", "data-cat": h.category || "" }),
          h.category ? `${h.category} · ${h.item}` : h.item) : null,
        h.live ? el("span", { class: "tag", text: "live" }) : null);
      li.title = h.position < seen ? "older than the model's window: not attended" : "";
      return li;
    });
    $("timeline").replaceChildren(...cards);
    paintSwatches($("timeline"));
    const tl = $("timeline");
    tl.scrollLeft = tl.scrollWidth;
  }

  function highlightHistory(because) {
    const weights = new Map(because.map((b) => [b.position, b.weight]));
    for (const li of $("timeline").children) {
      const w = weights.get(Number(li.dataset.position));
      li.classList.toggle("attended", w !== undefined);
      li.style.setProperty("--w", w !== undefined ? String(Math.min(1, 0.25 + w)) : "0");
    }
  }

  // ---- recommendations ------------------------------------------------------------------------
  function renderRecs(out) {
    const prev = state.prevIds;
    state.recs = out.items;
    const ids = out.items.map((it) => it.item);
    const fresh = prev ? ids.filter((i) => !prev.includes(i)) : [];
    const source = out.source === "model"
      ? "Ranked by the model"
      : "Popular items not yet seen: the model does not know this user (new since it was trained)";
    let text = `${source}.`;
    const same = prev && prev.length === ids.length && prev.every((x, i) => x === ids[i]);
    if (prev) {
      text += fresh.length
        ? ` The event changed the list: ${fresh.length} new item${fresh.length === 1 ? "" : "s"}.`
        : same ? " The event did not change this list." : " The event re-ordered the list (no new items).";
    }
    setStatus("recs-status", text, prev && !same ? "changed" : "");
    const rows = out.items.map((it, i) => recRow(it, i, prev, fresh));
    if (!rows.length) rows.push(el("li", { class: "help", text: "Nothing left to recommend." }));
    $("recs").replaceChildren(...rows);
    paintSwatches($("recs"));
  }

  function recRow(it, i, prev, fresh) {
    const whyId = `why-${i}`;
    const isNew = fresh.includes(it.item);
    const moved = prev && !isNew ? prev.indexOf(it.item) - i : 0;
    const because = (it.explanation && it.explanation.because) || [];
    const toggle = el("button", { type: "button", class: "why-btn", "aria-expanded": "false",
      "aria-controls": whyId, disabled: it.explanation ? null : true,
      title: it.explanation ? null : "No explanation for this item" }, "Why?");
    const why = el("div", { id: whyId, class: "why", hidden: true }, explanationNode(it));
    toggle.addEventListener("click", () => {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      for (const other of document.querySelectorAll(".why-btn[aria-expanded=true]")) {
        if (other !== toggle) {
          other.setAttribute("aria-expanded", "false");
          $(other.getAttribute("aria-controls")).hidden = true;
        }
      }
      toggle.setAttribute("aria-expanded", String(open));
      why.hidden = !open;
      highlightHistory(open ? because : []);
      if (open && because.length) focusHeatColumn(because[0].position);
    });
    return el("li", { class: "rec" + (isNew ? " is-new" : ""), "data-item": it.item },
      el("div", { class: "rec-head" },
        el("span", { class: "rank", text: String(i + 1) }),
        el("div", { class: "rec-text" },
          el("div", { class: "rec-name", text: itemLabel(it) }),
          el("div", { class: "rec-meta" },
            el("span", { class: "swatch", "data-cat": it.category || "" }),
            [it.category, it.name ? it.item : null, `score ${it.score.toFixed(3)}`].filter(Boolean).join(" · "))),
        isNew ? el("span", { class: "tag new", text: "new" }) : null,
        moved > 0 ? el("span", { class: "tag up", text: `▲${moved}`, title: `up ${moved}` }) : null,
        moved < 0 ? el("span", { class: "tag down", text: `▼${-moved}`, title: `down ${-moved}` }) : null),
      el("div", { class: "rec-actions" }, toggle,
        el("button", { type: "button", class: "small secondary",
          "aria-label": `I viewed ${itemLabel(it)}: add it as an event`,
          onclick: () => addEvent(it.item, itemLabel(it)) }, "I viewed this")),
      why);
  }

  function explanationNode(it) {
    const ex = it.explanation;
    if (!ex || !ex.because.length) {
      const why = ex && ex.method === "popularity" ? "it is popular" : "no history item stands out";
      return el("p", { class: "help", text: `Recommended because ${why}.` });
    }
    const method = ex.method === "attention"
      ? "attention across all layers and how much each item raised this recommendation"
      : ex.method === "item-item weights" ? "learned item-to-item weights" : ex.method;
    const max = Math.max(...ex.because.map((b) => Math.abs(b.weight)), 1e-9);
    const list = el("ol", { class: "bars" });
    for (const b of ex.because) {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.max(2, (Math.abs(b.weight) / max) * 100)}%`;
      list.append(el("li", {},
        el("span", { class: "bar-label", title: `${b.name || b.item} (${b.item}, #${b.position})` },
          el("span", { class: "pos-ref", text: `#${b.position} ` }), b.name || b.item),
        el("span", { class: "bar-track" }, bar),
        el("span", { class: "bar-value", text: pct(b.weight) })));
    }
    return el("div", {}, el("p", { class: "why-intro" }, el("strong", { text: "Because you viewed" }),
      ` (history items ranked by ${method}):`), list);
  }

  // ---- events ---------------------------------------------------------------------------------
  async function addEvent(item, label) {
    state.prevIds = state.recs.map((r) => r.item);
    if (state.mode === "session") {
      state.session.push(item);
      $("session-input").value = state.session.join(", ");
      setStatus("event-status", `Added ${label} to the session.`, "ok");
      await loadSession({ keepPrev: true });
      return;
    }
    if (!state.user) {
      setStatus("event-status", "Load a user first (or switch to an anonymous session).", "error");
      state.prevIds = null;
      return;
    }
    const key = $("write-key").value.trim();
    setStatus("event-status", `Storing ${label} for ${state.user}…`, "busy");
    try {
      await api("POST", "/events", { user: state.user, item, event_type: "view" },
        key ? { "X-API-Key": key } : {});
    } catch (e) {
      state.prevIds = null;
      const hint = e.status === 401 ? " Type the service's write key in the field above." : "";
      setStatus("event-status", `The event was not stored: ${e.message}.${hint}`, "error");
      if (e.status === 401) $("write-key").focus();
      return;
    }
    setStatus("event-status", `Stored: ${state.user} viewed ${label}.`, "ok");
    await loadUser(state.user, { keepPrev: true });
  }

  // ---- heatmap --------------------------------------------------------------------------------
  // viridis, 9 stops
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  function colour(t) {
    t = Math.max(0, Math.min(1, t));
    const x = t * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return `rgb(${Math.round(a[0] + (b[0] - a[0]) * f)},${Math.round(a[1] + (b[1] - a[1]) * f)},${Math.round(a[2] + (b[2] - a[2]) * f)})`;
  }

  function setupHeatmap(seq) {
    const att = seq.attention;
    const layerSel = $("layer-select"), headSel = $("head-select");
    $("heat-help").hidden = !att;
    if (!att) {
      layerSel.replaceChildren();
      headSel.replaceChildren();
      layerSel.disabled = headSel.disabled = true;
      drawEmpty(seq.history_total ? "This model has no attention to show." : "No history yet.");
      return;
    }
    layerSel.disabled = headSel.disabled = false;
    if (state.layer !== "rollout") state.layer = Math.min(state.layer, att.n_layers - 1);
    if (state.head !== "mean" && Number(state.head) >= att.n_heads) state.head = "mean";
    layerSel.replaceChildren(
      el("option", { value: "rollout", selected: state.layer === "rollout", text: "all (rollout)" }),
      ...Array.from({ length: att.n_layers }, (_, l) =>
        el("option", { value: String(l), selected: l === state.layer, text: `${l + 1} of ${att.n_layers}` })));
    headSel.disabled = state.layer === "rollout";
    headSel.replaceChildren(
      el("option", { value: "mean", selected: state.head === "mean", text: "mean of heads" }),
      ...Array.from({ length: att.n_heads }, (_, h) =>
        el("option", { value: String(h), selected: String(h) === String(state.head), text: `${h + 1}` })));
    state.cursor = att.length ? [att.length - 1, att.length - 1] : null;
    drawHeatmap();
  }

  function meanOfHeads(heads, L) {
    const m = Array.from({ length: L }, () => new Array(L).fill(0));
    for (const h of heads) for (let q = 0; q < L; q++) for (let k = 0; k < L; k++) m[q][k] += h[q][k] / heads.length;
    return m;
  }

  function currentMatrix() {
    const att = state.seq && state.seq.attention;
    if (!att) return null;
    if (state.layer === "rollout") return att.rollout;  // computed by the model on the server
    const heads = att.layers[state.layer];
    if (state.head !== "mean") return heads[Number(state.head)];
    return meanOfHeads(heads, att.length);
  }

  function drawEmpty(text) {
    const c = $("heatmap");
    const dpr = window.devicePixelRatio || 1;
    c.style.width = "100%";
    c.style.height = "80px";
    c.width = Math.round((c.clientWidth || 420) * dpr);
    c.height = Math.round(80 * dpr);
    state.geom = null;
    document.querySelector(".legend").hidden = true;
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.fillStyle = "#57606a";
    ctx.font = "15px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(text, c.width / dpr / 2, 40);
    c.setAttribute("aria-label", text);
    $("heat-readout").textContent = "";
    $("legend-max").textContent = "1";
  }

  function drawHeatmap() {
    const att = state.seq && state.seq.attention;
    const m = currentMatrix();
    if (!att || !m || !att.length) return drawEmpty("No history yet.");
    const c = $("heatmap");
    const L = att.length;
    document.querySelector(".legend").hidden = false;
    const css = Math.min(420, c.parentElement.clientWidth || 420);
    const dpr = window.devicePixelRatio || 1;
    const margin = 34;
    const cell = Math.max(2, Math.floor((css - margin) / L));
    const size = margin + cell * L;
    c.style.width = `${size}px`;
    c.style.height = `${size}px`;
    c.width = Math.round(size * dpr);
    c.height = Math.round(size * dpr);
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, size, size);
    // causal: the first row is always 1 (position 0 sees only itself): keep it out of the colour scale
    let vmax = 0;
    for (let q = att.causal ? 1 : 0; q < L; q++) {
      for (let k = 0; k < (att.causal ? q + 1 : L); k++) vmax = Math.max(vmax, m[q][k]);
    }
    if (vmax <= 0) vmax = 1;
    state.vmax = vmax;
    state.geom = { margin, cell, L };
    for (let q = 0; q < L; q++) {
      for (let k = 0; k < L; k++) {
        ctx.fillStyle = att.causal && k > q ? "#f3f4f6" : colour(m[q][k] / vmax);
        ctx.fillRect(margin + k * cell, margin + q * cell, cell, cell);
      }
    }
    // axis labels: sequence positions (match the timeline's #n)
    ctx.fillStyle = "#57606a";
    ctx.font = "10px system-ui, sans-serif";
    const every = Math.max(1, Math.ceil(14 / cell));
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let q = 0; q < L; q += every) ctx.fillText(String(att.offset + q), margin - 4, margin + (q + 0.5) * cell);
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (let k = 0; k < L; k += every) ctx.fillText(String(att.offset + k), margin + (k + 0.5) * cell, margin - 4);
    if (state.cursor) {
      const [q, k] = state.cursor;
      ctx.strokeStyle = "#ff2d55";
      ctx.lineWidth = 2;
      ctx.strokeRect(margin + k * cell + 1, margin + q * cell + 1, cell - 2, cell - 2);
    }
    $("legend-max").textContent = vmax.toFixed(2);
    const headText = state.head === "mean" ? "mean of heads" : `head ${Number(state.head) + 1}`;
    const view = state.layer === "rollout" ? "all layers combined (rollout, as the explanations)"
      : `layer ${state.layer + 1}, ${headText}`;
    c.setAttribute("aria-label", `Attention heatmap, ${view}, ` +
      `${L} positions from #${att.offset} to #${att.offset + L - 1}. ${summariseLastRow(m)}`);
    readCursor();
  }

  function summariseLastRow(m) {
    const att = state.seq.attention;
    const row = m[att.length - 1];
    const top = row.map((w, k) => [w, k]).sort((a, b) => b[0] - a[0]).slice(0, 3);
    const names = top.map(([w, k]) => `${itemLabel(historyAt(att.offset + k))} ${pct(w)}`);
    return `The last position attends most to ${names.join(", ")}.`;
  }

  function historyAt(pos) {
    return (state.seq.history.find((h) => h.position === pos)) || { item: `#${pos}` };
  }

  function readCursor() {
    const att = state.seq && state.seq.attention;
    if (!att || !state.cursor) { $("heat-readout").textContent = ""; return; }
    const [q, k] = state.cursor;
    const m = currentMatrix();
    const qi = historyAt(att.offset + q), ki = historyAt(att.offset + k);
    $("heat-readout").textContent = att.causal && k > q
      ? `#${att.offset + q} cannot attend to the later #${att.offset + k} (causal).`
      : `#${att.offset + q} ${itemLabel(qi)} → #${att.offset + k} ${itemLabel(ki)}: ${pct(m[q][k])}`;
  }

  function focusHeatColumn(position) {
    const att = state.seq && state.seq.attention;
    if (!att) return;
    const k = position - att.offset;
    if (k < 0 || k >= att.length) return;
    state.cursor = [att.length - 1, k];
    drawHeatmap();
  }

  function cellAt(evt) {
    const g = state.geom;
    if (!g) return null;
    const r = $("heatmap").getBoundingClientRect();
    const x = evt.clientX - r.left - g.margin, y = evt.clientY - r.top - g.margin;
    const k = Math.floor(x / g.cell), q = Math.floor(y / g.cell);
    return q >= 0 && k >= 0 && q < g.L && k < g.L ? [q, k] : null;
  }

  // ---- wiring ---------------------------------------------------------------------------------
  function init() {
    for (const r of document.querySelectorAll("input[name=mode]")) {
      r.addEventListener("change", () => {
        const session = r.value === "session" && r.checked;
        $("user-panel").hidden = session;
        $("session-panel").hidden = !session;
        $("key-row").hidden = session;
        if (session && state.session.length) loadSession();
        else if (!session && state.user) loadUser(state.user);
      });
    }
    $("user-input").addEventListener("input", (e) => searchUsers(e.target.value.trim()));
    $("user-form").addEventListener("submit", (e) => { e.preventDefault(); loadUser($("user-input").value); });
    $("session-form").addEventListener("submit", (e) => { e.preventDefault(); loadSession(); });
    $("item-input").addEventListener("input", (e) => searchItems(e.target.value));
    $("key-row").addEventListener("submit", (e) => {
      e.preventDefault();
      loadCard();  // the key may be what the reads were missing
      if (state.user) loadUser(state.user); else loadDemoUser();
    });
    $("item-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const first = $("item-list").querySelector("button");
      if (first) first.click();
    });
    $("k-select").addEventListener("change", () => {
      state.prevIds = null;
      if (state.mode === "user" ? state.user : true) refresh();
    });
    $("layer-select").addEventListener("change", (e) => {
      state.layer = e.target.value === "rollout" ? "rollout" : Number(e.target.value);
      $("head-select").disabled = state.layer === "rollout";
      drawHeatmap();
    });
    $("head-select").addEventListener("change", (e) => { state.head = e.target.value; drawHeatmap(); });
    const c = $("heatmap");
    c.addEventListener("mousemove", (e) => {
      const cell = cellAt(e);
      if (cell) { state.cursor = cell; drawHeatmap(); }
    });
    c.addEventListener("keydown", (e) => {
      const att = state.seq && state.seq.attention;
      if (!att || !att.length) return;
      const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      const d = moves[e.key];
      if (!d) return;
      e.preventDefault();
      const [q, k] = state.cursor || [att.length - 1, 0];
      state.cursor = [Math.max(0, Math.min(att.length - 1, q + d[0])),
        Math.max(0, Math.min(att.length - 1, k + d[1]))];
      drawHeatmap();
    });
    window.addEventListener("resize", debounce(() => { if (state.seq && state.seq.attention) drawHeatmap(); }, 100));
    drawEmpty("Pick a user or type a session.");
    loadCard();
    searchUsers("");
    const fromUrl = new URLSearchParams(window.location.search).get("user");
    if (fromUrl) loadUser(fromUrl);
    else loadDemoUser();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
