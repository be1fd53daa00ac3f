// Scrolling back through a conversation's history. GetMessages reads
// strictly *after* a cursor (oldest first, or the newest `limit` with
// `newest`), and ids are shared by every conversation on the server, so
// "the page before the oldest line shown" is found by probing: look back
// a window of ids, take the window whole when it holds no more than is
// wanted, and halve it when it holds more. Each probe reads at most
// `want + 1` messages, and a page takes a few probes (logarithmic in the
// distance between the conversation's messages).

import type { Message } from "./gen/meshtalk/v1/meshtalk_pb";

/** Reads up to `limit` messages with ids above `after`, oldest first. */
export type ReadAfter = (after: bigint, limit: number) => Promise<Message[]>;

export interface Page {
  /** Oldest first; every message of the conversation just below `before`. */
  messages: Message[];
  /** True when nothing older exists. */
  atStart: boolean;
}

/** The first window looked at, in ids per message wanted. */
const FIRST_WINDOW = 8n;
/** A bound on probes per page, so a page always ends. */
const MAX_PROBES = 64;

/** Up to `want` messages of the conversation older than `before`. */
export async function olderThan(read: ReadAfter, before: bigint, want: number): Promise<Page> {
  const found: Message[] = [];
  let need = want;
  // Every message with an id in [high, before) has been collected.
  let high = before;
  // A cursor known to have more than `need` messages between it and `high`.
  let crowded: bigint | null = null;
  let window = BigInt(want) * FIRST_WINDOW;
  for (let probe = 0; probe < MAX_PROBES && need > 0 && high > 1n; probe++) {
    let after: bigint;
    if (crowded !== null) {
      after = (crowded + high) / 2n;
    } else {
      after = high > window ? high - window : 0n;
    }
    const below = (await read(after, need + 1)).filter((m) => m.id < high);
    if (below.length > need) {
      // Too many between `after` and `high`: look at a narrower window.
      crowded = after;
      continue;
    }
    // `below` is every message with an id in (after, high): keep it and
    // look further back.
    found.unshift(...below);
    need -= below.length;
    high = after + 1n;
    if (after === 0n) {
      return { messages: found, atStart: true };
    }
    window *= 4n;
  }
  return { messages: found, atStart: high <= 1n };
}
