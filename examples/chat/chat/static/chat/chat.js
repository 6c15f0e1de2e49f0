// The chat page's client: plain JavaScript, no build step.
//
// One WebSocket per page. When it closes (server restart, deploy, network), the page
// reconnects by itself after a delay that doubles on each failed attempt, up to MAX_DELAY,
// with random jitter so that a thousand pages don't come back at the same instant.
// #state shows where the connection stands: connecting, open, reconnecting, closed.
(function () {
  "use strict";

  const BASE_DELAY = 500; // ms before the first retry (on average)
  const MAX_DELAY = 10000; // ms, the cap of the doubling
  const STOP_CODES = new Set([4401, 4403]); // refused for good: signed out or forbidden

  const root = document.getElementById("chat");
  const url = root.dataset.socketUrl;
  const me = root.dataset.me;
  const room = root.dataset.room;
  const mentionsMe = new RegExp("(^|[^\\w@])@" + me.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "(?![\\w.+-])");
  const stateEl = document.getElementById("state");
  const log = document.getElementById("log");
  const notices = document.getElementById("notices");
  const form = document.getElementById("send");
  const input = document.getElementById("text");
  const button = form.querySelector("button");

  const seen = new Set(); // message ids already shown: history after a reconnect repeats them
  let socket = null;
  let attempt = 0;
  let retryTimer = null;

  function setState(state, detail) {
    stateEl.dataset.state = state;
    stateEl.textContent = detail ? state + " · " + detail : state;
    const open = state === "open";
    input.disabled = !open;
    button.disabled = !open;
  }

  // "Equal jitter": half the doubled delay, plus a random part of the other half.
  function nextDelay() {
    const ceiling = Math.min(MAX_DELAY, BASE_DELAY * Math.pow(2, attempt));
    attempt += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  function connect() {
    retryTimer = null;
    setState(attempt ? "reconnecting" : "connecting", attempt ? "attempt " + (attempt + 1) : "");
    let opened = false;
    socket = new WebSocket(url);
    socket.addEventListener("open", function () {
      opened = true;
      attempt = 0;
      setState("open");
    });
    socket.addEventListener("message", function (event) {
      handle(JSON.parse(event.data));
    });
    socket.addEventListener("close", function (event) {
      socket = null;
      if (STOP_CODES.has(event.code)) {
        setState("closed", event.code === 4401 ? "signed out: reload to log in" : "refused");
        return;
      }
      if (opened) {
        scheduleReconnect();
        return;
      }
      // A refused handshake looks like any failure to the page (code 1006), so ask the
      // server whether we are still signed in before retrying.
      signedIn().then(function (yes) {
        if (yes) scheduleReconnect();
        else setState("closed", "signed out: reload to log in");
      });
    });
  }

  // false when this page now redirects to the login page; true otherwise, also when the
  // server can't be reached (it is restarting: keep trying).
  function signedIn() {
    return fetch(location.href, { method: "HEAD", redirect: "manual", cache: "no-store" })
      .then(function (response) {
        return response.type !== "opaqueredirect";
      })
      .catch(function () {
        return true;
      });
  }

  function scheduleReconnect() {
    if (retryTimer !== null) return;
    const delay = nextDelay();
    setState("reconnecting", "in " + (delay / 1000).toFixed(1) + "s");
    retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (retryTimer === null || socket !== null) return;
    clearTimeout(retryTimer);
    connect();
  }

  function line(className) {
    const li = document.createElement("li");
    li.className = className;
    return li;
  }

  function span(className, text) {
    const el = document.createElement("span");
    el.className = className;
    el.textContent = text; // never innerHTML: messages are user input
    return el;
  }

  function append(li) {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.appendChild(li);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // A message or an announcement (both stored, both in the history), shown once by id.
  function showMessage(message) {
    if (seen.has(message.id)) return;
    seen.add(message.id);
    const li = line(message.type === "announcement" ? "announcement" : "message");
    if (message.type !== "announcement" && message.user === me) li.classList.add("mine");
    if (message.type !== "announcement" && message.user !== me && mentionsMe.test(message.text)) {
      li.classList.add("mentions-me");
    }
    li.dataset.id = message.id;
    const time = document.createElement("time");
    time.dateTime = message.created;
    time.textContent = new Date(message.created).toLocaleTimeString();
    li.append(time);
    if (message.type === "announcement") li.append(span("tag", "announcement"));
    li.append(span("user", message.user), span("text", message.text));
    append(li);
  }

  // A banner for a mention in another room; one in this room is the highlighted message itself.
  function showMention(frame) {
    if (frame.room === room) return;
    const div = document.createElement("div");
    div.className = "mention";
    const body = document.createElement("span");
    body.append(span("user", frame.user), " mentioned you in ");
    const link = document.createElement("a");
    link.href = "/rooms/" + encodeURIComponent(frame.room) + "/";
    link.textContent = "#" + frame.room;
    body.append(link, ": ", span("text", frame.text));
    div.append(body);
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.className = "dismiss";
    dismiss.title = "dismiss";
    dismiss.setAttribute("aria-label", "dismiss");
    dismiss.textContent = "\u00d7";
    dismiss.addEventListener("click", function () {
      div.remove();
    });
    div.append(dismiss);
    notices.prepend(div);
  }

  function handle(frame) {
    switch (frame.type) {
      case "history":
        frame.messages.forEach(showMessage);
        break;
      case "message":
      case "announcement":
        showMessage(frame);
        break;
      case "mention":
        showMention(frame);
        break;
      case "error": {
        const li = line("system");
        li.textContent = "error: " + frame.error;
        append(li);
        break;
      }
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || socket === null || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ text: text }));
    input.value = "";
    input.focus();
  });

  // Back online or back to the tab: don't sit out the rest of a long delay.
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") reconnectNow();
  });

  connect();
})();
