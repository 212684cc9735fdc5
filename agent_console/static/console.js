// Loket console: live updates over /console/ws. Fragments are re-rendered (and escaped) by the server;
// anything this script writes itself goes through textContent.
(function () {
  "use strict";
  var body = document.body;
  var csrf = body.getAttribute("data-csrf");
  if (!csrf) { return; }
  var dot = document.getElementById("presence");
  var inbox = document.querySelector('[data-live="inbox"]');
  var convPage = document.querySelector('[data-live="conversation"]');
  var convId = convPage ? convPage.getAttribute("data-conv") : null;
  var pending = null;   // a fetch is scheduled or in flight
  var again = false;    // an event came while it was: fetch once more when it is done
  var backoff = 500;

  // The first event fetches at once (after the frames of the same commit have arrived); events during a fetch
  // are folded into one more fetch afterwards, so the page is never behind and never fetches per frame.
  function refresh() {
    if (pending) { again = true; return; }
    pending = setTimeout(function () {
      var url = new URL(window.location.href);
      url.searchParams.set("partial", "1");
      url.searchParams.delete("rejected");
      fetch(url.toString(), { credentials: "same-origin" }).then(function (r) {
        var lost = document.getElementById("access-lost");
        if (r.status === 403 && lost) { lost.hidden = false; }  // moved to a team this agent is not in
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (html === null) { return; }
        var target = document.getElementById(inbox ? "inbox-list" : "timeline-box");
        if (!target) { return; }
        var tpl = document.createElement("template");
        tpl.innerHTML = html;  // server-rendered, autoescaped fragment
        target.replaceChildren(tpl.content);
        if (inbox) {
          var table = target.querySelector("table[data-counts]");
          if (table) {
            var counts = JSON.parse(table.getAttribute("data-counts"));
            Object.keys(counts).forEach(function (k) {
              var el = document.querySelector('[data-count="' + k + '"]');
              if (el) { el.textContent = String(counts[k]); }
            });
          }
        }
        document.body.setAttribute("data-refreshed", String(Date.now()));
      }).catch(function () { /* offline for a moment: the next event or reconnect fetches again */ })
        .then(function () {
          pending = null;
          if (again) { again = false; refresh(); }
        });
    }, 2);
  }

  function connect() {
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    var ws = new WebSocket(proto + "//" + location.host + "/console/ws?csrf=" + encodeURIComponent(csrf));
    var ping = null;
    ws.onopen = function () {
      backoff = 500;
      if (dot) { dot.className = "dot online"; }
      body.setAttribute("data-ws", "open");
      // catch up on what happened between rendering this page (or losing the socket) and now
      if (inbox || convId) { refresh(); }
      ping = setInterval(function () {
        ws.send(JSON.stringify({ type: "ping", presence: document.hidden ? "away" : "online" }));
      }, 20000);
    };
    ws.onmessage = function (ev) {
      var frame;
      try { frame = JSON.parse(ev.data); } catch (e) { return; }
      if (frame.type !== "event") { return; }
      // message.for_agent always comes with the message.created of the same commit: one fetch is enough
      if (frame.name === "webchat.typing" || frame.name === "message.for_agent") { return; }
      if (inbox) { refresh(); }
      else if (convId && String(frame.conversation_id) === convId) { refresh(); }
    };
    ws.onclose = function () {
      if (ping) { clearInterval(ping); }
      if (dot) { dot.className = "dot offline"; }
      body.setAttribute("data-ws", "closed");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();

  var canned = document.getElementById("canned");
  var text = document.getElementById("reply-text");
  if (canned && text) {
    canned.addEventListener("change", function () {
      if (canned.value) { text.value = canned.value; text.focus(); }
    });
  }
  if (text && convId) {
    var last = 0;
    text.addEventListener("input", function () {
      var now = Date.now();
      if (now - last < 2000) { return; }
      last = now;
      var form = new FormData();
      form.append("_csrf", csrf);
      fetch("/console/c/" + convId + "/typing", { method: "POST", body: form, credentials: "same-origin" });
    });
  }
})();

// Knowledge-base editor: the preview is rendered by the server (the help centre's renderer, sanitised).
(function () {
  "use strict";
  var csrf = document.body.getAttribute("data-csrf");
  var bodyField = document.getElementById("kb-body");
  var titleField = document.getElementById("kb-title");
  var pane = document.getElementById("kb-preview");
  if (!csrf || !bodyField || !pane) { return; }
  var timer = null;
  var seq = 0;
  function render() {
    var mine = ++seq;
    var form = new FormData();
    form.append("_csrf", csrf);
    form.append("body", bodyField.value);
    form.append("title", titleField ? titleField.value : "");
    fetch("/console/kb/preview", { method: "POST", body: form, credentials: "same-origin" }).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html === null || mine !== seq) { return; }
      var tpl = document.createElement("template");
      tpl.innerHTML = html;  // server-rendered: raw HTML escaped, unsafe links dropped
      pane.replaceChildren(tpl.content);
      pane.setAttribute("data-rendered", String(mine));
    });
  }
  function later() {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(render, 250);
  }
  bodyField.addEventListener("input", later);
  if (titleField) { titleField.addEventListener("input", later); }
})();
