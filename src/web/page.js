// autopilot's pages: live updates from /v1/events, relative times, operator actions through
// the API with the user's bearer token. No framework, nothing fetched from elsewhere.
(() => {
  "use strict";
  const KEY = "autopilot-token";
  const token = () => sessionStorage.getItem(KEY) || "";
  const $ = (id) => document.getElementById(id);

  // "3 min ago" in place of every absolute time (which stays in the tooltip)
  function relativeTimes(root) {
    const now = Date.now();
    root.querySelectorAll("time[data-rel]").forEach((t) => {
      const s = Math.round((now - Date.parse(t.getAttribute("datetime"))) / 1000);
      if (Number.isNaN(s)) return;
      t.textContent = s < 60 ? `${Math.max(s, 0)} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ago`
        : s < 172800 ? `${Math.floor(s / 3600)} h ago` : `${Math.floor(s / 86400)} days ago`;
    });
  }

  // sign in: the server checks the token and sets a session cookie scripts cannot read (reads
  // only); the token itself stays in this tab (sessionStorage), for actions
  const signIn = $("sign-in-form");
  if (signIn) {
    signIn.addEventListener("submit", async (e) => {
      e.preventDefault();
      const t = signIn.elements.token.value.trim();
      if (!t) return;
      const r = await fetch("/v1/session", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: t }),
        credentials: "same-origin",
      });
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        const err = $("sign-in-error");
        if (err) err.textContent = body.message || `refused (${r.status})`;
        return;
      }
      sessionStorage.setItem(KEY, t);
      location.href = location.pathname === "/sign-in" ? "/" : location.href;
    });
  }
  const signOut = $("sign-out");
  if (signOut) {
    signOut.addEventListener("click", async () => {
      sessionStorage.removeItem(KEY);
      await fetch("/v1/session", { method: "DELETE", credentials: "same-origin" });
      location.href = "/sign-in";
    });
  }

  // the page's live part, fetched anew and swapped in place (open <details> stay open)
  const live = $("live");
  let refreshing = null;
  async function refresh() {
    if (!live) return;
    const r = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.getElementById("live");
    if (!fresh) return;
    const open = new Set([...live.querySelectorAll("details[id]")].filter((d) => d.open).map((d) => d.id));
    const closed = new Set([...live.querySelectorAll("details[id]")].filter((d) => !d.open).map((d) => d.id));
    live.replaceChildren(...fresh.childNodes);
    live.querySelectorAll("details[id]").forEach((d) => {
      if (open.has(d.id)) d.open = true;
      if (closed.has(d.id)) d.open = false;
    });
    relativeTimes(live);
    const stamp = new Date().toLocaleTimeString();
    live.dataset.updated = String(Number(live.dataset.updated || 0) + 1);
    $("updated").textContent = `Live: updated at ${stamp}.`;
  }
  function soon() {
    clearTimeout(refreshing);
    refreshing = setTimeout(refresh, 200);
  }
  if (live && window.EventSource) {
    const events = new EventSource(live.dataset.events, { withCredentials: true });
    events.addEventListener("transition", soon);
    events.addEventListener("change", soon);
    events.addEventListener("ready", () => { document.body.dataset.live = "on"; });
    events.onerror = () => { $("updated").textContent = "Live updates lost; reconnecting…"; };
  }

  // operator actions: reason and confirmation, then the API with the bearer token
  const dialog = $("act-dialog");
  const form = $("act-form");
  let asked = null;
  document.addEventListener("click", (e) => {
    const b = e.target.closest("button.act");
    if (!b || !dialog) return;
    asked = { ...b.dataset };
    $("act-title").textContent = `${asked.label}?`;
    $("act-what").textContent = asked.release ? `Release ${asked.release}.` : "";
    $("act-reason").value = "";
    $("act-error").textContent = "";
    $("act-token-row").hidden = Boolean(token());
    dialog.showModal();
    $("act-reason").focus();
  });
  $("act-cancel")?.addEventListener("click", () => dialog.close());
  form?.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!asked) return;
    const reason = $("act-reason").value.trim();
    const t = token() || $("act-token").value.trim();
    if (!reason) { $("act-error").textContent = "Say why: the reason goes into the audit trail."; return; }
    if (!t) { $("act-error").textContent = "An operator token is needed to act."; return; }
    const body = { action: asked.action, reason };
    if (asked.action === "approve" && asked.release) body.release = asked.release;
    const key = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
    $("act-confirm").disabled = true;
    let r, answer = {};
    try {
      r = await fetch(`/v1/services/${encodeURIComponent(asked.service)}/environments/${encodeURIComponent(asked.environment)}/actions`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${t}`, "Idempotency-Key": key },
        body: JSON.stringify(body),
      });
      answer = await r.json().catch(() => ({}));
    } catch (err) {
      $("act-error").textContent = `The API cannot be reached: ${err.message}`;
      return;
    } finally {
      $("act-confirm").disabled = false;
    }
    const result = $("act-result");
    if (r.ok) {
      if (!token()) sessionStorage.setItem(KEY, t);
      dialog.close();
      result.className = "ok";
      result.textContent = `${asked.label}: ${answer.changed === false ? "already so" : "done"} (audit #${answer.audit_id}). The controller acts on it at its next look.`;
      refresh();
    } else {
      $("act-error").textContent = `${r.status}: ${answer.message || r.statusText}`;
    }
  });

  relativeTimes(document);
  setInterval(() => relativeTimes(document), 10000);
})();
