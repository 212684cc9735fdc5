/* Loket web chat widget. Embed with one tag:
 *   <script src="https://your-loket/widget.js" async></script>
 * Optional attributes: data-lang="id|en", data-title="…", data-open="true".
 * Protocol: docs/webchat.md. No external assets; text is always inserted as text, never as HTML. */
(function () {
  "use strict";
  if (window.__loketWidget) return;
  window.__loketWidget = true;
  var script = document.currentScript || (function () {
    var s = document.getElementsByTagName("script");
    for (var i = s.length - 1; i >= 0; i--) if ((s[i].src || "").indexOf("widget.js") !== -1) return s[i];
    return s[s.length - 1];
  })();
  var base = new URL(script.src, location.href);
  var lang = (script.getAttribute("data-lang") || navigator.language || "id").slice(0, 2) === "en" ? "en" : "id";
  var T = {
    id: { title: "Chat dengan kami", placeholder: "Tulis pesan…", send: "Kirim", typing: "sedang mengetik…",
          offline: "Menyambungkan ulang…", open: "Buka chat", close: "Tutup chat", error: "Pesan gagal: " },
    en: { title: "Chat with us", placeholder: "Type a message…", send: "Send", typing: "is typing…",
          offline: "Reconnecting…", open: "Open chat", close: "Close chat", error: "Message failed: " }
  }[lang];
  var title = script.getAttribute("data-title") || T.title;
  var KEY = "loket:" + base.host;
  var store = {
    get: function (k, d) { try { var v = localStorage.getItem(KEY + ":" + k); return v === null ? d : JSON.parse(v); } catch (e) { return d; } },
    set: function (k, v) { try { localStorage.setItem(KEY + ":" + k, JSON.stringify(v)); } catch (e) {} }
  };
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "c" + Date.now().toString(36) + Math.random().toString(36).slice(2, 12);
  }

  var host = document.createElement("div");
  host.id = "loket-widget";
  document.body.appendChild(host);
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var style = document.createElement("style");
  style.textContent = [
    ":host{all:initial}",
    ".btn{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:#0b7a5a;color:#fff;font:600 24px system-ui;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483000}",
    ".panel{position:fixed;right:20px;bottom:88px;width:340px;max-width:calc(100vw - 40px);height:480px;max-height:calc(100vh - 120px);background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:none;flex-direction:column;overflow:hidden;font:14px/1.4 system-ui,sans-serif;color:#1d2330;z-index:2147483000}",
    ".panel.open{display:flex}",
    ".head{background:#0b7a5a;color:#fff;padding:12px 14px;font-weight:600;display:flex;justify-content:space-between;align-items:center}",
    ".head button{background:none;border:0;color:#fff;font-size:18px;cursor:pointer}",
    ".log{flex:1;overflow-y:auto;padding:12px;background:#f4f6f8}",
    ".msg{max-width:80%;margin:4px 0;padding:8px 10px;border-radius:10px;white-space:pre-wrap;word-wrap:break-word}",
    ".customer{margin-left:auto;background:#0b7a5a;color:#fff;border-bottom-right-radius:2px}",
    ".bot,.agent,.system{background:#fff;border:1px solid #dde2e8;border-bottom-left-radius:2px}",
    ".agent{border-color:#7aa7ff}",
    ".pending{opacity:.6}",
    ".choices{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 8px}",
    ".choices button{border:1px solid #0b7a5a;background:#fff;color:#0b7a5a;border-radius:16px;padding:5px 12px;cursor:pointer;font:inherit}",
    ".choices button:hover,.choices button:focus{background:#0b7a5a;color:#fff}",
    ".status{font-size:12px;color:#6b7380;padding:2px 12px;min-height:16px}",
    "form{display:flex;border-top:1px solid #dde2e8}",
    "textarea{flex:1;border:0;padding:10px;font:inherit;resize:none;height:40px;outline:none}",
    "form button{border:0;background:#0b7a5a;color:#fff;padding:0 16px;cursor:pointer;font:inherit}"
  ].join("\n");
  root.appendChild(style);

  var btn = el("button", "btn", "\u{1F4AC}");
  btn.setAttribute("aria-label", T.open);
  btn.setAttribute("data-testid", "loket-open");
  var panel = el("div", "panel");
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", title);
  var head = el("div", "head");
  head.appendChild(el("span", "", title));
  var closeBtn = el("button", "", "\u00d7");
  closeBtn.setAttribute("aria-label", T.close);
  head.appendChild(closeBtn);
  var log = el("div", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("data-testid", "loket-log");
  var status = el("div", "status");
  var form = el("form", "");
  var input = el("textarea", "");
  input.setAttribute("placeholder", T.placeholder);
  input.setAttribute("aria-label", T.placeholder);
  input.setAttribute("data-testid", "loket-input");
  var sendBtn = el("button", "", T.send);
  sendBtn.type = "submit";
  form.appendChild(input); form.appendChild(sendBtn);
  panel.appendChild(head); panel.appendChild(log); panel.appendChild(status); panel.appendChild(form);
  root.appendChild(btn); root.appendChild(panel);

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function toggle(open) {
    panel.classList.toggle("open", open);
    store.set("open", open);
    if (open) { connect(); input.focus(); }
  }
  btn.addEventListener("click", function () { toggle(!panel.classList.contains("open")); });
  closeBtn.addEventListener("click", function () { toggle(false); });

  var ws = null, retry = 0, seen = {}, typingTimer = null, lastTypingSent = 0;
  var pending = store.get("pending", []); // [{client_id,type,text,value}] not yet acknowledged

  function render(m) {
    if (m.id && seen["m" + m.id]) return;
    if (m.id) seen["m" + m.id] = true;
    if (m.client_id) {
      var old = log.querySelector('[data-client-id="' + CSS.escape(m.client_id) + '"]');
      if (old) { old.classList.remove("pending"); return; }
    }
    var node = el("div", "msg " + (m.author || "bot"), m.text || "");
    node.setAttribute("data-author", m.author || "bot");
    if (m.client_id) node.setAttribute("data-client-id", m.client_id);
    log.appendChild(node);
    var old = log.querySelectorAll(".choices");
    for (var i = 0; i < old.length; i++) old[i].remove();
    if (m.choices && m.choices.length && m.author !== "customer") {
      var box = el("div", "choices");
      m.choices.forEach(function (c) {
        var b = el("button", "", c.label);
        b.type = "button";
        b.addEventListener("click", function () { sendFrame({ type: "choice", value: c.value, label: c.label }, c.label); });
        box.appendChild(b);
      });
      log.appendChild(box);
    }
    log.scrollTop = log.scrollHeight;
  }
  function showStatus(text) { status.textContent = text || ""; }

  function sendFrame(frame, shown) {
    frame.client_id = uuid();
    pending.push(frame);
    store.set("pending", pending);
    render({ author: "customer", text: shown, client_id: frame.client_id });
    var node = log.querySelector('[data-client-id="' + CSS.escape(frame.client_id) + '"]');
    if (node) node.classList.add("pending");
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame));
  }

  function connect() {
    if (ws && (ws.readyState === 0 || ws.readyState === 1)) return;
    var url = new URL("/webchat/ws", base);
    url.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    var token = store.get("visitor", "");
    if (token) url.searchParams.set("visitor", token);
    url.searchParams.set("lang", lang);
    ws = new WebSocket(url.toString());
    ws.onopen = function () {
      retry = 0; showStatus("");
      pending.forEach(function (f) { ws.send(JSON.stringify(f)); }); // resend: the server dedups by client_id
    };
    ws.onmessage = function (ev) {
      var f; try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (f.type === "visitor") store.set("visitor", f.token);
      else if (f.type === "history") { f.messages.forEach(render); }
      else if (f.type === "ack") {
        pending = pending.filter(function (p) { return p.client_id !== f.client_id; });
        store.set("pending", pending);
        var n = log.querySelector('[data-client-id="' + CSS.escape(f.client_id) + '"]');
        if (n) n.classList.remove("pending");
      }
      else if (f.type === "message") { showStatus(""); render(f); }
      else if (f.type === "typing") {
        showStatus((f.author === "agent" ? "Agent " : "Bot ") + T.typing);
        clearTimeout(typingTimer); typingTimer = setTimeout(function () { showStatus(""); }, 4000);
      }
      else if (f.type === "error") {
        showStatus(T.error + f.message);
      }
    };
    ws.onclose = function () {
      showStatus(T.offline);
      retry = Math.min(retry + 1, 6);
      setTimeout(connect, Math.min(15000, 300 * Math.pow(2, retry)) * (0.5 + Math.random() / 2));
    };
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    sendFrame({ type: "message", text: text }, text);
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit")); }
    else if (ws && ws.readyState === 1 && Date.now() - lastTypingSent > 2000) {
      lastTypingSent = Date.now(); ws.send(JSON.stringify({ type: "typing" }));
    }
  });
  if (store.get("open", false) || script.getAttribute("data-open") === "true") toggle(true);
})();
