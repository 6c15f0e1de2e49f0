// tether.js: the browser (and Node) client of tether's realtime protocol, tether.v1 (docs/protocol.md).
// One ES module, no dependencies. Sections, one concept each: timer (backoff), push (a command and its
// reply), subscription (a group's callbacks and last position), socket (the Tether class: connect,
// heartbeat, reconnect, resubscribe).
//
//   import { Tether } from "/static/tether/tether.js";
//   const tether = new Tether("wss://example.com/ws/", { token });
//   const room = tether.subscribe("chat.lobby", { onMessage: (data) => show(data) });
//   await tether.publish("chat.lobby", { text: "hi" });

export const PROTOCOL = "tether.v1";

/** Close codes after which reconnecting can't help: the login ended (4401) or access is refused (4403). */
export const FATAL_CLOSE_CODES = Object.freeze([4401, 4403]);

/** A command's error reply ({code, message}), or a client-side failure: "timeout", "disconnected", "closed". */
export class TetherError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "TetherError";
    this.code = code;
  }
}

// -- timer: exponential backoff with jitter ---------------------------------------------------------

/**
 * Milliseconds to wait before reconnect attempt `attempt` (0 first): the ceiling doubles from `min` up to
 * `max`, and the wait is drawn between half the ceiling and the ceiling, so clients dropped together
 * (a server restart) don't all come back in the same instant.
 */
export function backoff(attempt, { min = 500, max = 10000 } = {}) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

// -- push: one command and its reply ----------------------------------------------------------------

class Push {
  constructor(frame, timeout, settle) {
    this.frame = frame;
    this.settle = settle; // (error, result) => void, called once
    this.timer = setTimeout(() => this.fail(new TetherError("timeout", `no reply within ${timeout} ms`)), timeout);
  }

  reply(frame) {
    clearTimeout(this.timer);
    if (frame.error) this.settle(new TetherError(frame.error.code, frame.error.message));
    else this.settle(null, frame.result);
  }

  fail(error) {
    clearTimeout(this.timer);
    this.settle(error);
  }
}

// -- subscription: a group's callbacks and the last position seen -------------------------------------

/** A group this client subscribed to; resubscribed after every reconnect, from its last position. */
export class Subscription {
  constructor(tether, group, options) {
    this.tether = tether;
    this.group = group;
    this.options = options;
    this.position = options.since ?? null; // {offset, epoch} of the last message seen, for recovery
    this.state = "pending"; // "pending" | "subscribed" | "closed"
    this.ready = new Promise((resolve, reject) => {
      this._ready = { resolve, reject };
    });
    this.ready.catch(() => {}); // a page that never awaits it must not see an unhandled rejection
  }

  /** Stop receiving the group's messages; resolves once the server confirmed (or at once when offline). */
  async unsubscribe() {
    if (this.state === "closed") return;
    this._close();
    if (this.tether.state === "open") await this.tether._call("unsubscribe", { group: this.group });
  }

  _close() {
    this.state = "closed";
    this.tether._subscriptions.delete(this.group);
  }

  _subscribed(result, resubscribed) {
    this.state = "subscribed";
    // With recovered: true the missed messages are on their way (maybe behind this reply) and move the
    // position themselves. Otherwise the reply's position is the new starting point, unless messages
    // after it arrived first.
    const mine = this.position;
    const theirs = result.position;
    if (!result.recovered && theirs && (!mine || mine.epoch !== theirs.epoch || mine.offset < theirs.offset)) {
      this.position = theirs;
    }
    const info = { group: this.group, position: result.position, recovered: result.recovered, resubscribed };
    this._ready.resolve(info);
    this.options.onSubscribe?.(info);
    this.tether._emit("subscribe", info);
  }

  _failed(error) {
    this._close();
    this._ready.reject(error);
    this.options.onError?.(error);
    this.tether._emit("error", { group: this.group, error });
  }

  _message(frame) {
    const position = frame.position;
    if (position && this.position && position.epoch === this.position.epoch && position.offset <= this.position.offset) {
      return; // already seen (recovery and the live stream may overlap): never delivered twice
    }
    if (position) this.position = position;
    let data = frame.data;
    if (frame.encoding === "base64") data = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    this.options.onMessage?.(data, { group: this.group, position: position ?? null });
  }
}

// -- socket: the connection, its heartbeat, reconnects -----------------------------------------------

const DEFAULTS = {
  token: null, // a string, or a function (maybe async) called before each connection attempt
  heartbeatInterval: 15000, // ms between pings
  heartbeatTimeout: 10000, // ms a ping may go unanswered: a dead connection is noticed within the sum
  timeout: 10000, // ms a command waits for its reply (and for the connection, while offline)
  reconnect: { min: 500, max: 10000 },
  WebSocket: null, // defaults to globalThis.WebSocket
};

/**
 * One connection to a tether realtime endpoint, multiplexing every subscribed group.
 *
 * States ("state" event, `tether.state`): "connecting" (first attempt), "open", "reconnecting" (lost; a
 * retry is scheduled), "closed" (by `close()`, or by the server with 4401/4403: then it does not retry,
 * and the event's `reason` says why).
 */
export class Tether {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options, reconnect: { ...DEFAULTS.reconnect, ...options.reconnect } };
    this.state = "connecting";
    this._subscriptions = new Map(); // group -> Subscription, in subscription order
    this._pushes = new Map(); // id -> Push in flight
    this._queue = []; // pushes waiting for the connection
    this._listeners = new Map();
    this._nextId = 0;
    this._attempt = 0;
    this._ws = null;
    this._retry = null;
    this._heartbeat = null;
    this._connect();
  }

  /** The subprotocol the server selected ("tether.v1" while open), or "" without a connection. */
  get protocol() {
    return this._ws?.protocol ?? "";
  }

  /** Call `listener(detail)` on `event` ("state", "subscribe", "error"); returns a function that stops it. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this._listeners.get(event)?.delete(listener);
  }

  /** Subscribe to `group`; `since` (a position) asks for what came after it. Idempotent per group. */
  subscribe(group, options = {}) {
    const existing = this._subscriptions.get(group);
    if (existing) return existing;
    const subscription = new Subscription(this, group, options);
    this._subscriptions.set(group, subscription);
    if (this.state === "open") this._subscribe(subscription, false);
    return subscription;
  }

  /** Publish `data` (object, array or string) to `group`; resolves with {group, position}. */
  publish(group, data) {
    return this._call("publish", { group, data });
  }

  /** The group's stored messages after `since` (up to `limit`): {messages, position, recovered}. */
  history(group, { since = null, limit = null } = {}) {
    return this._call("history", { group, since, limit });
  }

  /** Who is in the group now: {group, members: [{user, connection, info}]}. */
  presence(group) {
    return this._call("presence", { group });
  }

  /** Close for good: no reconnect; pending commands fail with "closed". */
  close(code = 1000, reason = "closed by the client") {
    this._setState("closed", { code, reason });
    this._teardown(new TetherError("closed", reason));
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.close(code);
    }
  }

  // -- internals ---------------------------------------------------------------------------------

  _emit(event, detail) {
    for (const listener of this._listeners.get(event) ?? []) {
      try {
        listener(detail);
      } catch (error) {
        console.error("tether: a listener failed", error);
      }
    }
  }

  _setState(state, detail = {}) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  async _connect() {
    const protocols = [PROTOCOL];
    let token = this.options.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (error) {
      this._lost({ code: 1006, reason: `the token function failed: ${error}` });
      return;
    }
    if (this.state === "closed") return;
    if (token) protocols.push(`bearer.${token}`);
    const Socket = this.options.WebSocket ?? globalThis.WebSocket;
    const ws = new Socket(this.url, protocols);
    this._ws = ws;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._attempt = 0;
      this._setState("open");
      this._startHeartbeat();
      for (const subscription of this._subscriptions.values()) this._subscribe(subscription, subscription.state === "subscribed");
      const queued = this._queue.splice(0);
      for (const push of queued) this._send(push);
    };
    ws.onmessage = (event) => {
      if (ws === this._ws) this._receive(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this._ws) {
        this._lost({ code: event.code, reason: event.reason || "connection closed", closeReason: event.reason });
      }
    };
    ws.onerror = () => {
      // Browsers follow an error with a close event; Node 20's WebSocket doesn't when the connection
      // fails, so a failed attempt is taken as lost here (the close event after it is then ignored).
      if (ws === this._ws && ws.readyState !== 1) this._lost({ code: 1006, reason: "connection failed" });
    };
  }

  _lost({ code, reason, closeReason = "" }) {
    this._stopHeartbeat();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(); // a dead connection may never finish its close: it is abandoned, not awaited
      } catch {}
    }
    for (const push of this._pushes.values()) push.fail(new TetherError("disconnected", reason));
    this._pushes.clear();
    if (this.state === "closed") return;
    if (FATAL_CLOSE_CODES.includes(code)) {
      const why = code === 4401 ? "the login ended or the token is invalid: sign in again" : "access refused";
      this._setState("closed", { code, reason: `${reason} (${why}); not reconnecting`, closeReason });
      this._teardown(new TetherError("closed", reason));
      return;
    }
    const delay = backoff(this._attempt++, this.options.reconnect);
    this._setState("reconnecting", { code, reason, closeReason, retryIn: delay });
    this._retry = setTimeout(() => {
      this._retry = null;
      this._connect();
    }, delay);
  }

  _teardown(error) {
    clearTimeout(this._retry);
    this._retry = null;
    this._stopHeartbeat();
    for (const push of [...this._pushes.values(), ...this._queue]) push.fail(error);
    this._pushes.clear();
    this._queue = [];
  }

  _startHeartbeat() {
    const { heartbeatInterval, heartbeatTimeout } = this.options;
    this._stopHeartbeat();
    this._heartbeat = setInterval(() => {
      const ws = this._ws;
      this._call("ping", {}, heartbeatTimeout).catch((error) => {
        if (ws === this._ws && error.code === "timeout") this._lost({ code: 1006, reason: "heartbeat timeout" });
      });
    }, heartbeatInterval);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeat);
    this._heartbeat = null;
  }

  _subscribe(subscription, resubscribed) {
    const fields = { group: subscription.group };
    if (subscription.position) fields.since = subscription.position;
    this._call("subscribe", fields).then(
      (result) => {
        if (this._subscriptions.get(subscription.group) === subscription) subscription._subscribed(result, resubscribed);
      },
      (error) => {
        if (error.code !== "disconnected" && this._subscriptions.get(subscription.group) === subscription) {
          subscription._failed(error); // refused (forbidden, a limit...): not retried
        }
      },
    );
  }

  _call(type, fields = {}, timeout = this.options.timeout) {
    if (this.state === "closed") return Promise.reject(new TetherError("closed", "the client is closed"));
    const frame = { id: ++this._nextId, type, ...fields };
    return new Promise((resolve, reject) => {
      const push = new Push(frame, timeout, (error, result) => {
        this._pushes.delete(frame.id);
        const queued = this._queue.indexOf(push);
        if (queued >= 0) this._queue.splice(queued, 1);
        if (error) reject(error);
        else resolve(result);
      });
      if (this.state === "open") this._send(push);
      else this._queue.push(push);
    });
  }

  _send(push) {
    this._pushes.set(push.frame.id, push);
    this._ws.send(JSON.stringify(push.frame));
  }

  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.error("tether: a frame that is not JSON", text);
      return;
    }
    if (frame.type === undefined) {
      this._pushes.get(frame.id)?.reply(frame);
      return;
    }
    const subscription = this._subscriptions.get(frame.group);
    if (!subscription) return;
    if (frame.type === "message") subscription._message(frame);
    else if (frame.type === "join") subscription.options.onJoin?.(frame.member);
    else if (frame.type === "leave") subscription.options.onLeave?.(frame.member);
    else if (frame.type === "unsubscribed") {
      subscription._close();
      subscription.options.onUnsubscribe?.(frame.reason);
      this._emit("unsubscribe", { group: frame.group, reason: frame.reason });
    }
  }
}
