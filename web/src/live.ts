// The live stream: Subscribe, kept open. When it breaks (the server
// restarts, the network goes) it is opened again after a growing, jittered
// pause, at once when the browser says it is back online or the user asks.
// Nothing is lost meanwhile: Subscribe starts with everything not yet
// acknowledged, and the page drops what it already has by id.

import { chat, isAuthLost, isRemoved, outage, reason } from "./api";
import type { Event } from "./gen/meshtalk/v1/meshtalk_pb";

export interface LiveHandlers {
  /** The stream is open (its response headers came): the server has us. */
  up(): void;
  /** The stream broke; the next try is `retryInMs` away. */
  down(retryInMs: number, why: string): void;
  event(event: Event): void;
  /**
   * The session is over: the token no longer works, or an operator ended
   * it (a kick or a suspension), whose words are `why`.
   */
  authLost(why?: string): void;
}

/** The first pause, and the longest. */
const FIRST_PAUSE_MS = 500;
const LONGEST_PAUSE_MS = 15_000;

export class Live {
  private stopped = false;
  private current: AbortController | null = null;
  private wake: (() => void) | null = null;
  private readonly handlers: LiveHandlers;
  private readonly onOnline = () => this.retryNow();

  constructor(handlers: LiveHandlers) {
    this.handlers = handlers;
  }

  start(): void {
    window.addEventListener("online", this.onOnline);
    void this.run();
  }

  stop(): void {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    this.current?.abort();
    this.wake?.();
  }

  /** Ends the pause before the next try. */
  retryNow(): void {
    this.wake?.();
  }

  /**
   * Drops the stream and opens another: for when another call found the
   * server unreachable while the stream still looks open (a connection
   * that died without a word).
   */
  restart(): void {
    this.current?.abort();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      const abort = new AbortController();
      this.current = abort;
      let why = "the server ended the stream";
      try {
        const stream = chat.subscribe(
          {},
          {
            signal: abort.signal,
            onHeader: () => {
              failures = 0;
              this.handlers.up();
            },
          },
        );
        for await (const event of stream) {
          this.handlers.event(event);
        }
      } catch (error) {
        if (this.stopped) return;
        if (isAuthLost(error)) {
          this.handlers.authLost();
          return;
        }
        if (isRemoved(error)) {
          this.handlers.authLost(reason(error));
          return;
        }
        why = abort.signal.aborted ? "the connection stopped answering" : outage(error);
      }
      if (this.stopped) return;
      const pause = pauseAfter(failures++);
      this.handlers.down(pause, why);
      await this.sleep(pause);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }
}

/** Doubles from FIRST_PAUSE_MS up to LONGEST_PAUSE_MS, each between half and all of it. */
function pauseAfter(failures: number): number {
  const ceiling = Math.min(LONGEST_PAUSE_MS, FIRST_PAUSE_MS * 2 ** failures);
  return Math.round(ceiling * (0.5 + Math.random() / 2));
}
