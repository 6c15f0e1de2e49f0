// Types of tether.js, the client of tether's realtime protocol tether.v1 (docs/protocol.md).

export declare const PROTOCOL: "tether.v1";
/** Close codes after which the client stops reconnecting: 4401 (sign in again) and 4403 (refused). */
export declare const FATAL_CLOSE_CODES: readonly number[];

/** Where a message sits in its group's history; give it back as `since` to get what came after. */
export interface Position {
  offset: number;
  epoch: string;
}

/** A command's error reply, or "timeout" / "disconnected" / "closed" from the client itself. */
export declare class TetherError extends Error {
  readonly code: string;
  constructor(code: string, message: string);
}

/** Milliseconds before reconnect attempt `attempt`: between half and all of min * 2^attempt, capped at max. */
export declare function backoff(attempt: number, options?: { min?: number; max?: number }): number;

export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface StateEvent {
  state: State;
  /** The close code that ended the last connection ("reconnecting", "closed"). */
  code?: number;
  reason?: string;
  /** The close frame's reason exactly as the server sent it ("" when it sent none or there was no close frame). */
  closeReason?: string;
  /** Milliseconds until the next attempt ("reconnecting"). */
  retryIn?: number;
}

export interface SubscribeInfo {
  group: string;
  /** The group's newest position (null for a group without history). */
  position: Position | null;
  /** False when `since` was given but the messages after it are gone: reload the state from the server. */
  recovered: boolean;
  /** True when this is the automatic resubscription after a reconnect. */
  resubscribed: boolean;
}

export interface Member {
  user: string | null;
  connection: string;
  info: unknown;
}

export interface MessageMeta {
  group: string;
  position: Position | null;
}

export interface SubscribeOptions<T = unknown> {
  /** Ask for the messages after this position (groups with history). */
  since?: Position | null;
  onMessage?: (data: T, meta: MessageMeta) => void;
  onJoin?: (member: Member) => void;
  onLeave?: (member: Member) => void;
  /** After each (re)subscription; check `recovered`. */
  onSubscribe?: (info: SubscribeInfo) => void;
  /** The server ended the subscription (e.g. permission revoked). */
  onUnsubscribe?: (reason: string) => void;
  /** The subscription was refused ("forbidden", "too_many_subscriptions", ...). */
  onError?: (error: TetherError) => void;
}

export declare class Subscription<T = unknown> {
  readonly group: string;
  /** The position of the last message seen. */
  readonly position: Position | null;
  readonly state: "pending" | "subscribed" | "closed";
  /** Resolves on the first subscription, rejects with a TetherError if refused. */
  readonly ready: Promise<SubscribeInfo>;
  unsubscribe(): Promise<void>;
}

export interface TetherOptions {
  /** A token from tether.auth.issue_token(), or a function (maybe async) called before each attempt. */
  token?: string | null | (() => string | null | Promise<string | null>);
  /** Milliseconds between pings (default 15000). */
  heartbeatInterval?: number;
  /** Milliseconds a ping may go unanswered (default 10000): a dead connection is noticed within the sum. */
  heartbeatTimeout?: number;
  /** Milliseconds a command waits for its reply (default 10000). */
  timeout?: number;
  /** Reconnect backoff bounds in milliseconds (default {min: 500, max: 10000}). */
  reconnect?: { min?: number; max?: number };
  /** A WebSocket class, where there is no global one. */
  WebSocket?: typeof WebSocket;
}

export interface HistoryMessage<T = unknown> {
  data: T;
  position: Position;
}

export interface HistoryPage<T = unknown> {
  messages: HistoryMessage<T>[];
  position: Position;
  recovered: boolean;
}

export declare class Tether {
  readonly url: string;
  readonly state: State;
  /** The subprotocol the server selected ("tether.v1" while open), or "" without a connection. */
  readonly protocol: string;
  constructor(url: string, options?: TetherOptions);
  on(event: "state", listener: (detail: StateEvent) => void): () => void;
  on(event: "subscribe", listener: (detail: SubscribeInfo) => void): () => void;
  on(event: "unsubscribe", listener: (detail: { group: string; reason: string }) => void): () => void;
  on(event: "error", listener: (detail: { group: string; error: TetherError }) => void): () => void;
  subscribe<T = unknown>(group: string, options?: SubscribeOptions<T>): Subscription<T>;
  publish(group: string, data: object | unknown[] | string): Promise<{ group: string; position: Position | null }>;
  history<T = unknown>(group: string, options?: { since?: Position | null; limit?: number | null }): Promise<HistoryPage<T>>;
  presence(group: string): Promise<{ group: string; members: Member[] }>;
  close(code?: number, reason?: string): void;
}
