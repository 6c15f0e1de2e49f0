// The chat page: plain JavaScript, no build step, on tether.js (tether's realtime client, mapped to
// the name "tether" by the page's import map).
//
// One socket for the whole page. Every room shown here, the announcements, the "who's online" list
// and this user's mentions are subscriptions on it. tether.js does the connection work: reconnects
// with backoff and jitter, resubscribes each group from the last message seen, and stops on 4401 and
// 4403. What it can't recover (recovered: false, e.g. the memory backend lost its history in a
// server restart) the page reloads from the server's database: every message is stored there before
// it is broadcast, and a room's lines are kept in id order and shown once each, however often they
// arrive.
import { Tether } from "tether";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const root = document.getElementById("chat");
// ?auth=token signs the socket in with a token offered as a subprotocol, as a page on another origin
// or an app without cookies would; by default the session cookie does.
const useToken = new URLSearchParams(location.search).get("auth") === "token";
const me = config.me;
const mentionsMe = new RegExp("(^|[^\\w@])@" + me.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "(?![\\w.+-])");
const stateEl = document.getElementById("state");
const titleEl = document.getElementById("title");
const roomsEl = document.getElementById("rooms");
const notices = document.getElementById("notices");
const onlineEl = document.getElementById("online");
const onlineList = document.getElementById("online-list");
const paneTemplate = document.getElementById("room-template");
const openForm = document.getElementById("open-room");
const openInput = document.getElementById("open-name");

const panes = new Map(); // room -> {room, el, log, input, button, shown: Set of ids, subscription, stale}
const online = new Map(); // connection id -> user name (one user with two pages is two connections)
let tether = null;

// -- the connection ------------------------------------------------------------------------------

function start() {
  const client = new Tether(root.dataset.socketUrl, { token: useToken ? fetchToken : null });
  tether = client;
  let opened = false;
  client.on("state", function (event) {
    if (client !== tether) return;
    if (event.state === "open") opened = true;
    if (event.state === "closed" && event.code === 4401 && useToken && opened) {
      // A token socket also ends when its token expires: if the login still holds, start over with
      // a fresh token (the rooms reload from the database: nothing is missed).
      signedIn().then(function (yes) {
        if (yes) start();
        else showState(event);
      });
      return;
    }
    showState(event);
  });
  client.subscribe(config.groups.mentions, { onMessage: showMention });
  client.subscribe(config.groups.announcements, {
    onMessage: function (announcement) {
      panes.forEach(function (pane) {
        show(pane, announcement);
      });
    },
    onSubscribe: function (info) {
      // Missed announcements are in each room's stored history: have the rooms reload it. (tether.js
      // resubscribes in subscription order: this reply comes before the rooms', which then load.)
      if (info.resubscribed && !info.recovered) {
        panes.forEach(function (pane) {
          pane.stale = true;
        });
      }
    },
  });
  client.subscribe(config.groups.online, {
    onJoin: function (member) {
      online.set(member.connection, nameOf(member));
      showOnline();
    },
    onLeave: function (member) {
      online.delete(member.connection);
      showOnline();
    },
    onSubscribe: function () {
      // The whole list after each (re)subscription; join/leave pushes keep it current from there.
      client.presence(config.groups.online).then(function (reply) {
        online.clear();
        reply.members.forEach(function (member) {
          online.set(member.connection, nameOf(member));
        });
        showOnline();
      }, console.error);
    },
  });
  panes.forEach(subscribe);
}

// A fresh token per attempt (it is short-lived); null when signed out: the socket is then refused
// with 4401 and the page says so.
async function fetchToken() {
  const response = await fetch(root.dataset.tokenUrl, { cache: "no-store", credentials: "same-origin" });
  if (response.status === 401) return null;
  if (!response.ok) throw new Error("token: HTTP " + response.status);
  return (await response.json()).token;
}

// false when this page now redirects to the login page; true otherwise.
function signedIn() {
  return fetch(location.href, { method: "HEAD", redirect: "manual", cache: "no-store" }).then(
    function (response) {
      return response.type !== "opaqueredirect";
    },
    function () {
      return true;
    },
  );
}

function showState(event) {
  let detail = "";
  if (event.state === "reconnecting") detail = "in " + (event.retryIn / 1000).toFixed(1) + "s";
  if (event.state === "closed" && event.code === 4401) detail = "signed out: " + (event.closeReason || "sign in again");
  if (event.state === "closed" && event.code === 4403) detail = "refused";
  stateEl.dataset.state = event.state;
  stateEl.dataset.protocol = tether.protocol; // "tether.v1" while open
  stateEl.textContent = detail ? event.state + " · " + detail : event.state;
  const open = event.state === "open";
  panes.forEach(function (pane) {
    pane.input.disabled = !open;
    pane.button.disabled = !open;
  });
}

// -- rooms -----------------------------------------------------------------------------------------

function addRoom(room) {
  if (panes.has(room)) return panes.get(room);
  const el = paneTemplate.content.firstElementChild.cloneNode(true);
  el.dataset.room = room;
  el.querySelector(".name").textContent = "#" + room;
  el.querySelector(".close-room").setAttribute("aria-label", "close #" + room);
  const pane = {
    room: room,
    el: el,
    log: el.querySelector(".log"),
    input: el.querySelector(".compose"),
    button: el.querySelector(".send button"),
    shown: new Set(),
    subscription: null,
    stale: true,
  };
  pane.input.placeholder = "Message #" + room + " (@name to mention)";
  const open = tether !== null && tether.state === "open";
  pane.input.disabled = pane.button.disabled = !open;
  el.querySelector(".send").addEventListener("submit", function (event) {
    event.preventDefault();
    send(pane);
  });
  el.querySelector(".close-room").addEventListener("click", function () {
    closeRoom(room);
  });
  panes.set(room, pane);
  roomsEl.append(el);
  if (tether !== null) subscribe(pane);
  roomsChanged();
  return pane;
}

function closeRoom(room) {
  const pane = panes.get(room);
  if (!pane || panes.size === 1) return; // the page shows at least one room
  panes.delete(room);
  pane.el.remove();
  if (pane.subscription) pane.subscription.unsubscribe().catch(function () {});
  roomsChanged();
}

// The title, the URL (first room in the path, the others in ?also=: a reload shows the same rooms),
// and whether a room may still be closed.
function roomsChanged() {
  const rooms = [...panes.keys()];
  titleEl.textContent = rooms.map((room) => "#" + room).join(" ");
  document.title = titleEl.textContent + " · tether chat";
  const params = new URLSearchParams(location.search);
  params.delete("also");
  rooms.slice(1).forEach((room) => params.append("also", room));
  const query = params.toString();
  history.replaceState(null, "", "/rooms/" + encodeURIComponent(rooms[0]) + "/" + (query ? "?" + query : ""));
  roomsEl.dataset.count = String(rooms.length);
  panes.forEach(function (pane) {
    pane.el.querySelector(".close-room").hidden = rooms.length === 1;
  });
}

function subscribe(pane) {
  pane.subscription = tether.subscribe(config.groups.room + pane.room, {
    onMessage: function (message) {
      show(pane, message);
    },
    onSubscribe: function (info) {
      pane.el.dataset.recovered = String(info.recovered);
      // First time, or the history couldn't say what was missed: the database can.
      if (!info.resubscribed || !info.recovered || pane.stale) load(pane);
    },
    onError: function (error) {
      system(pane, "error: " + error.message);
    },
  });
}

// The room's last messages from the database, merged into what is shown (each once, in id order).
function load(pane) {
  pane.stale = true;
  pane.el.dataset.loads = String(Number(pane.el.dataset.loads || 0) + 1); // how often (the tests read it)
  const url = root.dataset.messagesUrl.replace("ROOM", encodeURIComponent(pane.room));
  fetch(url, { cache: "no-store", credentials: "same-origin" })
    .then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    })
    .then(function (body) {
      if (panes.get(pane.room) !== pane) return;
      body.messages.forEach(function (message) {
        show(pane, message);
      });
      pane.stale = false; // else the next (re)subscription tries again
    })
    .catch(console.error);
}

function send(pane) {
  const text = pane.input.value.trim();
  if (!text || tether.state !== "open") return;
  pane.input.value = "";
  pane.input.focus();
  publish(pane, { text: text, nonce: nonce() }, 3);
}

// A publish whose connection dropped before the reply may have been stored: send it again, with the
// same nonce (the server then broadcasts the stored message instead of storing a second one). tether.js
// holds a command sent while offline until the connection is back (up to its timeout).
function publish(pane, data, attempts) {
  tether.publish(config.groups.room + pane.room, data).catch(function (error) {
    if (error.code === "disconnected" && attempts > 1) {
      publish(pane, data, attempts - 1);
      return;
    }
    if (!pane.input.value) pane.input.value = data.text; // not sent: give it back
    system(pane, "error: " + error.message);
  });
}

function nonce() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); // https, localhost
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
}

// -- what is shown ---------------------------------------------------------------------------------

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text; // never innerHTML: messages are user input
  return el;
}

function insert(pane, li, id) {
  const log = pane.log;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  let before = null; // the first line with a greater id: a reloaded history may fill a gap
  for (let node = log.lastElementChild; node && node.dataset.id && Number(node.dataset.id) > id; ) {
    before = node;
    node = node.previousElementSibling;
  }
  log.insertBefore(li, before);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function system(pane, text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  pane.log.append(li);
}

// A message or an announcement (both stored), shown once per room by id.
function show(pane, message) {
  if (pane.shown.has(message.id)) return;
  pane.shown.add(message.id);
  const announcement = message.type === "announcement";
  const li = document.createElement("li");
  li.className = announcement ? "announcement" : "message";
  if (!announcement && message.user === me) li.classList.add("mine");
  if (!announcement && message.user !== me && mentionsMe.test(message.text)) li.classList.add("mentions-me");
  li.dataset.id = message.id;
  const time = document.createElement("time");
  time.dateTime = message.created;
  time.textContent = new Date(message.created).toLocaleTimeString();
  li.append(time);
  if (announcement) li.append(span("tag", "announcement"));
  li.append(span("user", message.user), span("text", message.text));
  insert(pane, li, message.id);
}

// A banner for a mention in a room this page doesn't show; in a shown room the message itself is
// highlighted. Its link opens that room here.
function showMention(notice) {
  if (notice.type !== "mention" || panes.has(notice.room)) return;
  const div = document.createElement("div");
  div.className = "mention";
  const body = document.createElement("span");
  body.append(span("user", notice.user), " mentioned you in ");
  const link = document.createElement("a");
  link.href = "/rooms/" + encodeURIComponent(notice.room) + "/";
  link.textContent = "#" + notice.room;
  link.addEventListener("click", function (event) {
    if (panes.size >= config.maxRooms) return; // the link then opens the room's own page
    event.preventDefault();
    addRoom(notice.room);
    div.remove();
  });
  body.append(link, ": ", span("text", notice.text));
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

function nameOf(member) {
  return member.info && typeof member.info.name === "string" ? member.info.name : "?";
}

// Each user once, however many pages they have open; this user first.
function showOnline() {
  const names = [...new Set(online.values())].sort(function (a, b) {
    return (b === me) - (a === me) || a.localeCompare(b);
  });
  onlineList.replaceChildren(
    ...names.map(function (name) {
      const li = document.createElement("li");
      li.dataset.user = name;
      li.textContent = name;
      if (name === me) li.classList.add("me");
      return li;
    }),
  );
  onlineEl.querySelector(".count").textContent = "(" + names.length + ")";
}

// -- the page --------------------------------------------------------------------------------------

openForm.addEventListener("submit", function (event) {
  event.preventDefault();
  const room = openInput.value
    .toLowerCase()
    .replace(/[^-a-z0-9_]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 50);
  if (!room) return;
  if (!panes.has(room) && panes.size >= config.maxRooms) {
    openInput.setCustomValidity("at most " + config.maxRooms + " rooms on one page");
    openInput.reportValidity();
    return;
  }
  openInput.value = "";
  addRoom(room).input.focus();
});
openInput.addEventListener("input", function () {
  openInput.setCustomValidity("");
});

config.rooms.forEach(addRoom);
start();
