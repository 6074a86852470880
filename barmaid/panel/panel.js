// barmaid service panel: one WebSocket to the machine, the pumps, a timeline of pours, the tools.
//
// It speaks the extended protocol of docs/protocol.md: `hello` first, whose `welcome` says which
// request types the server accepts, whether a token is needed and whether the pumps are reachable;
// every request carries an id, and its reply (or error, by `code`) is matched by that id. The pumps'
// law (flow_ml_s, dead_s) and calibration points come from the server, never recomputed here.
// No library, nothing fetched.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(location.search);
  const WS_URL = params.get("ws") || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  // Kept per machine: a link with another ?ws= never gets this machine's token.
  const TOKEN_KEY = `barmaid.token ${WS_URL}`;

  const $ = (id) => document.getElementById(id);

  /** An element with attributes (on* are listeners) and children (strings become text). */
  function h(tag, attrs = {}, ...children) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const fmt = (x, digits = 1) => (x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(digits));
  const now = () => performance.now() / 1000;

  // ---- what the panel knows ----------------------------------------------------------------

  const ui = {
    ws: null,
    nextId: 1,
    pending: new Map(), // request id -> {type, onReply, onError}: answered by the frames with that id
    state: null, // the last `state` data
    welcome: null, // the `welcome` data
    types: new Set(), // the request types this server accepts (welcome.types)
    hardware: true, // false: the pump hardware cannot be reached (welcome and state `hardware`)
    remaining: 0,
    localPlan: null, // {action, seconds: {pump: s}, at}: the pour this panel just asked for
    live: null, // the running (or just ended) pour: {action, t0, spans, ended, outcome, id}
    pours: [], // history, newest first
    seen: new Map(), // pour id -> the spans this panel planned or saw it run
    wizard: { running: null, runs: {} }, // runs: pump -> [{seconds, ml}]
    tokenTried: null,
    cards: [],
  };

  const pumps = () => (ui.state ? ui.state.pumps : []);
  const nameOf = (pump) => (pumps()[pump] && pumps()[pump].name) || `Pump ${pump}`;
  const has = (type) => ui.types.has(type);
  const busy = () => ui.state !== null && ui.state.state !== "idle";

  // ---- the connection ----------------------------------------------------------------------

  function connect() {
    const ws = new WebSocket(WS_URL);
    ui.ws = ws;
    ws.onopen = () => {
      setLink(true);
      hello(sessionStorage.getItem(TOKEN_KEY) || null);
      send("state");
      send("history", { limit: 10 });
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return toast(`the machine sent something that is not JSON: ${String(event.data).slice(0, 80)}`);
      }
      const request = message.id !== undefined ? ui.pending.get(message.id) : undefined;
      const handler = HANDLERS[message.type];
      if (handler) handler(message.data || {}, request);
      if (request && FINAL.has(message.type)) ui.pending.delete(message.id);
    };
    ws.onclose = () => {
      if (ui.ws !== ws) return;
      setLink(false);
      setTimeout(connect, 1000);
    };
  }

  /** The reply types that end a request (`started` and the pushed `state` come before some). */
  const FINAL = new Set(["welcome", "state", "history", "stopped", "done", "error", "echo"]);

  /** Sends one request with an id, which the server copies into its reply and errors. `onReply`
   * gets the final reply's data; `onError` gets an error's text and data (and it is toasted too). */
  function send(type, data, onError, onReply) {
    if (!ui.ws || ui.ws.readyState !== WebSocket.OPEN) {
      toast("not connected to the machine; retrying…");
      return null;
    }
    const id = `panel-${ui.nextId++}`;
    const message = { type, id };
    if (data !== undefined) message.data = data;
    ui.pending.set(id, { type, onError, onReply });
    ui.ws.send(JSON.stringify(message));
    return id;
  }

  /** Asks for a pour; `seconds` (pump -> s) is what the panel expects it to run, for the timeline. */
  function pour(type, data, seconds, onError) {
    ui.localPlan = { action: type, seconds, at: now() };
    const id = send(type, data, onError);
    if (id) ui.pending.get(id).plan = ui.localPlan;
    return id;
  }

  /** Asks what the server is; with a token, presents it (a hello without one never fails). */
  function hello(token) {
    ui.tokenTried = token;
    send("hello", token ? { token } : undefined);
  }

  function setLink(up) {
    const link = $("link");
    link.textContent = up ? "online" : "offline";
    link.className = `link ${up ? "up" : "down"}`;
  }

  // ---- messages from the server ------------------------------------------------------------

  const HANDLERS = {
    state(data, request) {
      ui.state = data;
      ui.hardware = data.hardware;
      if (data.state !== "idle" && (!ui.live || ui.live.ended !== null)) beginLive(data.action, null, data.remaining_time);
      if (data.state === "idle" && ui.live && ui.live.ended === null) endLive(null);
      if (data.state === "idle") ui.remaining = 0;
      if (data.state === "idle" && ui.wizard.running && ui.wizard.running.started) wizardRan();
      renderAll();
      if (request && request.onReply) request.onReply(data);
    },
    status(data) {
      ui.remaining = data.remaining_time;
      if (data.remaining_time > 0 && (!ui.live || ui.live.ended !== null)) {
        beginLive(data.action, data.initial_time, data.remaining_time);
      } else if (data.remaining_time === 0 && ui.live && ui.live.ended === null) {
        endLive(data.outcome || null);
      }
      renderMachine();
    },
    history(data) {
      ui.pours = data.pours || [];
      const live = ui.live;
      if (live && live.id === null) {
        // The running pour, or, if it ended before this answer was sent, the newest one.
        const pour = ui.pours.find((p) => p.outcome === "running") || (live.ended !== null ? ui.pours[0] : null);
        if (pour) {
          live.id = pour.id;
          if (!live.spans) live.spans = pourSpans(pour);
          ui.seen.set(pour.id, live.spans);
          if (live.estimated) live.t0 = now() - Math.max(0, total(live.spans) - ui.remaining);
          live.estimated = false;
        }
      }
      renderHistory();
      renderTimelines();
    },
    welcome(data) {
      ui.welcome = data;
      ui.types = new Set(data.types);
      ui.hardware = data.hardware;
      if (!data.may_pour) {
        askToken("");
      } else if (ui.tokenTried) {
        sessionStorage.setItem(TOKEN_KEY, ui.tokenTried);
        $("token-dialog").close();
      }
      renderAll();
    },
    stopped(data) {
      toast(data.msg, "info");
    },
    started(data, request) {
      // Our own pour: the server says how long it runs, to the millisecond (a one-pump plan is
      // exactly that long); its first status follows.
      ui.hardware = true;
      const seconds = request && request.plan && request.plan.seconds;
      const only = seconds && Object.keys(seconds);
      if (only && only.length === 1) seconds[only[0]] = data.seconds;
    },
    done(data, request) {
      if (request && request.onReply) request.onReply(data);
    },
    echo() {},
    error(data, request) {
      if (data.code === "token") {
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(request && request.type === "hello" ? data.msg : "");
        if (request && request.type === "hello") return; // the dialog says it
      }
      if (data.code === "unavailable") ui.hardware = false;
      const msg = errorText(data);
      if (request && request.onError) request.onError(msg, data);
      else if (ui.wizard.running && !ui.wizard.running.started) wizardFailed(msg);
      toast(msg);
      renderAll();
    },
  };

  /** What an error means to the person at the machine, by its code; the server's msg says the rest. */
  function errorText(data) {
    switch (data.code) {
      case "busy":
        return `busy: ${data.msg}` + (data.retry_in !== undefined ? ` (try again in ${data.retry_in} s)` : "");
      case "bottle":
        return `bottle too low: ${data.msg}`;
      case "token":
        return `token needed: ${data.msg}`;
      case "unavailable":
        return `pumps offline: ${data.msg}`;
      default:
        return data.msg;
    }
  }

  // ---- the running pour and its plan -------------------------------------------------------

  /** Seconds each pump runs for planned millilitres, by today's law: dead_s + ml / flow_ml_s. */
  function plannedSeconds(ml) {
    const seconds = {};
    for (const [pump, volume] of Object.entries(ml || {})) {
      const state = pumps()[pump];
      seconds[pump] = state && volume > 0 ? state.dead_s + volume / state.flow_ml_s : 0;
    }
    return seconds;
  }

  /** A recorded pour's plan: its millilitres at today's flows, stretched to the time it took when
   * it completed (a calibration since then changed the flows, not how long that pour ran). */
  function pourSpans(pour) {
    const spans = schedule(plannedSeconds(pour.planned_ml));
    const took = pour.ended - pour.started;
    const stretch = pour.outcome === "completed" && took > 0 ? took / total(spans) : 1;
    if (!(stretch > 0.5 && stretch < 2)) return spans;
    for (const span of Object.values(spans)) Object.assign(span, { start: span.start * stretch, stop: span.stop * stretch });
    return spans;
  }

  function lanes() {
    const limits = (ui.welcome && ui.welcome.limits) || {};
    return limits.max_parallel_pumps || null;
  }

  /** pump -> {start, stop}: the longest first, into the lane that frees first (as barmaid does). */
  function schedule(seconds) {
    const entries = Object.entries(seconds).map(([p, s]) => [Number(p), s]);
    const n = lanes();
    const spans = {};
    if (!n || n >= entries.length) {
      for (const [pump, s] of entries) spans[pump] = { start: 0, stop: s };
      return spans;
    }
    const free = new Array(n).fill(0);
    entries.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
    for (const [pump, s] of entries) {
      const lane = free.indexOf(Math.min(...free));
      spans[pump] = { start: free[lane], stop: free[lane] + s };
      free[lane] += s;
    }
    return spans;
  }

  const total = (spans) => Math.max(0, ...Object.values(spans || {}).map((s) => s.stop));

  /** The plan this panel asked for, if the pour that just started is that one. */
  function myPlan(action) {
    const mine = ui.localPlan;
    ui.localPlan = null;
    if (!mine || now() - mine.at > 10) return null;
    return !action || action === mine.action ? mine : null;
  }

  function beginLive(action, initial, remaining) {
    const mine = myPlan(action);
    const spans = mine ? schedule(mine.seconds) : null;
    let t0 = now();
    if (initial !== null && initial !== undefined) t0 -= Math.max(0, initial - remaining);
    else if (spans) t0 -= Math.max(0, total(spans) - remaining);
    const estimated = !spans && (initial === null || initial === undefined); // until history gives the plan
    ui.live = { action: action || (mine && mine.action), t0, estimated, spans, ended: null, outcome: null, id: null };
    if (ui.wizard.running && ui.live.action === "calibrate") ui.wizard.running.started = true;
    send("history", { limit: 10 }); // the running pour's plan and id
    if (!ui.ticker) ui.ticker = setInterval(tick, 100);
  }

  function endLive(outcome) {
    const live = ui.live;
    live.ended = Math.max(0, Math.min(now() - live.t0, live.spans ? total(live.spans) : Infinity));
    live.outcome = outcome;
    clearInterval(ui.ticker);
    ui.ticker = null;
    send("history", { limit: 10 }); // what it really poured, and how it ended
    tick();
  }

  function elapsed() {
    const live = ui.live;
    if (!live) return 0;
    return live.ended !== null ? live.ended : now() - live.t0;
  }

  /** The pumps running now, by the live pour's spans. */
  function pumpsOn() {
    const on = new Set();
    const live = ui.live;
    if (!live || live.ended !== null || !live.spans) return on;
    const t = elapsed();
    for (const [pump, span] of Object.entries(live.spans)) if (span.start <= t && t < span.stop) on.add(Number(pump));
    return on;
  }

  function showOnOff() {
    const on = pumpsOn();
    ui.cards.forEach((card, pump) => {
      card.root.classList.toggle("on", on.has(pump));
      card.onoff.textContent = on.has(pump) ? "ON" : "off";
    });
  }

  function tick() {
    showOnOff();
    renderTimelines();
  }

  // ---- rendering ---------------------------------------------------------------------------

  function renderAll() {
    renderMachine();
    renderPumps();
    renderWizard();
    renderClean();
    renderHistory();
    renderTimelines();
  }

  /** Servers that tell (`hardware` in state and welcome) say false while the pumps cannot be reached. */
  const hardwareDown = () => ui.hardware === false;

  function renderMachine() {
    const state = ui.state;
    let text = state ? state.state : "connecting…";
    if (state && state.state !== "idle") text += ` · ${ui.remaining || state.remaining_time} s left`;
    $("machine").textContent = hardwareDown() ? `${text} · pumps offline` : text;
    $("machine").className = `machine ${busy() ? "busy" : ""} ${hardwareDown() ? "down" : ""}`;
  }

  function buildCard(pump) {
    const card = {};
    card.name = h("span", { class: "name" });
    card.onoff = h("span", { class: "onoff", "data-testid": `onoff-${pump}` }, "off");
    card.fill = h("div", { class: "fill" });
    card.levelText = h("span", { class: "level-text", "data-testid": `level-${pump}` });
    card.flow = h("span", { "data-testid": `flow-${pump}` });
    card.dead = h("span", { "data-testid": `dead-${pump}` });
    card.sim = h("span", { class: "sim", "data-testid": `sim-${pump}` });
    card.prime = h("button", { "data-testid": `prime-${pump}`, title: "fill the tube again; what it draws comes off the level", onclick: () => prime(pump) }, "Prime");
    card.refill = h("button", { "data-testid": `refill-${pump}`, title: "a new bottle: primes, then the level is full less the priming", onclick: () => refill(pump) }, "Refill");
    card.levelInput = h("input", { type: "number", min: 0, step: "any", placeholder: "ml", "data-testid": `level-input-${pump}` });
    const levelForm = h(
      "form",
      { class: "set-level", onsubmit: (e) => (e.preventDefault(), setLevel(pump, card.levelInput.value)) },
      h("label", {}, "level ", card.levelInput, " ml"),
      h("button", { type: "submit", "data-testid": `level-save-${pump}` }, "Set")
    );
    card.root = h(
      "article",
      { class: "pump", "data-testid": `pump-${pump}` },
      h("div", { class: "head" }, card.name, card.onoff),
      h("div", { class: "bar", title: "level of capacity" }, card.fill),
      card.levelText,
      h("div", { class: "facts" }, h("span", {}, "flow ", card.flow), h("span", {}, "start-up ", card.dead), card.sim),
      h("div", { class: "actions" }, card.prime, card.refill),
      levelForm
    );
    return card;
  }

  function renderPumps() {
    const list = pumps();
    const grid = $("pumps");
    if (ui.cards.length !== list.length) {
      ui.cards = list.map((_, pump) => buildCard(pump));
      grid.replaceChildren(...ui.cards.map((c) => c.root));
    }
    list.forEach((p, pump) => {
      const card = ui.cards[pump];
      card.name.textContent = nameOf(pump);
      const level = p.level_ml;
      const capacity = p.capacity_ml;
      const share = level !== null && capacity ? Math.max(0, Math.min(1, level / capacity)) : 0;
      card.fill.style.width = `${(share * 100).toFixed(1)}%`;
      card.fill.classList.toggle("low", share < 0.15);
      card.levelText.textContent =
        level === null || level === undefined
          ? "level not tracked"
          : capacity
            ? `${fmt(level, 0)} of ${fmt(capacity, 0)} ml`
            : `${fmt(level, 0)} ml`;
      card.flow.textContent = `${fmt(p.flow_ml_s)} ml/s`;
      card.dead.textContent = `${fmt(p.dead_s, 2)} s`;
      card.sim.textContent = p.sim_poured_ml === undefined ? "" : `simulated: ${fmt(p.sim_poured_ml)} ml poured`;
      card.prime.disabled = busy() || !has("prime");
      card.refill.disabled = busy() || !has("refill");
    });
    showOnOff();
  }

  /** Prime or refill one pump; its `started` reply says exactly how long it runs. */
  function primeAs(type, pump) {
    const p = pumps()[pump];
    pour(type, { pump }, plannedSeconds({ [pump]: p.prime_ml }));
  }
  const prime = (pump) => primeAs("prime", pump);
  const refill = (pump) => primeAs("refill", pump);

  function setLevel(pump, value) {
    if (value === "" || !(Number(value) >= 0)) return toast("set level: enter the millilitres left in the bottle, 0 or more");
    send("set_level", { pump, ml: Number(value) });
  }

  // ---- the timeline ------------------------------------------------------------------------

  /** The pours to draw: the live one first (until history has it finished), then the last ones. */
  function timelineItems() {
    const items = [];
    const live = ui.live;
    const finished = live && ui.pours.find((p) => p.id === live.id && p.outcome !== "running");
    if (live && live.spans && !(live.ended !== null && finished)) {
      const t = elapsed();
      items.push({
        key: "live",
        action: live.action,
        outcome: live.ended === null ? "running" : live.outcome || "ended",
        rows: Object.entries(live.spans).map(([pump, span]) => ({
          pump: Number(pump),
          start: span.start,
          planned: span.stop - span.start,
          actual: Math.max(0, Math.min(t - span.start, span.stop - span.start)),
        })),
        now: live.ended === null ? t : null,
      });
    }
    for (const pour of ui.pours) {
      if (items.length >= 3) break;
      if (pour.outcome === "running") continue;
      const spans = ui.seen.get(pour.id) || pourSpans(pour);
      const share = (pump) => (pour.planned_ml[pump] > 0 ? ((pour.poured_ml || {})[pump] || 0) / pour.planned_ml[pump] : 0);
      items.push({
        key: `pour-${pour.id}`,
        action: pour.action,
        outcome: pour.outcome,
        started: pour.started,
        rows: Object.entries(spans).map(([pump, span]) => ({
          pump: Number(pump),
          start: span.start,
          planned: span.stop - span.start,
          actual: (span.stop - span.start) * share(pump),
        })),
        now: null,
      });
    }
    return items;
  }

  function drawTimeline(item) {
    // Drawn at the box's width in pixels, so text keeps its size (600 while the tab is hidden).
    const shown = $("timelines").clientWidth;
    const W = shown > 0 ? Math.max(320, Math.min(900, shown - 20)) : 600;
    const left = 100, right = 16, rowH = 24, top = 16;
    const rows = item.rows.sort((a, b) => a.pump - b.pump);
    const end = Math.max(0.001, ...rows.map((r) => r.start + Math.max(r.planned, r.actual)));
    const x = (t) => left + ((W - left - right) * t) / end;
    const height = top + rows.length * rowH + 22;
    const svg = h("svg:svg", {
      viewBox: `0 0 ${W} ${height}`,
      class: "timeline",
      role: "img",
      "data-testid": "timeline",
      "data-outcome": item.outcome,
      "aria-label": `${item.action} ${item.outcome}`,
    });
    rows.forEach((r, i) => {
      const y = top + i * rowH;
      const short = item.now === null && r.actual < r.planned - 0.01;
      svg.append(
        h("svg:text", { x: 4, y: y + 16, class: "label" }, nameOf(r.pump)),
        h("svg:rect", {
          x: x(r.start), y: y + 3, width: Math.max(1, x(r.start + r.planned) - x(r.start)), height: rowH - 6, rx: 3,
          class: "planned", "data-pump": r.pump, "data-seconds": r.planned.toFixed(3),
        }),
        h("svg:rect", {
          x: x(r.start), y: y + 6, width: Math.max(0, x(r.start + r.actual) - x(r.start)), height: rowH - 12, rx: 2,
          class: `actual${short ? " short" : ""}`, "data-pump": r.pump, "data-seconds": r.actual.toFixed(3),
        })
      );
    });
    const axisY = top + rows.length * rowH + 4;
    svg.append(h("svg:line", { x1: left, x2: W - right, y1: axisY, y2: axisY, class: "axis" }));
    const step = niceStep(end);
    for (let t = 0; t <= end + 1e-9; t += step) {
      svg.append(
        h("svg:line", { x1: x(t), x2: x(t), y1: axisY, y2: axisY + 4, class: "axis" }),
        h("svg:text", { x: x(t), y: axisY + 16, class: "tick" }, `${+t.toFixed(2)} s`)
      );
    }
    const cut = rows.filter((r) => r.actual < r.planned - 0.01).map((r) => r.start + r.actual);
    if (item.now === null && item.outcome !== "completed") {
      // Where it ended, in the outcome's words (a lost pour is counted in full: no cut to draw).
      const at = cut.length ? x(Math.max(...cut)) : x(end);
      if (cut.length) svg.append(h("svg:line", { x1: at, x2: at, y1: top, y2: axisY, class: "cut" }));
      const leftOf = at > W * 0.6;
      svg.append(h("svg:text", { x: leftOf ? at - 3 : at + 3, y: top - 4, class: `cut-label${leftOf ? " end" : ""}`,
        "data-testid": "timeline-outcome" }, OUTCOME_WORDS[item.outcome] || item.outcome));
    }
    if (item.now !== null) {
      svg.append(h("svg:line", { x1: x(Math.min(item.now, end)), x2: x(Math.min(item.now, end)), y1: top, y2: axisY, class: "now" }));
    }
    return svg;
  }

  /** The final status's and the history's outcome, as the timeline says it. */
  const OUTCOME_WORDS = {
    stopped: "stopped",
    lost: "lost: counted in full",
    "shut down": "shut down",
    failed: "failed",
    interrupted: "interrupted",
    ended: "ended",
  };

  function niceStep(end) {
    const raw = end / 5;
    const power = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  }

  function renderTimelines() {
    const items = timelineItems();
    const box = $("timelines");
    if (!items.length) return box.replaceChildren(h("p", { class: "hint" }, "No pour yet."));
    box.replaceChildren(
      ...items.map((item) => {
        const planned = Math.max(...item.rows.map((r) => r.start + r.planned));
        const actual = Math.max(...item.rows.map((r) => (r.actual > 0 ? r.start + r.actual : 0)));
        const when = item.started ? new Date(item.started * 1000).toLocaleTimeString() : "now";
        return h(
          "figure",
          { class: `pour ${item.key === "live" ? "live" : ""}` },
          h(
            "figcaption",
            {},
            h("strong", {}, item.action || "pour"),
            ` · ${when} · `,
            h("span", { class: `outcome ${String(item.outcome).replace(" ", "-")}` }, item.outcome),
            ` · ${fmt(actual, 2)} s of ${fmt(planned, 2)} s planned`
          ),
          drawTimeline(item)
        );
      })
    );
  }

  // ---- history -----------------------------------------------------------------------------

  function renderHistory() {
    const mlText = (pour) =>
      Object.entries(pour.planned_ml || {})
        .map(([pump, planned]) => `${nameOf(pump)} ${fmt((pour.poured_ml || {})[pump])} / ${fmt(planned)}`)
        .join(", ");
    $("history-rows").replaceChildren(
      ...ui.pours.map((pour) =>
        h(
          "tr",
          { "data-testid": "history-row" },
          h("td", {}, new Date(pour.started * 1000).toLocaleTimeString()),
          h("td", {}, pour.action),
          h("td", {}, mlText(pour)),
          h("td", { class: `outcome ${pour.outcome.replace(" ", "-")}` }, pour.outcome)
        )
      )
    );
  }

  // ---- cleaning ----------------------------------------------------------------------------

  function renderClean() {
    const box = $("clean-pumps");
    if (box.children.length !== pumps().length) {
      box.replaceChildren(
        ...pumps().map((_, pump) =>
          h("label", {}, h("input", { type: "checkbox", value: pump, checked: true, "data-testid": `clean-${pump}` }), " ", h("span", {}))
        )
      );
    }
    [...box.querySelectorAll("span")].forEach((span, pump) => (span.textContent = nameOf(pump)));
  }

  $("clean").addEventListener("submit", (event) => {
    event.preventDefault();
    const seconds = Number($("clean-s").value);
    const boxes = [...$("clean-pumps").querySelectorAll("input")];
    const chosen = boxes.filter((b) => b.checked).map((b) => Number(b.value));
    if (!(seconds > 0)) return toast("clean: enter how many seconds each pump runs, more than 0");
    if (!chosen.length) return toast("clean: tick at least one pump");
    const data = chosen.length === boxes.length ? { seconds } : { seconds, pumps: chosen };
    pour("clean", data, Object.fromEntries(chosen.map((p) => [p, seconds])));
  });

  // ---- the calibration wizard --------------------------------------------------------------

  const wizardPump = () => Number($("cal-pump").value || 0);

  function wizardNote(text) {
    $("cal-note").textContent = text;
  }

  function renderWizard() {
    const select = $("cal-pump");
    if (select.options.length !== pumps().length) {
      select.replaceChildren(...pumps().map((_, pump) => h("option", { value: pump })));
    }
    [...select.options].forEach((option, pump) => (option.textContent = nameOf(pump)));
    for (const id of ["cal-run1", "cal-run2"]) $(id).disabled = busy() || !has("calibrate");
    for (const id of ["cal-save1", "cal-save2"]) $(id).disabled = !has("set_flow");
    $("cal-reset").hidden = !has("reset_calibration");
    renderFit();
  }

  function calibrate(run) {
    const pump = wizardPump();
    const seconds = Number($(`cal-s${run}`).value);
    if (!(seconds > 0)) return wizardNote("enter how long the pump runs, in seconds, more than 0");
    const first = (ui.wizard.runs[pump] || [])[0];
    if (run === 2 && first && Math.abs(first.seconds - seconds) < 1e-6) {
      return wizardNote(`the second run must be longer or shorter than the first (${fmt(first.seconds, 2)} s): that is what separates flow from start-up time`);
    }
    ui.wizard.running = { pump, run, seconds, simBefore: pumps()[pump].sim_poured_ml };
    wizardNote(`${nameOf(pump)} runs ${fmt(seconds, 2)} s…`);
    pour("calibrate", { pump, seconds }, { [pump]: seconds }, wizardFailed);
  }

  function wizardFailed(msg) {
    ui.wizard.running = null;
    wizardNote(msg);
  }

  /** A calibration run ended: the server's calibration_seconds is how long it really ran. With
   * simulated pumps the server also tells what the run really poured (sim_poured_ml). */
  function wizardRan() {
    const { pump, run, seconds, simBefore } = ui.wizard.running;
    ui.wizard.running = null;
    const p = pumps()[pump];
    const ran = p.calibration_seconds;
    ui.wizard.ran = { pump, run, seconds: ran === null ? seconds : ran };
    const sim = p.sim_poured_ml !== undefined && simBefore !== undefined ? ` (simulated pumps: ${fmt(p.sim_poured_ml - simBefore)} ml came out)` : "";
    wizardNote(`${nameOf(pump)} ran ${fmt(ui.wizard.ran.seconds, 2)} s: measure the jug and enter the millilitres, then Save.${sim}`);
    $(`cal-ml${run}`).focus();
  }

  function saveRun(run) {
    const pump = wizardPump();
    const ml = Number($(`cal-ml${run}`).value);
    const ran = ui.wizard.ran;
    if (!ran || ran.pump !== pump || ran.run !== run) return wizardNote(`run ${nameOf(pump)} first (Run), then enter what came out`);
    if (!(ml > 0)) return wizardNote("enter the millilitres that came out, more than 0");
    const runs = (ui.wizard.runs[pump] = ui.wizard.runs[pump] || []);
    runs[run - 1] = { seconds: ran.seconds, ml };
    wizardNote("Saving…");
    send("set_flow", { pump, ml }, (msg) => wizardNote(msg), () =>
      wizardNote(run === 1 ? "Saved. Now a second run of another length." : "Saved: the fit is below."));
  }

  /** The pump's law as the server fitted it to its points, each point with its residual. */
  function renderFit() {
    const pump = wizardPump();
    const p = pumps()[pump];
    const box = $("cal-fit");
    if (!p) return box.replaceChildren();
    const points = p.points;
    if (!points.length) {
      return box.replaceChildren(h("p", {}, `${nameOf(pump)} pours with the config's flow, `,
        h("strong", {}, `${fmt(p.flow_ml_s)} ml/s`), ", and no start-up time: not calibrated yet."));
    }
    const lengths = new Set(points.map((q) => q.seconds)).size;
    box.replaceChildren(
      h("p", { "data-testid": "cal-line" }, `${nameOf(pump)}: fit of ${points.length} run${points.length > 1 ? "s" : ""}: `,
        h("strong", {}, `${fmt(p.flow_ml_s)} ml/s`), `, start-up ${fmt(p.dead_s, 2)} s before liquid comes out.`,
        lengths < 2 ? " A second run of another length separates flow from start-up time." : ""),
      h("table", { class: "points", "data-testid": "cal-points" },
        h("thead", {}, h("tr", {}, h("th", {}, "run"), h("th", {}, "seconds"), h("th", {}, "ml"), h("th", {}, "residual ml"))),
        h("tbody", {}, points.map((q, i) =>
          h("tr", { "data-testid": "cal-point" }, h("td", {}, String(i + 1)), h("td", {}, fmt(q.seconds, 2)), h("td", {}, fmt(q.ml)),
            h("td", { class: Math.abs(q.residual_ml) > 1 ? "far" : "" }, `${q.residual_ml >= 0 ? "+" : ""}${fmt(q.residual_ml, 2)}`))))),
      drawFit(points, { flow: p.flow_ml_s, dead: p.dead_s })
    );
  }

  function drawFit(points, line) {
    const W = 320, H = 160, pad = 30;
    const maxT = Math.max(...points.map((q) => q.seconds)) * 1.15;
    const maxM = Math.max(...points.map((q) => q.ml)) * 1.15;
    const x = (t) => pad + ((W - pad - 8) * t) / maxT;
    const y = (m) => H - pad - ((H - pad - 8) * m) / maxM;
    const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, class: "fitplot", role: "img", "aria-label": "ml against seconds" });
    svg.append(
      h("svg:line", { x1: pad, x2: W - 8, y1: H - pad, y2: H - pad, class: "axis" }),
      h("svg:line", { x1: pad, x2: pad, y1: 8, y2: H - pad, class: "axis" }),
      h("svg:text", { x: W - 8, y: H - 8, class: "tick end" }, `${fmt(maxT, 1)} s`),
      h("svg:text", { x: pad + 4, y: 16, class: "tick" }, `${fmt(maxM, 0)} ml`)
    );
    const t0 = Math.max(0, line.dead);
    svg.append(h("svg:line", { x1: x(t0), y1: y(line.flow * (t0 - line.dead)), x2: x(maxT), y2: y(line.flow * (maxT - line.dead)), class: "fitline" }));
    for (const q of points) svg.append(h("svg:circle", { cx: x(q.seconds), cy: y(q.ml), r: 5, class: "point" }));
    return svg;
  }

  $("cal-run1").addEventListener("click", () => calibrate(1));
  $("cal-run2").addEventListener("click", () => calibrate(2));
  $("cal-save1").addEventListener("click", () => saveRun(1));
  $("cal-save2").addEventListener("click", () => saveRun(2));
  $("cal-pump").addEventListener("change", renderWizard);
  $("cal-reset").addEventListener("click", () => {
    const pump = wizardPump();
    delete ui.wizard.runs[pump];
    send("reset_calibration", { pump }, (msg) => wizardNote(msg), () =>
      wizardNote(`${nameOf(pump)}'s calibration is forgotten: it pours with the config's flow again.`));
  });

  // ---- token, stop, tabs, messages ---------------------------------------------------------

  /** Not modal: STOP, the state and the history need no token and stay in reach. */
  function askToken(msg) {
    const dialog = $("token-dialog");
    $("token-note").textContent = ui.tokenTried ? msg : "";
    if (!dialog.open) dialog.show();
    $("token").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    hello($("token").value);
  });
  $("token-later").addEventListener("click", () => $("token-dialog").close());

  $("stop").addEventListener("click", () => send("stop"));

  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tab")) other.setAttribute("aria-selected", String(other === tab));
      for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== `tab-${tab.dataset.tab}`;
      if (tab.dataset.tab === "timeline") renderTimelines(); // at the width it has now
    });
  }

  function toast(msg, kind = "error") {
    const box = $("toast");
    box.textContent = msg;
    box.className = `toast ${kind}`;
    box.hidden = false;
    clearTimeout(ui.toastTimer);
    ui.toastTimer = setTimeout(() => (box.hidden = true), 8000);
  }

  $("toast").addEventListener("click", () => ($("toast").hidden = true));

  connect();
})();
