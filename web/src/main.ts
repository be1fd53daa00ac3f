// The meshtalk web client: logging in, the conversations, the live stream.
//
// Delivery as the page sees it: Subscribe brings every message addressed
// to this session, first what was never acknowledged, then live ones. A
// message is acknowledged (Ack) once it has been on screen: its
// conversation open in a visible tab. Until then it counts as unread, and
// if the page goes away first the server delivers it again next time. The
// page keeps messages by id, so a message delivered twice shows once.
//
// The token lives in sessionStorage: a reload of the tab stays logged in,
// closing the tab forgets it, and other tabs have their own sessions.

import "./style.css";

import { accounts, chat, isAuthLost, isUnreachable, reason, UNARY, useToken } from "./api";
import { Conversation, conversationOf, keyOf, type Kind, type Line } from "./conversations";
import type { Event, Message, SendRequest, User } from "./gen/meshtalk/v1/meshtalk_pb";
import { olderThan } from "./history";
import { Live } from "./live";
import { byId, conversationItem, emptyNote, lineItems, onlineItem } from "./view";

/** Messages read per page of history. */
const PAGE = 50;
/** Most ids one Ack carries (the server's bound is 10,000). */
const ACK_BATCH = 5000;
/** Acknowledgements wait this long to go out together. */
const ACK_DELAY_MS = 100;
/** How often the list of who is online is read again. */
const WHO_EVERY_MS = 15_000;
/** Within this many pixels of the top, the log reads older history. */
const NEAR_TOP_PX = 80;

const SESSION_KEY = "meshtalk.session";
const OPEN_KEY = "meshtalk.open";
const narrow = window.matchMedia("(max-width: 720px)");

interface Session {
  name: string;
  token: string;
}

/** A send waiting its turn (sends go one at a time, in the order typed). */
interface Outgoing {
  conv: Conversation;
  line: Line;
}

class App {
  private me = "";
  private readonly conversations = new Map<string, Conversation>();
  private current: Conversation | null = null;
  private live: Live | null = null;
  private connected = false;
  private online: User[] = [];
  private otherRooms: string[] = [];
  private readonly outbox: Outgoing[] = [];
  private sending = false;
  private acks: bigint[] = [];
  private ackTimer: number | undefined;
  private whoTimer: number | undefined;
  private countdown: number | undefined;
  private whoSoon: number | undefined;

  boot(): void {
    byId("login-form").addEventListener("submit", (e) => void this.logIn(e as SubmitEvent));
    byId("logout").addEventListener("click", () => void this.logOut());
    byId("retry").addEventListener("click", () => this.live?.retryNow());
    byId("composer").addEventListener("submit", (e) => this.compose(e));
    byId("join-form").addEventListener("submit", (e) => void this.join(e));
    byId("dm-form").addEventListener("submit", (e) => this.startDm(e));
    byId("leave").addEventListener("click", () => void this.leave());
    byId("older").addEventListener("click", () => void this.loadOlder());
    byId("show-list").addEventListener("click", () => this.showList());
    byId("log").addEventListener("scroll", () => this.scrolled());
    document.addEventListener("keydown", (e) => this.key(e));
    document.addEventListener("visibilitychange", () => this.seen());
    narrow.addEventListener("change", () => this.seen());

    const saved = readSession();
    if (saved) {
      this.enter(saved);
    } else {
      this.showLogin("");
    }
  }

  // --- logging in and out ---

  private showLogin(problem: string): void {
    byId("chat").hidden = true;
    byId("banner").hidden = true;
    byId("login").hidden = false;
    byId("login-error").textContent = problem;
    byId<HTMLInputElement>("name").focus();
    document.title = "meshtalk";
  }

  private async logIn(event: SubmitEvent): Promise<void> {
    event.preventDefault();
    const register = event.submitter?.id === "register-button";
    const nameInput = byId<HTMLInputElement>("name");
    const passwordInput = byId<HTMLInputElement>("password");
    const name = nameInput.value.trim();
    const password = passwordInput.value;
    const problem = byId("login-error");
    if (!name || !password) {
      problem.textContent = "Enter a name and a password.";
      return;
    }
    const form = byId("login-form");
    form.setAttribute("aria-busy", "true");
    problem.textContent = register ? "Registering…" : "Logging in…";
    try {
      if (register) {
        await accounts.register({ name, password }, UNARY);
      }
      const answer = await accounts.login({ name, password }, UNARY);
      passwordInput.value = "";
      problem.textContent = "";
      const session = { name: answer.name, token: answer.token };
      sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
      this.enter(session);
    } catch (error) {
      problem.textContent = `${register ? "Could not register" : "Could not log in"}: ${reason(error)}`;
    } finally {
      form.removeAttribute("aria-busy");
    }
  }

  private enter(session: Session): void {
    useToken(session.token);
    this.me = session.name;
    byId("me").textContent = session.name;
    byId("login").hidden = true;
    byId("chat").hidden = false;
    byId("chat").dataset.connection = "connecting";
    this.status("connecting…");
    for (const name of knownDms(this.me)) {
      this.conversation("dm", name);
    }
    this.conversation("room", "lobby");
    this.live = new Live({
      up: () => this.up(),
      down: (ms, why) => this.down(ms, why),
      event: (event) => this.event(event),
      authLost: (why) => this.leaveSession(why ?? "Your session has ended: log in again."),
    });
    this.live.start();
    this.whoTimer = window.setInterval(() => void this.refreshWho(), WHO_EVERY_MS);
    const open = sessionStorage.getItem(OPEN_KEY);
    this.open(this.conversations.get(open ?? "") ?? this.conversation("room", "lobby"));
  }

  private async logOut(): Promise<void> {
    try {
      await accounts.logout({}, UNARY);
    } catch {
      // The token is forgotten here either way; the server drops it when it can.
    }
    this.leaveSession("");
  }

  /** Forgets the session and everything shown, back to the login form. */
  private leaveSession(problem: string): void {
    this.live?.stop();
    this.live = null;
    window.clearInterval(this.whoTimer);
    window.clearInterval(this.countdown);
    window.clearTimeout(this.ackTimer);
    window.clearTimeout(this.whoSoon);
    this.ackTimer = undefined;
    this.whoSoon = undefined;
    useToken(null);
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(OPEN_KEY);
    this.conversations.clear();
    this.current = null;
    this.outbox.length = 0;
    this.acks = [];
    this.online = [];
    this.connected = false;
    delete byId("chat").dataset.connection;
    byId("lines").replaceChildren();
    this.showLogin(problem);
  }

  // --- the live stream ---

  private up(): void {
    this.connected = true;
    byId("chat").dataset.connection = "up";
    window.clearInterval(this.countdown);
    byId("banner").hidden = true;
    this.status("");
    void this.refreshRooms();
    void this.refreshWho();
    void this.pump();
    this.flushAcks();
    const conv = this.current;
    if (conv) {
      void (conv.historyLoaded ? this.catchUp(conv) : this.loadNewest(conv));
    }
  }

  private down(retryInMs: number, why: string): void {
    this.connected = false;
    byId("chat").dataset.connection = "down";
    this.status("offline");
    const banner = byId("banner");
    const text = byId("banner-text");
    const due = Date.now() + retryInMs;
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      text.textContent = `Disconnected from the server (${why}). Reconnecting in ${seconds} s…`;
    };
    tick();
    window.clearInterval(this.countdown);
    this.countdown = window.setInterval(tick, 1000);
    banner.hidden = false;
  }

  private event(event: Event): void {
    switch (event.kind.case) {
      case "message":
        this.deliver(event.kind.value);
        break;
      case "notice":
        this.status(event.kind.value.text);
        break;
    }
  }

  /** A message from Subscribe: kept once, shown or counted unread, acknowledged once shown. */
  private deliver(message: Message): void {
    const where = conversationOf(message, this.me);
    if (!where) return;
    const conv = this.conversation(where.kind, where.name);
    this.noticeSender(message.sender);
    conv.delivered.add(message.id);
    const added = conv.add(message);
    if (this.showing(conv)) {
      if (added) this.renderLog("follow");
      this.ack(message.id);
    } else if (added) {
      conv.unseen.add(message.id);
      this.renderSidebar();
    } else if (!conv.unseen.has(message.id)) {
      // Already on screen earlier (from history): shown, so acknowledged.
      this.ack(message.id);
    }
  }

  // --- acknowledgements ---

  private ack(id: bigint): void {
    this.acks.push(id);
    if (this.ackTimer === undefined) {
      this.ackTimer = window.setTimeout(() => this.flushAcks(), ACK_DELAY_MS);
    }
  }

  private flushAcks(): void {
    window.clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    if (!this.connected || this.acks.length === 0) return;
    const ids = this.acks.splice(0, ACK_BATCH);
    chat.ack({ ids }, UNARY).then(
      () => {
        if (this.acks.length > 0) this.flushAcks();
      },
      (error: unknown) => {
        // Kept for the next connection; if the page goes first, the
        // server delivers them again and they are dropped as repeats.
        if (isUnreachable(error)) this.acks.unshift(...ids);
      },
    );
  }

  /** Whether the user can see `conv` right now. */
  private showing(conv: Conversation): boolean {
    return (
      conv === this.current &&
      document.visibilityState === "visible" &&
      !(narrow.matches && byId("chat").dataset.view === "list")
    );
  }

  /** The open conversation's unread messages are on screen now: acknowledge them. */
  private seen(): void {
    const conv = this.current;
    if (!conv || !this.showing(conv) || conv.unseen.size === 0) return;
    for (const id of conv.unseen) this.ack(id);
    conv.unseen.clear();
    this.renderSidebar();
  }

  // --- conversations ---

  private conversation(kind: Kind, name: string): Conversation {
    const key = keyOf(kind, name);
    let conv = this.conversations.get(key);
    if (!conv) {
      conv = new Conversation(kind, name);
      this.conversations.set(key, conv);
      if (kind === "dm") rememberDms(this.me, this.dmNames());
      this.renderSidebar();
    }
    return conv;
  }

  private dmNames(): string[] {
    return [...this.conversations.values()].filter((c) => c.kind === "dm").map((c) => c.name);
  }

  private open(conv: Conversation): void {
    this.current = conv;
    sessionStorage.setItem(OPEN_KEY, conv.key);
    byId("chat").dataset.view = "chat";
    byId("title").textContent = conv.kind === "room" ? `#${conv.name}` : conv.name;
    byId("leave").hidden = conv.kind !== "room" || conv.name.toLowerCase() === "lobby";
    byId<HTMLInputElement>("say").placeholder =
      conv.kind === "room" ? `Message #${conv.name}` : `Message ${conv.name}`;
    this.seen();
    this.renderSidebar();
    this.renderLog("bottom");
    if (!conv.historyLoaded && this.connected) void this.loadNewest(conv);
  }

  private showList(): void {
    byId("chat").dataset.view = "list";
    byId("sidebar").querySelector<HTMLElement>("[aria-current] , .item")?.focus();
  }

  /** Alt+Up and Alt+Down move between conversations; Escape goes to the message box. */
  private key(event: KeyboardEvent): void {
    if (byId("chat").hidden) return;
    if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
      event.preventDefault();
      const order = this.ordered();
      const at = this.current ? order.indexOf(this.current) : -1;
      const step = event.key === "ArrowUp" ? -1 : 1;
      const next = order[(at + step + order.length) % order.length];
      if (next) {
        this.open(next);
        byId("say").focus();
      }
    } else if (event.key === "Escape") {
      byId("chat").dataset.view = "chat";
      this.seen();
      byId("say").focus();
    }
  }

  /** Rooms by name, then direct conversations by name: the sidebar's order. */
  private ordered(): Conversation[] {
    const all = [...this.conversations.values()];
    const byName = (a: Conversation, b: Conversation) => a.name.localeCompare(b.name);
    return [
      ...all.filter((c) => c.kind === "room").sort(byName),
      ...all.filter((c) => c.kind === "dm").sort(byName),
    ];
  }

  private async join(event: SubmitEvent | globalThis.Event): Promise<void> {
    event.preventDefault();
    const input = byId<HTMLInputElement>("join-room");
    const room = input.value.trim().replace(/^#/, "");
    if (!room) return;
    try {
      const answer = await chat.joinRoom({ room }, UNARY);
      input.value = "";
      this.open(this.conversation("room", answer.room));
      void this.refreshRooms();
      byId("say").focus();
    } catch (error) {
      this.status(`could not join #${room}: ${reason(error)}`);
    }
  }

  private async leave(): Promise<void> {
    const conv = this.current;
    if (!conv || conv.kind !== "room") return;
    try {
      await chat.leaveRoom({ room: conv.name }, UNARY);
      this.conversations.delete(conv.key);
      this.open(this.conversation("room", "lobby"));
      void this.refreshRooms();
    } catch (error) {
      this.status(`could not leave #${conv.name}: ${reason(error)}`);
    }
  }

  private startDm(event: globalThis.Event): void {
    event.preventDefault();
    const input = byId<HTMLInputElement>("dm-user");
    const name = input.value.trim().replace(/^@/, "");
    if (!name) return;
    input.value = "";
    this.open(this.conversation("dm", name));
    byId("say").focus();
  }

  private async refreshRooms(): Promise<void> {
    try {
      const { rooms } = await chat.listRooms({}, UNARY);
      const joined = new Set<string>();
      for (const room of rooms.filter((r) => r.joined)) {
        joined.add(keyOf("room", room.name));
        const conv = this.conversation("room", room.name);
        conv.name = room.name;
      }
      // Rooms left elsewhere (another tab, another client) go.
      for (const conv of [...this.conversations.values()]) {
        if (conv.kind === "room" && !joined.has(conv.key) && conv !== this.current) {
          this.conversations.delete(conv.key);
        }
      }
      this.otherRooms = rooms.filter((r) => !r.joined).map((r) => r.name);
      this.renderSidebar();
    } catch (error) {
      this.trouble(error);
    }
  }

  private async refreshWho(): Promise<void> {
    if (!this.connected) return;
    try {
      const answer = await chat.who({}, UNARY);
      this.online = answer.users;
      this.renderSidebar();
    } catch (error) {
      this.trouble(error);
    }
  }

  /** Someone not listed online just spoke: read who is online again, soon. */
  private noticeSender(sender: string): void {
    const name = sender.toLowerCase();
    if (name === this.me.toLowerCase() || this.whoSoon !== undefined) return;
    if (this.online.some((user) => user.name.toLowerCase() === name)) return;
    this.whoSoon = window.setTimeout(() => {
      this.whoSoon = undefined;
      void this.refreshWho();
    }, 1000);
  }

  /** A call failed: a lost session ends it; an unreachable server restarts the stream. */
  private trouble(error: unknown): void {
    if (isAuthLost(error)) {
      this.leaveSession("Your session has ended: log in again.");
    } else if (isUnreachable(error) && this.connected) {
      this.live?.restart();
    }
  }

  // --- history ---

  private request(conv: Conversation, afterId: bigint, limit: number, newest: boolean) {
    const conversation =
      conv.kind === "room"
        ? { case: "room" as const, value: conv.name }
        : { case: "user" as const, value: conv.name };
    return chat.getMessages({ conversation, afterId, limit, newest }, UNARY);
  }

  private async read(conv: Conversation, afterId: bigint, limit: number, newest: boolean): Promise<Message[]> {
    const messages: Message[] = [];
    for await (const message of this.request(conv, afterId, limit, newest)) {
      messages.push(message);
    }
    return messages;
  }

  /** The newest page of a conversation, when it is first opened. */
  private async loadNewest(conv: Conversation): Promise<void> {
    try {
      const messages = await this.read(conv, 0n, PAGE, true);
      for (const message of messages) conv.add(message);
      conv.historyLoaded = true;
      conv.atStart = messages.length < PAGE;
      if (conv === this.current) this.renderLog("bottom");
    } catch (error) {
      this.historyTrouble(conv, error);
    }
  }

  /** After a reconnect: what the open conversation missed, in case another session acknowledged it. */
  private async catchUp(conv: Conversation): Promise<void> {
    try {
      const messages = await this.read(conv, conv.newestId(), 1000, false);
      let added = false;
      for (const message of messages) added = conv.add(message) || added;
      if (added && conv === this.current) this.renderLog("follow");
    } catch (error) {
      this.historyTrouble(conv, error);
    }
  }

  /** The page before the oldest line shown. */
  private async loadOlder(): Promise<void> {
    const conv = this.current;
    if (!conv || !conv.historyLoaded || conv.atStart || conv.loadingOlder) return;
    const oldest = conv.oldestId();
    if (oldest === null) {
      conv.atStart = true;
      this.renderLog("keep");
      return;
    }
    conv.loadingOlder = true;
    this.renderLog("keep");
    try {
      const page = await olderThan((after, limit) => this.read(conv, after, limit, false), oldest, PAGE);
      for (const message of page.messages) conv.add(message);
      conv.atStart = page.atStart;
    } catch (error) {
      this.historyTrouble(conv, error);
    } finally {
      conv.loadingOlder = false;
      if (conv === this.current) this.renderLog("keep");
    }
  }

  private historyTrouble(conv: Conversation, error: unknown): void {
    if (isAuthLost(error) || isUnreachable(error)) {
      this.trouble(error);
      return;
    }
    // Refused for good (no such user, not a member): nothing to wait for.
    conv.historyLoaded = true;
    conv.atStart = true;
    if (conv === this.current) this.renderLog("keep");
    this.status(`cannot read ${conv.kind === "room" ? "#" : ""}${conv.name}: ${reason(error)}`);
  }

  private scrolled(): void {
    if (byId("log").scrollTop < NEAR_TOP_PX) void this.loadOlder();
  }

  // --- sending ---

  private compose(event: globalThis.Event): void {
    event.preventDefault();
    const input = byId<HTMLInputElement>("say");
    const body = input.value;
    const conv = this.current;
    if (!conv || body.trim() === "") return;
    input.value = "";
    const line: Line = {
      sender: this.me,
      body,
      sentAtMs: Date.now(),
      clientMsgId: crypto.randomUUID(),
      state: this.connected ? "sending" : "waiting",
    };
    conv.addOutgoing(line);
    this.outbox.push({ conv, line });
    this.renderLog("bottom");
    void this.pump();
  }

  /**
   * Sends what waits, one at a time and in order. A send the server could
   * not be reached for waits for the next connection and goes again with
   * the same client_msg_id, which the server stores once however often it
   * comes.
   */
  private async pump(): Promise<void> {
    if (this.sending || !this.connected) return;
    this.sending = true;
    try {
      while (this.outbox.length > 0 && this.connected) {
        const { conv, line } = this.outbox[0];
        line.state = "sending";
        const to: SendRequest["to"] =
          conv.kind === "room" ? { case: "room", value: conv.name } : { case: "user", value: conv.name };
        try {
          const sent = await chat.send({ to, body: line.body, clientMsgId: line.clientMsgId }, UNARY);
          this.outbox.shift();
          conv.add({
            id: sent.id,
            sender: this.me,
            body: line.body,
            sentAtMs: sent.sentAtMs,
            clientMsgId: line.clientMsgId ?? "",
          });
        } catch (error) {
          if (isAuthLost(error) || isUnreachable(error)) {
            for (const waiting of this.outbox) waiting.line.state = "waiting";
            if (conv === this.current) this.renderLog("follow");
            this.trouble(error);
            return;
          }
          this.outbox.shift();
          line.state = "failed";
          line.problem = reason(error);
        }
        if (conv === this.current) this.renderLog("follow");
      }
    } finally {
      this.sending = false;
    }
  }

  // --- drawing ---

  private status(text: string): void {
    byId("status").textContent = text;
  }

  private renderSidebar(): void {
    const rooms = byId("rooms");
    const dms = byId("dms");
    const roomItems: HTMLLIElement[] = [];
    const dmItems: HTMLLIElement[] = [];
    let unread = 0;
    for (const conv of this.ordered()) {
      unread += conv.unread;
      const item = conversationItem(conv, conv === this.current, () => {
        this.open(conv);
        byId("say").focus();
      });
      (conv.kind === "room" ? roomItems : dmItems).push(item);
    }
    // Keep focus on the same entry across a redraw (for keyboard users).
    const focused = (document.activeElement as HTMLElement | null)?.dataset?.key;
    rooms.replaceChildren(...roomItems);
    dms.replaceChildren(...(dmItems.length > 0 ? dmItems : [emptyNote("No conversations yet.")]));
    if (focused) byId("sidebar").querySelector<HTMLElement>(`[data-key="${CSS.escape(focused)}"]`)?.focus();

    byId("room-names").replaceChildren(
      ...this.otherRooms.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        return option;
      }),
    );
    const me = this.me.toLowerCase();
    byId("online").replaceChildren(
      ...this.online.map((user) =>
        onlineItem(user, user.name.toLowerCase() === me, () => {
          this.open(this.conversation("dm", user.name));
          byId("say").focus();
        }),
      ),
    );
    byId("online-count").textContent = this.online.length > 0 ? `(${this.online.length})` : "";
    const total = byId("total-unread");
    total.hidden = unread === 0;
    total.textContent = String(unread);
    document.title = unread > 0 ? `(${unread}) meshtalk` : "meshtalk";
  }

  /**
   * Draws the open conversation. `bottom` scrolls to the newest line;
   * `follow` does so only if the reader was already there; `keep` holds
   * the lines in view where they are (as older ones are added above).
   */
  private renderLog(scroll: "bottom" | "follow" | "keep"): void {
    const conv = this.current;
    const log = byId("log");
    const fromBottom = log.scrollHeight - log.scrollTop;
    const atBottom = fromBottom - log.clientHeight < 40;
    if (!conv) return;
    const lines = conv.lines();
    byId("lines").replaceChildren(
      ...(lines.length > 0
        ? lineItems(lines, this.me)
        : [emptyNote(conv.historyLoaded ? "No messages yet: say hello." : "Loading…")]),
    );
    const older = byId<HTMLButtonElement>("older");
    older.hidden = !conv.historyLoaded || conv.atStart;
    older.disabled = conv.loadingOlder;
    older.textContent = conv.loadingOlder ? "Loading…" : "Load earlier messages";
    byId("start").hidden = !(conv.historyLoaded && conv.atStart && lines.length > 0);
    if (scroll === "bottom" || (scroll === "follow" && atBottom)) {
      log.scrollTop = log.scrollHeight;
    } else if (scroll === "keep") {
      log.scrollTop = log.scrollHeight - fromBottom;
    }
  }
}

function readSession(): Session | null {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null") as Session | null;
    return saved && typeof saved.token === "string" && typeof saved.name === "string" ? saved : null;
  } catch {
    return null;
  }
}

/** The people this account had direct conversations with in this browser. */
function knownDms(me: string): string[] {
  try {
    const names = JSON.parse(localStorage.getItem(`meshtalk.dms.${me.toLowerCase()}`) ?? "[]");
    return Array.isArray(names) ? names.filter((n): n is string => typeof n === "string") : [];
  } catch {
    return [];
  }
}

function rememberDms(me: string, names: string[]): void {
  try {
    localStorage.setItem(`meshtalk.dms.${me.toLowerCase()}`, JSON.stringify(names));
  } catch {
    // Storage full or refused: the list is only a convenience.
  }
}

new App().boot();
