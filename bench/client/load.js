#!/usr/bin/env node
// Load generator for django-tether's benchmark suite, run by bench/run.py (one scenario per process).
//
//   node load.js echo      --url U --conns N --duration S [--warmup S] [--size B]
//   node load.js fanout    --url U --subs N --messages M [--pub-url P | --external] [--timeout S] [--protocol]
//   node load.js idle      --url U --conns N [--parallel K] [--timeout S]
//   node load.js handshake --url U --conns N --duration S [--cookie C] [--warmup S]
//
// Every connection sends its page's own `Origin: http://127.0.0.1:<port>` (Channels' AllowedHostsOriginValidator and
// tether's Origin check refuse a handshake without one). Lines on stdout, for the orchestrator:
//   START / STOP          the measured window opens / closes (it samples the server's CPU there)
//   READY                 fan-out: every subscriber is subscribed; idle: every socket is open
//   RESULT {json}         the numbers, last line
// fanout --protocol: the subscribers speak tether.v1 (docs/protocol.md): they offer the subprotocol, send one
// `subscribe` command, and are ready on its reply; each `message` push is one delivery.
// In idle mode the process holds its sockets open until it reads a line on stdin (or --timeout).
"use strict";

const WebSocket = require("ws");
const { performance } = require("perf_hooks");

// The page's own origin, as a browser on http://127.0.0.1:<port>/ sends it.
const originOf = (url) => new URL(url.replace(/^ws/, "http")).origin;

function parseArgs(argv) {
  const args = { mode: argv[0] };
  for (let i = 1; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "");
    const next = argv[i + 1];
    if (next === undefined || next.startsWith("--")) {
      args[key] = true;
    } else {
      args[key] = next;
      i++;
    }
  }
  return args;
}

const now = () => performance.now(); // ms, monotonic
const epochMs = () => performance.timeOrigin + performance.now();

function say(line) {
  process.stdout.write(line + "\n");
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

function cpuSeconds(start) {
  const u = process.cpuUsage(start);
  return (u.user + u.system) / 1e6;
}

// `setup(ws)` runs before the handshake, so a listener it adds sees a message sent right after accept.
function open(url, headers, setup, protocols = []) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { origin: originOf(url), headers, perMessageDeflate: false });
    if (setup) setup(ws);
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
    ws.once("unexpected-response", (req, res) => reject(new Error(`HTTP ${res.statusCode} from ${url}`)));
  });
}

// Open n sockets, at most `parallel` handshakes in flight; `setup(ws)` runs on each before its handshake.
async function openMany(url, n, parallel, headers, setup, protocols = []) {
  const sockets = new Array(n);
  let next = 0;
  let failures = 0;
  let firstError = null;
  async function worker() {
    while (next < n) {
      const i = next++;
      try {
        sockets[i] = await open(url, headers, setup, protocols);
      } catch (err) {
        failures++;
        firstError = firstError || String(err && err.message ? err.message : err);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, worker));
  return { sockets: sockets.filter(Boolean), failures, firstError };
}

function finish(result) {
  say("RESULT " + JSON.stringify(result));
  // Sockets may still be closing: exit now, the numbers are out.
  process.exit(0);
}

async function echo(a) {
  const conns = Number(a.conns || 1);
  const duration = Number(a.duration || 5) * 1000;
  const warmup = Number(a.warmup || 1) * 1000;
  const payload = "x".repeat(Number(a.size || 32));
  const { sockets, failures, firstError } = await openMany(a.url, conns, 100, {}, null);
  if (sockets.length === 0) throw new Error(`no connection opened: ${firstError}`);
  let measuring = false;
  let stopped = false;
  let count = 0;
  const lat = [];
  for (const ws of sockets) {
    let sentAt = 0;
    ws.on("message", () => {
      if (stopped) return;
      const t = now();
      if (measuring) {
        count++;
        lat.push(t - sentAt);
      }
      sentAt = t;
      ws.send(payload);
    });
  }
  for (const ws of sockets) ws.emit("message"); // first send of each closed loop
  await new Promise((r) => setTimeout(r, warmup));
  say("START");
  const cpu0 = process.cpuUsage();
  const t0 = now();
  measuring = true;
  await new Promise((r) => setTimeout(r, duration));
  measuring = false;
  stopped = true;
  const wall = (now() - t0) / 1000;
  const cpu = cpuSeconds(cpu0);
  say("STOP");
  lat.sort((x, y) => x - y);
  finish({
    mode: "echo",
    conns: sockets.length,
    failures,
    round_trips: count,
    rate: count / wall,
    p50_ms: percentile(lat, 50),
    p99_ms: percentile(lat, 99),
    wall_s: wall,
    client_cpu_s: cpu,
  });
}

async function fanout(a) {
  const subs = Number(a.subs || 100);
  const messages = Number(a.messages || 10);
  const timeout = Number(a.timeout || 60) * 1000;
  const urls = String(a.url).split(",");
  const protocol = Boolean(a.protocol);
  const group = String(a.group || "bench");
  let badPush = null; // protocol: the first push of each subscriber is checked to be a `message` of the group
  let ready = 0;
  let readyResolve;
  const allReady = new Promise((r) => (readyResolve = r));
  const received = new Int32Array(subs);
  const doneAt = new Float64Array(subs);
  let delivered = 0;
  let finished = 0;
  let firstAt = 0;
  let doneResolve;
  const allDone = new Promise((r) => (doneResolve = r));
  const isReady = new Uint8Array(subs);
  let failures = 0;
  let firstError = null;
  let index = 0;
  // Subscribers are spread round-robin over the given URLs (one per server process).
  const perUrl = urls.map(() => 0);
  for (let i = 0; i < subs; i++) perUrl[i % urls.length]++;
  const groups = await Promise.all(
    urls.map((url, u) =>
      openMany(url, perUrl[u], Number(a.parallel || 100), {}, (ws) => {
        const i = index++;
        if (protocol) {
          ws.once("open", () => {
            if (ws.protocol !== "tether.v1") badPush = badPush || `subprotocol ${JSON.stringify(ws.protocol)}`;
            ws.send(JSON.stringify({ id: 1, type: "subscribe", group }));
          });
        }
        ws.on("message", (data) => {
          if (!isReady[i]) {
            if (protocol) {
              const reply = JSON.parse(String(data));
              if (reply.id !== 1) return; // only the subscribe reply counts before the first broadcast
              if (!reply.result) throw new Error(`subscribe refused: ${String(data)}`);
            } else if (String(data) !== "ready") return; // only "ready" counts before the first broadcast
            isReady[i] = 1;
            ready++;
            if (ready === subs) readyResolve();
            return;
          }
          if (protocol && received[i] === 0) {
            const push = JSON.parse(String(data));
            if (push.type !== "message" || push.group !== group) badPush = badPush || String(data).slice(0, 200);
          }
          delivered++;
          if (firstAt === 0) firstAt = now();
          if (++received[i] === messages) {
            doneAt[i] = now();
            if (++finished === subs) doneResolve();
          }
        });
      }, protocol ? ["tether.v1"] : [])
    )
  );
  for (const g of groups) {
    failures += g.failures;
    firstError = firstError || g.firstError;
  }
  if (failures) throw new Error(`${failures} subscribers failed to connect: ${firstError}`);
  await Promise.race([allReady, new Promise((r) => setTimeout(r, Math.min(timeout, 30000)))]);
  if (ready < subs) throw new Error(`only ${ready}/${subs} subscribers said ready`);
  let pub = null;
  if (!a.external) pub = await open(a["pub-url"], {});
  say("START"); // before READY: an external publisher starts on READY, inside the window
  say("READY");
  const cpu0 = process.cpuUsage();
  const t0 = now();
  const t0Epoch = epochMs();
  if (pub) {
    for (let m = 0; m < messages; m++) pub.send(`m${m} ${"x".repeat(24)}`);
  }
  const timedOut = await Promise.race([
    allDone.then(() => false),
    new Promise((r) => setTimeout(() => r(true), timeout)),
  ]);
  const tEnd = now();
  const cpu = cpuSeconds(cpu0);
  say("STOP");
  let last = 0;
  for (let i = 0; i < subs; i++) if (doneAt[i] > last) last = doneAt[i];
  if (timedOut) last = tEnd;
  // External publishers start after READY: time from the first delivery there, from the first send here.
  const start = pub ? t0 : firstAt;
  if (badPush) throw new Error(`not a message push of ${group}: ${badPush}`);
  const elapsed = (last - start) / 1000;
  finish({
    mode: "fanout",
    protocol,
    subs,
    messages,
    delivered,
    expected: subs * messages,
    complete: !timedOut,
    rate: elapsed > 0 ? delivered / elapsed : null,
    last_ms: elapsed * 1000,
    first_epoch_ms: firstAt ? t0Epoch + (firstAt - t0) : null,
    last_epoch_ms: t0Epoch + (last - t0),
    wall_s: (tEnd - t0) / 1000,
    client_cpu_s: cpu,
  });
}

async function idle(a) {
  const conns = Number(a.conns || 1000);
  const timeout = Number(a.timeout || 300) * 1000;
  const t0 = now();
  const { sockets, failures, firstError } = await openMany(a.url, conns, Number(a.parallel || 200), {}, null);
  const openSeconds = (now() - t0) / 1000;
  let closedEarly = 0;
  for (const ws of sockets) ws.on("close", () => closedEarly++);
  say("READY");
  await new Promise((resolve) => {
    process.stdin.once("data", resolve);
    process.stdin.once("end", resolve);
    setTimeout(resolve, timeout);
  });
  finish({
    mode: "idle",
    conns: sockets.length,
    failures,
    first_error: firstError,
    closed_early: closedEarly,
    open_s: openSeconds,
  });
}

async function handshake(a) {
  const conns = Number(a.conns || 10);
  const duration = Number(a.duration || 5) * 1000;
  const warmup = Number(a.warmup || 1) * 1000;
  const headers = a.cookie ? { Cookie: String(a.cookie) } : {};
  let measuring = false;
  let stopped = false;
  let count = 0;
  let failures = 0;
  let firstError = null;
  let firstGreeting = null;
  const lat = [];
  function once() {
    return new Promise((resolve) => {
      const t = now();
      const ws = new WebSocket(a.url, { origin: originOf(a.url), headers, perMessageDeflate: false });
      let greeted = false;
      ws.once("message", (data) => {
        greeted = true;
        firstGreeting = firstGreeting || String(data);
        if (measuring) {
          count++;
          lat.push(now() - t);
        }
        ws.close();
      });
      ws.once("close", () => resolve());
      ws.once("error", (err) => {
        if (!greeted) {
          failures++;
          firstError = firstError || String(err.message || err);
        }
        resolve();
      });
    });
  }
  async function loop() {
    while (!stopped) await once();
  }
  const loops = Array.from({ length: conns }, loop);
  await new Promise((r) => setTimeout(r, warmup));
  say("START");
  const cpu0 = process.cpuUsage();
  const t0 = now();
  measuring = true;
  await new Promise((r) => setTimeout(r, duration));
  measuring = false;
  const wall = (now() - t0) / 1000;
  const cpu = cpuSeconds(cpu0);
  say("STOP");
  stopped = true;
  await Promise.race([Promise.all(loops), new Promise((r) => setTimeout(r, 5000))]);
  lat.sort((x, y) => x - y);
  finish({
    mode: "handshake",
    conns,
    handshakes: count,
    failures,
    first_error: firstError,
    greeting: firstGreeting,
    rate: count / wall,
    p50_ms: percentile(lat, 50),
    p99_ms: percentile(lat, 99),
    wall_s: wall,
    client_cpu_s: cpu,
  });
}

const MODES = { echo, fanout, idle, handshake };
const args = parseArgs(process.argv.slice(2));
if (!MODES[args.mode]) {
  process.stderr.write(`usage: load.js {${Object.keys(MODES).join(",")}} --url ws://... [options]\n`);
  process.exit(2);
}
MODES[args.mode](args).catch((err) => {
  process.stderr.write(`load.js ${args.mode}: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
