// What the page knows of each conversation: its lines, keyed by message id
// so a message delivered twice (at-least-once delivery, a replay after a
// reconnect, the same message in history) is kept and shown once; which
// delivered messages the user has not seen yet (the unread count, and the
// ids to acknowledge once they are shown); how far back history is loaded.

import type { Message } from "./gen/meshtalk/v1/meshtalk_pb";

export type Kind = "room" | "dm";

/** What a stored message must have to be shown (a Message, or a send's answer). */
export interface Stored {
  id: bigint;
  sender: string;
  body: string;
  sentAtMs: bigint;
  clientMsgId: string;
}

/** One line of a conversation, stored or still being sent. */
export interface Line {
  /** The stored id; absent while the send is under way. */
  id?: bigint;
  sender: string;
  body: string;
  sentAtMs: number;
  /** The client_msg_id a send carries, so a retried send is stored once. */
  clientMsgId?: string;
  /** Set while a send waits for the server, or when it was refused. */
  state?: "sending" | "waiting" | "failed";
  /** Why the server refused it. */
  problem?: string;
}

export class Conversation {
  readonly key: string;
  readonly kind: Kind;
  /** The name as the server spells it. */
  name: string;
  /** Stored lines by id; lines being sent by client_msg_id. */
  private readonly byId = new Map<string, Line>();
  private readonly outgoing = new Map<string, Line>();
  /** Delivered by Subscribe, not yet shown to the user. */
  readonly unseen = new Set<bigint>();
  /** Delivered by Subscribe (these are the ids that are acknowledged). */
  readonly delivered = new Set<bigint>();
  /** The newest page of history has been read. */
  historyLoaded = false;
  /** Nothing older than the oldest line exists. */
  atStart = false;
  loadingOlder = false;

  constructor(kind: Kind, name: string) {
    this.kind = kind;
    this.name = name;
    this.key = keyOf(kind, name);
  }

  get unread(): number {
    return this.unseen.size;
  }

  has(id: bigint): boolean {
    return this.byId.has(id.toString());
  }

  /** Adds a stored message; false when it was there already. */
  add(message: Stored): boolean {
    const id = message.id.toString();
    if (this.byId.has(id)) {
      return false;
    }
    if (message.clientMsgId) {
      this.outgoing.delete(message.clientMsgId);
    }
    this.byId.set(id, {
      id: message.id,
      sender: message.sender,
      body: message.body,
      sentAtMs: Number(message.sentAtMs),
      clientMsgId: message.clientMsgId || undefined,
    });
    return true;
  }

  /** A line this page is sending, shown at once. */
  addOutgoing(line: Line): void {
    if (line.clientMsgId) {
      this.outgoing.set(line.clientMsgId, line);
    }
  }

  dropOutgoing(clientMsgId: string): void {
    this.outgoing.delete(clientMsgId);
  }

  /** Stored lines in id order, then the ones still being sent. */
  lines(): Line[] {
    const stored = [...this.byId.values()].sort((a, b) => compare(a.id!, b.id!));
    return [...stored, ...this.outgoing.values()];
  }

  oldestId(): bigint | null {
    let oldest: bigint | null = null;
    for (const line of this.byId.values()) {
      if (oldest === null || line.id! < oldest) oldest = line.id!;
    }
    return oldest;
  }

  newestId(): bigint {
    let newest = 0n;
    for (const line of this.byId.values()) {
      if (line.id! > newest) newest = line.id!;
    }
    return newest;
  }
}

/** Conversations are keyed by kind and name; names compare case-insensitively. */
export function keyOf(kind: Kind, name: string): string {
  return `${kind === "room" ? "#" : "@"}${name.toLowerCase()}`;
}

/** The conversation a message belongs to, seen by `me`. */
export function conversationOf(message: Message, me: string): { kind: Kind; name: string } | null {
  switch (message.to.case) {
    case "room":
      return { kind: "room", name: message.to.value };
    case "user": {
      const mine = message.sender.toLowerCase() === me.toLowerCase();
      return { kind: "dm", name: mine ? message.to.value : message.sender };
    }
    default:
      return null;
  }
}

function compare(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
