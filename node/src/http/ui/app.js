// The admin UI of a Stampede node: one page, hash routing (#cluster, #destinations, #queues,
// #sessions, #publish), polling the node's JSON API (/api/v1, see docs/admin.md) every 2 s.
// Tables are updated in place, row by row and cell by cell, so a live page does not flicker.
// The admin token is asked for when the API answers 401, kept in sessionStorage, and may come
// in the address as #token=... (removed from the address bar at once).
"use strict";

(() => {
  const POLL_MS = 2000;
  /** Samples kept for the sparklines: five minutes at one every 2 s. */
  const HISTORY = 150;
  /** The shortest time a sparkline's width stands for, in samples: one minute. */
  const MIN_SPAN = 30;
  const TOKEN_KEY = "stampede-admin-token";
  const PAGES = ["cluster", "destinations", "queues", "sessions", "publish"];
  const SESSIONS_PER_PAGE = 50;
  const CONFIRM_MS = 4000;
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat();
  const num = (v) => (typeof v === "number" ? numbers.format(v) : "–");
  const rate = (v) => (v == null ? "–" : v >= 100 ? numbers.format(Math.round(v)) : v.toFixed(1));

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let authNeeded = false;
  let page = "cluster";
  let timer = null;
  let running = null;
  let again = false;

  // === the API ===

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** One call of the JSON API; throws AuthError on 401, ApiError on any other failure status. */
  async function api(path, method = "GET", body = undefined) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status === 401) throw new AuthError("401");
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const why = data && typeof data.error === "string" ? data.error : response.statusText;
      throw new ApiError(response.status, `${method} ${path.split("?")[0]}: ${response.status} ${why}`);
    }
    return data;
  }

  const query = (params) => {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") search.set(name, String(value));
    }
    const text = search.toString();
    return text ? "?" + text : "";
  };

  // === DOM helpers ===

  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  function toggleClass(element, name, on) {
    if (element.classList.contains(name) !== on) element.classList.toggle(name, on);
  }

  function cell(tr, className = "") {
    const td = document.createElement("td");
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function button(text, className, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    b.addEventListener("click", onClick);
    return b;
  }

  /**
   * Brings `tbody` to one row per item, in order, keyed by `key(item)`: rows are made once by
   * `create` (which sets the row's data attributes) and refreshed by `update`; rows whose key is
   * gone are removed. With no items, one row saying `empty`.
   */
  function sync(tbody, items, key, create, update, empty) {
    const rows = new Map();
    for (const tr of [...tbody.rows]) {
      if (tr.dataset.key !== undefined) rows.set(tr.dataset.key, tr);
      else if (items.length || tr.textContent !== empty) tr.remove();
    }
    let previous = null;
    for (const item of items) {
      const k = key(item);
      let tr = rows.get(k);
      if (tr) rows.delete(k);
      else {
        tr = create(item);
        tr.dataset.key = k;
      }
      update(tr, item);
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== tr) tbody.insertBefore(tr, wanted);
      previous = tr;
    }
    for (const tr of rows.values()) tr.remove();
    if (!items.length && !tbody.rows.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, "empty");
      td.colSpan = tbody.parentElement.tHead.rows[0].cells.length;
      td.textContent = empty;
      tbody.appendChild(tr);
    }
  }

  /** A two-step button: the first click arms it for a few seconds, the second runs `action`. */
  function confirming(text, className, confirmText, action) {
    let armed = null;
    const b = button(text, className, async () => {
      if (!armed) {
        b.classList.add("confirming");
        b.textContent = confirmText;
        armed = setTimeout(disarm, CONFIRM_MS);
        return;
      }
      disarm();
      b.disabled = true;
      try {
        await action();
      } catch (e) {
        report(e, "action");
      } finally {
        b.disabled = false;
      }
    });
    function disarm() {
      clearTimeout(armed);
      armed = null;
      b.classList.remove("confirming");
      b.textContent = text;
    }
    return b;
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  // === messages ===

  let bannerKind = null;
  let bannerTimer = null;

  /** Shows `text` above the page; "poll" messages go when a poll succeeds, "action" ones after 8 s. */
  function showBanner(text, kind) {
    const banner = $("banner");
    setText(banner, text);
    banner.hidden = false;
    bannerKind = kind;
    clearTimeout(bannerTimer);
    if (kind === "action") bannerTimer = setTimeout(() => clearBanner("action"), 8000);
  }

  function clearBanner(kind) {
    if (bannerKind === kind) {
      $("banner").hidden = true;
      bannerKind = null;
    }
  }

  function report(error, kind) {
    if (error instanceof AuthError) {
      askForToken();
    } else if (error instanceof ApiError) {
      showBanner(error.message, kind);
    } else {
      showBanner(`The node does not answer (${error.message}); retrying every ${POLL_MS / 1000} s.`, kind);
      const live = $("live");
      live.className = "live bad";
      setText(live, "unreachable");
    }
  }

  // === the token ===

  function askForToken() {
    authNeeded = true;
    $("auth").hidden = false;
    document.querySelector("main").hidden = true;
    $("banner").hidden = true;
    setText(
      $("auth-message"),
      token
        ? "The admin token was refused (401): enter the token this node was started with (admin-token)."
        : "This node needs its admin token (401): enter the token it was started with (admin-token)."
    );
    $("token-input").focus();
  }

  function useToken(value) {
    token = value;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    authNeeded = false;
    $("auth").hidden = true;
    document.querySelector("main").hidden = false;
    refresh();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    const value = input.value.trim();
    input.value = "";
    useToken(value);
  });
  $("token-forget").addEventListener("click", () => {
    $("token-input").value = "";
    useToken("");
  });
  $("token-button").addEventListener("click", () => {
    $("auth").hidden = false;
    setText($("auth-message"), "Enter the admin token of this node; it replaces the one in use.");
    $("token-input").focus();
  });

  // === routing ===

  /** Reads the page (and a `token=` parameter, which it removes from the address) from the hash. */
  function route() {
    const parts = location.hash.replace(/^#/, "").split("&").filter(Boolean);
    let wanted = null;
    let tokenParam = null;
    for (const part of parts) {
      const eq = part.indexOf("=");
      if (eq < 0) wanted = part;
      else if (part.slice(0, eq) === "token") tokenParam = decodeURIComponent(part.slice(eq + 1));
    }
    page = PAGES.includes(wanted) ? wanted : "cluster";
    if (tokenParam !== null) {
      history.replaceState(null, "", location.pathname + location.search + "#" + page);
      token = tokenParam;
      sessionStorage.setItem(TOKEN_KEY, token);
      authNeeded = false;
      $("auth").hidden = true;
      document.querySelector("main").hidden = false;
    }
    for (const section of document.querySelectorAll("section.page")) {
      section.hidden = section.dataset.page !== page;
    }
    for (const link of document.querySelectorAll("#nav a")) {
      toggleClass(link, "active", link.dataset.page === page);
    }
    document.title = `Stampede · ${page[0].toUpperCase()}${page.slice(1)}`;
  }

  window.addEventListener("hashchange", () => {
    route();
    refresh();
  });

  // === polling ===

  /** Polls now (or right after the poll in flight), then every POLL_MS. */
  function refresh() {
    if (running) {
      again = true;
      return;
    }
    running = poll().finally(() => {
      running = null;
      if (again) {
        again = false;
        refresh();
      }
    });
  }

  async function poll() {
    clearTimeout(timer);
    if (authNeeded) return;
    try {
      await Promise.all([loadOverview(), LOADERS[page]()]);
      clearBanner("poll");
      const live = $("live");
      live.className = "live ok";
      setText(live, new Date().toLocaleTimeString([], { hour12: false }));
    } catch (e) {
      report(e, "poll");
    }
    if (!authNeeded) timer = setTimeout(refresh, POLL_MS);
  }

  // === cluster ===

  /** Per node: the last counters seen, and the rates computed from them (oldest first). */
  const samples = new Map();
  const totals = { published: [], delivered: [] };

  function push(list, value) {
    list.push(value);
    if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
  }

  /** When the rates were last sampled (browser time). */
  let sampledAt = 0;

  /**
   * Turns the nodes' counters into rates, once per POLL_MS (a poll run early, after a click,
   * samples nothing). A node's counters are a snapshot taken at its `last_seen_ms` (its
   * heartbeat, on Redis), so that is the time base; a node whose heartbeat has not moved adds
   * nothing, and one whose counters went back (it restarted) starts over.
   */
  function sample(nodes) {
    const now = Date.now();
    if (now - sampledAt < POLL_MS * 0.75) return;
    sampledAt = now;
    let published = 0;
    let delivered = 0;
    let any = false;
    for (const node of nodes) {
      const at = node.last_seen_ms;
      if (typeof node.published !== "number" || typeof node.delivered !== "number" || !at) continue;
      let s = samples.get(node.node_id);
      if (!s) {
        s = { at: null, published: 0, delivered: 0, rates: { published: [], delivered: [] } };
        samples.set(node.node_id, s);
      }
      if (s.at === null || at > s.at) {
        if (s.at !== null && node.published >= s.published && node.delivered >= s.delivered) {
          const seconds = (at - s.at) / 1000;
          push(s.rates.published, (node.published - s.published) / seconds);
          push(s.rates.delivered, (node.delivered - s.delivered) / seconds);
        }
        Object.assign(s, { at, published: node.published, delivered: node.delivered });
      }
      if (s.rates.published.length) {
        published += s.rates.published[s.rates.published.length - 1];
        delivered += s.rates.delivered[s.rates.delivered.length - 1];
        any = true;
      }
    }
    const live = new Set(nodes.map((n) => n.node_id));
    for (const id of samples.keys()) if (!live.has(id)) samples.delete(id);
    if (any) {
      push(totals.published, published);
      push(totals.delivered, delivered);
    }
  }

  /**
   * Draws `values` (one every POLL_MS, the newest at the right edge) into an SVG of viewBox
   * 0 0 150 30, scaled to their peak; the x axis spans the samples there are, at least a minute.
   */
  function sparkline(svg, values) {
    const [width, height] = [150, 30];
    let area = svg.querySelector("polygon");
    let line = svg.querySelector("polyline");
    if (!line) {
      area = document.createElementNS(SVG, "polygon");
      line = document.createElementNS(SVG, "polyline");
      svg.append(area, line);
    }
    if (!values.length) {
      line.setAttribute("points", "");
      area.setAttribute("points", "");
      return;
    }
    const top = Math.max(...values);
    const step = width / (Math.max(values.length, MIN_SPAN) - 1);
    const start = width - (values.length - 1) * step;
    const points = values.map((v, i) => {
      const y = top > 0 ? height - 1 - (v / top) * (height - 3) : height - 1;
      return `${(start + i * step).toFixed(1)},${y.toFixed(1)}`;
    });
    line.setAttribute("points", points.join(" "));
    area.setAttribute("points", `${start.toFixed(1)},${height} ${points.join(" ")} ${width},${height}`);
    svg.dataset.samples = String(values.length);
    svg.setAttribute("aria-label", `peak ${rate(top)} /s`);
  }

  function sparkSvg() {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 150 30");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "spark");
    return svg;
  }

  let overview = null;

  async function loadOverview() {
    const data = await api("/api/v1/overview");
    overview = data;
    sample(data.nodes);
    setText($("node-name"), `${data.node_id} · ${data.engine}`);
    const badge = $("readiness");
    const [text, tone] = data.draining ? ["Draining", "warn"] : data.ready ? ["Ready", "ok"] : ["Not ready", "bad"];
    setText(badge, text);
    badge.className = `badge ${tone}`;
    if (page === "cluster") renderCluster(data);
  }

  function renderCluster(data) {
    const sum = (field) => data.nodes.reduce((total, n) => total + (n[field] || 0), 0);
    setText($("t-nodes"), num(data.nodes.length));
    setText($("t-connections"), num(sum("connections")));
    setText($("t-subscriptions"), num(sum("subscriptions")));
    const last = (list) => (list.length ? list[list.length - 1] : null);
    setText($("t-published"), rate(last(totals.published)));
    setText($("t-delivered"), rate(last(totals.delivered)));
    sparkline($("spark-published"), totals.published);
    sparkline($("spark-delivered"), totals.delivered);
    const span = (list) =>
      list.length > 1 ? `· last ${ago((list.length - 1) * POLL_MS)} · peak ${rate(Math.max(...list))} /s` : "· sampling…";
    setText($("c-published"), span(totals.published));
    setText($("c-delivered"), span(totals.delivered));
    const now = Date.now();
    const nodes = [...data.nodes].sort((a, b) => a.node_id.localeCompare(b.node_id));
    sync(
      $("nodes").tBodies[0],
      nodes,
      (n) => n.node_id,
      (n) => {
        const tr = document.createElement("tr");
        tr.dataset.nodeId = n.node_id;
        const name = cell(tr, "mono node-id");
        name.textContent = n.node_id;
        if (n.node_id === data.node_id) {
          const here = document.createElement("span");
          here.className = "here";
          here.textContent = "this node";
          name.appendChild(here);
        }
        cell(tr, "num connections");
        cell(tr, "num subscriptions");
        cell(tr, "num published");
        cell(tr, "spark-cell").appendChild(sparkSvg());
        cell(tr, "num delivered");
        cell(tr, "spark-cell").appendChild(sparkSvg());
        cell(tr, "num last-seen");
        return tr;
      },
      (tr, n) => {
        const s = samples.get(n.node_id);
        const rates = s ? s.rates : { published: [], delivered: [] };
        const c = tr.cells;
        setText(c[1], num(n.connections));
        setText(c[2], num(n.subscriptions));
        setText(c[3], rate(last(rates.published)));
        sparkline(c[4].firstChild, rates.published);
        setText(c[5], rate(last(rates.delivered)));
        sparkline(c[6].firstChild, rates.delivered);
        const seen = now - n.last_seen_ms;
        setText(c[7], n.last_seen_ms ? ago(seen) + " ago" : "–");
        toggleClass(tr, "stale", seen > 10000);
      },
      "No node has registered."
    );
  }

  async function loadClusterExtras() {
    const [queues, destinations] = await Promise.all([api("/api/v1/queues"), api("/api/v1/destinations")]);
    setText($("t-queued"), num(queues.queues.reduce((total, q) => total + q.depth, 0)));
    const topQueues = [...queues.queues].sort((a, b) => b.depth - a.depth || a.queue.localeCompare(b.queue)).slice(0, 8);
    sync(
      $("cluster-queues").tBodies[0],
      topQueues,
      (q) => q.queue,
      (q) => {
        const tr = document.createElement("tr");
        tr.dataset.queue = q.queue;
        cell(tr, "mono").textContent = q.queue;
        cell(tr, "num depth");
        cell(tr, "num");
        cell(tr, "num");
        return tr;
      },
      (tr, q) => {
        setText(tr.cells[1], num(q.depth));
        setText(tr.cells[2], num(q.consumers));
        setText(tr.cells[3], num(q.unacked));
      },
      "No queue."
    );
    const busiest = [...destinations.destinations]
      .sort((a, b) => b.subscribers - a.subscribers || a.destination.localeCompare(b.destination))
      .slice(0, 8);
    sync(
      $("cluster-destinations").tBodies[0],
      busiest,
      (d) => d.destination,
      (d) => {
        const tr = document.createElement("tr");
        tr.dataset.destination = d.destination;
        cell(tr, "mono").textContent = d.destination;
        cell(tr, "num");
        cell(tr, "num");
        return tr;
      },
      (tr, d) => {
        setText(tr.cells[1], num(d.subscribers));
        setText(tr.cells[2], num(d.users));
      },
      "No subscriptions."
    );
  }

  // === destinations ===

  let presenceOf = null;

  async function loadDestinations() {
    const data = await api("/api/v1/destinations");
    const filter = $("destination-filter").value.trim().toLowerCase();
    const shown = data.destinations
      .filter((d) => !filter || d.destination.toLowerCase().includes(filter))
      .sort((a, b) => a.destination.localeCompare(b.destination));
    missing($("destinations-missing"), data.missing_nodes);
    setText($("destinations-summary"), `${num(data.destinations.length)} destinations with subscribers`);
    sync(
      $("destinations").tBodies[0],
      shown,
      (d) => d.destination,
      (d) => {
        const tr = document.createElement("tr");
        tr.dataset.destination = d.destination;
        cell(tr, "mono").textContent = d.destination;
        cell(tr, "num subscribers");
        cell(tr, "num users");
        cell(tr, "presence");
        tr.addEventListener("click", () => {
          if (tr.dataset.presence !== "true") return;
          presenceOf = d.destination;
          refresh();
        });
        return tr;
      },
      (tr, d) => {
        setText(tr.cells[1], num(d.subscribers));
        setText(tr.cells[2], num(d.users));
        setText(tr.cells[3], d.presence ? "on · members ›" : "off");
        tr.dataset.presence = String(Boolean(d.presence));
        toggleClass(tr, "clickable", Boolean(d.presence));
        toggleClass(tr, "selected", d.destination === presenceOf);
      },
      filter ? "No destination matches." : "No subscriptions."
    );
    await loadPresence();
  }

  async function loadPresence() {
    const panel = $("presence");
    if (!presenceOf) {
      panel.hidden = true;
      return;
    }
    const data = await api("/api/v1/presence" + query({ destination: presenceOf }));
    panel.hidden = false;
    setText($("presence-destination"), `${data.destination} (${num(data.users)} users, ${num(data.subscribers)} subscribers)`);
    sync(
      $("presence-members").tBodies[0],
      data.members || [],
      (m) => `${m.session}\u0000${m.user}`,
      (m) => {
        const tr = document.createElement("tr");
        tr.dataset.session = m.session;
        cell(tr).textContent = m.user;
        cell(tr, "mono").textContent = m.session;
        cell(tr, "mono").textContent = m.node;
        return tr;
      },
      () => {},
      data.members ? "Nobody is subscribed." : "Presence is not configured for this destination."
    );
  }

  $("presence-close").addEventListener("click", () => {
    presenceOf = null;
    $("presence").hidden = true;
    refresh();
  });
  $("destination-filter").addEventListener("input", () => refresh());

  function missing(element, nodes) {
    element.hidden = !(nodes && nodes.length);
    if (nodes && nodes.length) setText(element, `Incomplete: no answer from ${nodes.join(", ")}`);
  }

  // === queues ===

  async function loadQueues() {
    const data = await api("/api/v1/queues");
    const filter = $("queue-filter").value.trim().toLowerCase();
    const queues = data.queues
      .filter((q) => !filter || q.queue.toLowerCase().includes(filter))
      .sort((a, b) => a.queue.localeCompare(b.queue));
    const total = (field) => num(data.queues.reduce((sum, q) => sum + q[field], 0));
    setText(
      $("queues-summary"),
      `${num(data.queues.length)} queues · ${total("depth")} ready · ${total("unacked")} unacked · ${total("dead_letters")} dead letters`
    );
    sync(
      $("queues").tBodies[0],
      queues,
      (q) => q.queue,
      (q) => {
        const tr = document.createElement("tr");
        tr.dataset.queue = q.queue;
        cell(tr, "mono").textContent = q.queue;
        cell(tr, "num depth");
        cell(tr, "num consumers");
        cell(tr, "num unacked");
        cell(tr, "num dead-letters");
        cell(tr, "num actions").appendChild(
          confirming("Purge", "purge", "Purge all?", async () => {
            const result = await api("/api/v1/queues/purge", "POST", { queue: q.queue });
            showBanner(`Purged ${num(result.purged)} messages from ${q.queue}.`, "action");
            refresh();
          })
        );
        return tr;
      },
      (tr, q) => {
        setText(tr.cells[1], num(q.depth));
        setText(tr.cells[2], num(q.consumers));
        setText(tr.cells[3], num(q.unacked));
        setText(tr.cells[4], num(q.dead_letters));
        toggleClass(tr.cells[4], "nonzero", q.dead_letters > 0);
        tr.dataset.depth = String(q.depth);
      },
      filter ? "No queue matches." : "No queue."
    );
  }

  $("queue-filter").addEventListener("input", () => refresh());

  // === sessions ===

  /** The cursors of the pages visited: [null, cursor of page 2, ...]. */
  let cursors = [null];
  let nextCursor = null;

  async function loadSessions() {
    const user = $("session-user").value.trim();
    const cursor = cursors[cursors.length - 1];
    const data = await api("/api/v1/sessions" + query({ user, limit: SESSIONS_PER_PAGE, cursor }));
    nextCursor = data.next_cursor;
    $("sessions-prev").disabled = cursors.length === 1;
    $("sessions-next").disabled = !nextCursor;
    setText($("sessions-page"), `page ${cursors.length}`);
    const all = $("disconnect-user");
    all.hidden = !user;
    if (user && all.dataset.user !== user) {
      all.dataset.user = user;
      all.textContent = `Disconnect every session of ${user}`;
    }
    missing($("sessions-missing"), data.missing_nodes);
    const now = Date.now();
    sync(
      $("sessions").tBodies[0],
      data.sessions,
      (s) => s.session,
      (s) => {
        const tr = document.createElement("tr");
        tr.dataset.session = s.session;
        cell(tr, "mono session-id").textContent = s.session;
        cell(tr, "user");
        cell(tr, "mono");
        cell(tr);
        cell(tr, "mono");
        cell(tr);
        cell(tr, "subs");
        cell(tr, "num actions").appendChild(
          confirming("Disconnect", "disconnect", "Confirm", async () => {
            const reason = $("disconnect-reason").value.trim() || "disconnected by an operator";
            await api(`/api/v1/sessions/${encodeURIComponent(s.session)}/disconnect`, "POST", { reason });
            tr.classList.add("stale");
            refresh();
          })
        );
        return tr;
      },
      (tr, s) => {
        const c = tr.cells;
        setText(c[1], s.user === null || s.user === undefined ? "anonymous" : s.user);
        toggleClass(c[1], "muted", s.user === null || s.user === undefined);
        setText(c[2], s.node);
        setText(c[3], s.transport);
        setText(c[4], s.remote);
        setText(c[5], ago(now - s.connected_ms));
        c[5].title = new Date(s.connected_ms).toLocaleString();
        const subscriptions = [...s.subscriptions].sort(
          (a, b) => a.destination.localeCompare(b.destination) || a.id.localeCompare(b.id)
        );
        const signature = JSON.stringify(subscriptions);
        if (c[6].dataset.signature !== signature) {
          c[6].dataset.signature = signature;
          c[6].replaceChildren(...subscriptions.map((sub) => chip(s.session, sub)));
        }
      },
      user ? `No session of ${user}.` : "No session."
    );
  }

  function chip(session, sub) {
    const span = document.createElement("span");
    span.className = "chip mono";
    span.dataset.destination = sub.destination;
    span.title = `subscription ${sub.id}`;
    span.textContent = sub.destination;
    if (sub.ack && sub.ack !== "auto") {
      const ack = document.createElement("span");
      ack.className = "ack";
      ack.textContent = sub.ack;
      span.appendChild(ack);
    }
    const drop = button("×", "quiet unsubscribe", async () => {
      try {
        await api(`/api/v1/sessions/${encodeURIComponent(session)}/unsubscribe`, "POST", {
          destination: sub.destination,
        });
        refresh();
      } catch (e) {
        report(e, "action");
      }
    });
    drop.title = `Unsubscribe this session from ${sub.destination}`;
    span.appendChild(drop);
    return span;
  }

  let userTimer = null;
  $("session-user").addEventListener("input", () => {
    clearTimeout(userTimer);
    userTimer = setTimeout(() => {
      cursors = [null];
      refresh();
    }, 250);
  });
  $("sessions-next").addEventListener("click", () => {
    if (nextCursor) {
      cursors.push(nextCursor);
      refresh();
    }
  });
  $("sessions-prev").addEventListener("click", () => {
    if (cursors.length > 1) {
      cursors.pop();
      refresh();
    }
  });
  $("disconnect-user").addEventListener("click", async (event) => {
    const b = event.currentTarget;
    const user = b.dataset.user;
    if (!b.classList.contains("confirming")) {
      b.classList.add("confirming");
      setTimeout(() => b.classList.remove("confirming"), CONFIRM_MS);
      return;
    }
    b.classList.remove("confirming");
    const reason = $("disconnect-reason").value.trim() || "disconnected by an operator";
    try {
      const result = await api(`/api/v1/users/${encodeURIComponent(user)}/disconnect`, "POST", { reason });
      showBanner(`Disconnected ${num(result.disconnected)} sessions of ${user}.`, "action");
      refresh();
    } catch (e) {
      report(e, "action");
    }
  });

  // === publish ===

  $("publish-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = $("publish-result");
    const headers = {};
    for (const line of $("publish-headers").value.split("\n")) {
      if (!line.trim()) continue;
      const colon = line.indexOf(":");
      if (colon <= 0) {
        result.className = "bad";
        setText(result, `Not a header (name: value): ${line}`);
        return;
      }
      headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
    }
    const request = { destination: $("publish-destination").value.trim(), headers, body: $("publish-body").value };
    const session = $("publish-session").value.trim();
    if (session) request.session = session;
    try {
      const answer = await api("/api/v1/publish", "POST", request);
      result.className = "ok";
      const offset = answer && typeof answer.offset === "number" ? ` at offset ${answer.offset}` : "";
      setText(result, `Published to ${request.destination}${offset} (${new Date().toLocaleTimeString()}).`);
    } catch (e) {
      if (e instanceof AuthError) return askForToken();
      result.className = "bad";
      setText(result, e.message);
    }
  });

  const LOADERS = {
    cluster: loadClusterExtras,
    destinations: loadDestinations,
    queues: loadQueues,
    sessions: loadSessions,
    publish: async () => {},
  };

  route();
  refresh();
})();
