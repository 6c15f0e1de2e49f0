// tether.js against a real uvicorn (started by tests/test_realtime_js.py): TETHER_URL is the realtime
// endpoint, TETHER_CONTROL the pytest side's control server (restart the server, start a publisher).
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { Tether, TetherError, backoff } from "../../tether/static/tether/tether.js";

const URL = process.env.TETHER_URL;
const CONTROL = process.env.TETHER_CONTROL;

async function control(path, body = {}) {
  const response = await fetch(CONTROL + path, { method: "POST", body: JSON.stringify(body) });
  assert.equal(response.status, 200);
  return (await response.json()).result;
}

function unique(prefix) {
  return `${prefix}.${Math.random().toString(36).slice(2, 12)}`;
}

/** Resolves when `tether` enters `state` (a bounded wait: the test's own timeout). */
function when(tether, state, match = () => true) {
  return new Promise((resolve) => {
    const off = tether.on("state", (detail) => {
      if (detail.state === state && match(detail)) {
        off();
        resolve(detail);
      }
    });
  });
}

/** A queue of one subscription's messages: `await next()` takes them in order. */
function inbox() {
  const items = [];
  const waiters = [];
  return {
    items,
    onMessage(data) {
      items.push(data);
      waiters.splice(0).forEach((w) => w());
    },
    async until(predicate) {
      while (!predicate(items)) await new Promise((resolve) => waiters.push(resolve));
    },
  };
}

test("backoff grows to its ceiling with jitter", () => {
  for (let attempt = 0; attempt < 10; attempt++) {
    const ceiling = Math.min(10000, 500 * 2 ** attempt);
    const delay = backoff(attempt);
    assert.ok(delay >= ceiling / 2 && delay <= ceiling, `${attempt}: ${delay}`);
  }
});

test("three groups over one socket", async () => {
  const tether = new Tether(URL);
  const groups = [unique("public"), unique("room"), unique("public")];
  const boxes = groups.map(() => inbox());
  const subs = groups.map((group, i) => tether.subscribe(group, { onMessage: boxes[i].onMessage }));
  const results = await Promise.all(subs.map((s) => s.ready));
  assert.deepEqual(results.map((r) => r.group), groups);
  const sender = new Tether(URL);
  await sender.publish(groups[0], { n: 0 });
  await sender.publish(groups[2], { n: 2 });
  await assert.rejects(sender.publish(groups[1], { n: 1 }), (e) => e instanceof TetherError && e.code === "forbidden");
  await boxes[0].until((items) => items.length === 1);
  await boxes[2].until((items) => items.length === 1);
  assert.deepEqual([boxes[0].items, boxes[1].items, boxes[2].items], [[{ n: 0 }], [], [{ n: 2 }]]);
  tether.close();
  sender.close();
});

test("permission denied gets the documented error", async () => {
  const tether = new Tether(URL);
  const errors = [];
  const sub = tether.subscribe("secret.plans", { onError: (e) => errors.push(e.code) });
  await assert.rejects(sub.ready, (e) => e.code === "forbidden" && /not allowed/.test(e.message));
  assert.deepEqual(errors, ["forbidden"]);
  assert.equal(sub.state, "closed");
  tether.close();
});

test("presence: two clients see each other join, list each other, and one's leave", async () => {
  const group = unique("room.p");
  const events = () => {
    const box = inbox();
    return {
      box,
      onJoin: (member) => box.onMessage(["join", member.connection]),
      onLeave: (member) => box.onMessage(["leave", member.connection]),
    };
  };
  const [a, b] = [new Tether(URL), new Tether(URL)];
  const ea = events();
  await a.subscribe(group, { onJoin: ea.onJoin, onLeave: ea.onLeave }).ready;
  await ea.box.until((items) => items.length === 1); // its own join
  const [, own] = ea.box.items[0];
  const eb = events();
  await b.subscribe(group, { onJoin: eb.onJoin, onLeave: eb.onLeave }).ready;
  await ea.box.until((items) => items.length === 2);
  const [kind, other] = ea.box.items[1];
  assert.equal(kind, "join");
  const listed = await b.presence(group);
  assert.deepEqual(listed.members.map((m) => m.connection).sort(), [own, other].sort());
  assert.ok(listed.members.every((m) => m.user === null && m.info === null));
  b.close();
  await ea.box.until((items) => items.length === 3);
  assert.deepEqual(ea.box.items[2], ["leave", other]);
  assert.deepEqual((await a.presence(group)).members.map((m) => m.connection), [own]);
  a.close();
});

test("the 101st subscription is refused", async () => {
  const tether = new Tether(URL);
  const prefix = unique("room");
  const subs = Array.from({ length: 101 }, (_, n) => tether.subscribe(`${prefix}.${n}`));
  const outcomes = await Promise.allSettled(subs.map((s) => s.ready));
  assert.equal(outcomes.filter((o) => o.status === "fulfilled").length, 100);
  assert.equal(outcomes[100].status, "rejected");
  assert.equal(outcomes[100].reason.code, "too_many_subscriptions");
  tether.close();
});

test("4401 after the handshake stops reconnecting and says why", async () => {
  const tether = new Tether(URL.replace(/\/$/, "/private/"));
  const closed = await when(tether, "closed");
  assert.equal(closed.code, 4401);
  assert.match(closed.reason, /not reconnecting/);
  assert.equal(closed.closeReason, "login required"); // the server's words, for the page to show
  assert.equal(tether.state, "closed");
  assert.equal(tether.protocol, ""); // no connection any more
});

/** A TCP proxy to the server that can black-hole its current connections (bytes go nowhere, nothing closes). */
async function proxy(target) {
  const pairs = [];
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target.port, target.hostname);
    const pair = { client, upstream, holed: false };
    pairs.push(pair);
    client.on("data", (d) => pair.holed || upstream.write(d));
    upstream.on("data", (d) => pair.holed || client.write(d));
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    blackhole() {
      for (const pair of pairs) pair.holed = true;
    },
    refuse(on) {
      refusing = on;
    },
    connections: () => pairs.length,
    close() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      server.close();
    },
  };
}

test("a silent connection is detected by heartbeats and replaced within interval + timeout", async () => {
  const target = new globalThis.URL(URL);
  const hole = await proxy(target);
  const heartbeatInterval = 300;
  const heartbeatTimeout = 300;
  const url = `ws://127.0.0.1:${hole.port}${target.pathname}`;
  const tether = new Tether(url, { heartbeatInterval, heartbeatTimeout, reconnect: { min: 100, max: 1000 } });
  const group = unique("public");
  const box = inbox();
  const sub = tether.subscribe(group, { onMessage: box.onMessage });
  await sub.ready;
  assert.equal(tether.protocol, "tether.v1"); // what the server selected
  const resubscribed = new Promise((resolve) => tether.on("subscribe", (info) => info.resubscribed && resolve(info)));
  const started = performance.now();
  hole.blackhole();
  const lost = await when(tether, "reconnecting");
  const detected = performance.now() - started;
  assert.equal(lost.reason, "heartbeat timeout");
  await when(tether, "open");
  await resubscribed;
  const replaced = performance.now() - started;
  assert.ok(detected <= heartbeatInterval + heartbeatTimeout + 250, `detected after ${detected} ms`);
  assert.ok(replaced <= heartbeatInterval + heartbeatTimeout + 100 + 1000, `replaced after ${replaced} ms`);
  assert.equal(hole.connections(), 2);
  const sender = new Tether(URL);
  await sender.publish(group, { after: "replacement" });
  await box.until((items) => items.length === 1);
  console.log(`heartbeat: silent connection detected in ${detected.toFixed(0)} ms, replaced in ${replaced.toFixed(0)} ms`);
  tether.close();
  sender.close();
  hole.close();
});

test("server restart while a third process publishes 200: all 200, in order, once, recovered", async () => {
  const group = unique("room.h");
  const box = inbox();
  const tether = new Tether(URL, { reconnect: { min: 100, max: 1000 } });
  const states = [];
  tether.on("state", (d) => states.push(d.state));
  const sub = tether.subscribe(group, { onMessage: box.onMessage });
  assert.equal((await sub.ready).recovered, false); // a first subscription has nothing to recover
  const resubscribed = new Promise((resolve) => tether.on("subscribe", (info) => info.resubscribed && resolve(info)));
  await control("/publish", { group, count: 200, interval: 0.01 });
  await box.until((items) => items.length >= 5);
  await control("/restart");
  const info = await resubscribed;
  assert.deepEqual(await control("/wait-publishers"), [0]);
  await box.until((items) => items.length >= 200);
  const seen = box.items.map((m) => m.n);
  assert.deepEqual(seen, Array.from({ length: 200 }, (_, n) => n), "all 200, in order, no duplicates");
  assert.equal(info.recovered, true);
  assert.equal(sub.position.offset, 200);
  assert.ok(states.includes("reconnecting") && states.at(-1) === "open", states.join(","));
  console.log(`restart with history: ${seen.length} of 200 messages, recovered: ${info.recovered}`);
  tether.close();
});

test("after a window overflow the resubscription reports recovered: false and replays nothing", async () => {
  const target = new globalThis.URL(URL);
  const hole = await proxy(target);
  const url = `ws://127.0.0.1:${hole.port}${target.pathname}`;
  const tether = new Tether(url, { heartbeatInterval: 300, heartbeatTimeout: 300, reconnect: { min: 100, max: 500 } });
  const group = unique("public.small");
  const box = inbox();
  const sub = tether.subscribe(group, { onMessage: box.onMessage });
  await sub.ready;
  const sender = new Tether(URL);
  await sender.publish(group, { n: 0 });
  await box.until((items) => items.length === 1);
  const resubscribed = new Promise((resolve) => tether.on("subscribe", (info) => info.resubscribed && resolve(info)));
  hole.refuse(true);
  hole.blackhole();
  await when(tether, "reconnecting");
  for (let n = 1; n <= 10; n++) await sender.publish(group, { n }); // the window holds 5
  hole.refuse(false);
  const info = await resubscribed;
  assert.equal(info.recovered, false);
  await sender.publish(group, { n: 11 });
  await box.until((items) => items.length === 2);
  assert.deepEqual(box.items, [{ n: 0 }, { n: 11 }]);
  assert.equal(sub.position.offset, 12);
  tether.close();
  sender.close();
  hole.close();
});
