// Building the page's pieces from the state. User text only ever goes in
// through textContent, never as markup.

import type { Conversation, Line } from "./conversations";
import type { User } from "./gen/meshtalk/v1/meshtalk_pb";

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page has no #${id}`);
  return found as T;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A conversation in the sidebar: its name and unread count, a button to open it. */
export function conversationItem(conv: Conversation, current: boolean, open: () => void): HTMLLIElement {
  const item = el("li");
  const button = el("button", "item");
  button.type = "button";
  button.dataset.key = conv.key;
  if (current) button.setAttribute("aria-current", "true");
  button.append(el("span", "name", conv.kind === "room" ? `#${conv.name}` : conv.name));
  if (conv.unread > 0) {
    const badge = el("span", "badge", String(conv.unread));
    badge.setAttribute("aria-label", `${conv.unread} unread`);
    button.append(badge);
  }
  button.addEventListener("click", open);
  item.append(button);
  return item;
}

/** Someone online, a button to write to them (or just their name, for oneself). */
export function onlineItem(user: User, me: boolean, open: () => void): HTMLLIElement {
  const item = el("li");
  const label = [el("span", "dot"), el("span", "name", user.name), el("span", "node", user.node)];
  if (me) {
    const self = el("span", "item self");
    self.append(...label, el("span", "muted", "(you)"));
    item.append(self);
    return item;
  }
  const button = el("button", "item");
  button.type = "button";
  button.dataset.user = user.name;
  button.title = `Write to ${user.name}`;
  button.append(...label);
  button.addEventListener("click", open);
  item.append(button);
  return item;
}

const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const day = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A run of lines by one sender within this long shares one heading. */
const RUN_MS = 5 * 60 * 1000;

/** The conversation's lines, consecutive ones by the same sender grouped. */
export function lineItems(lines: Line[], me: string): HTMLLIElement[] {
  const items: HTMLLIElement[] = [];
  let previous: Line | null = null;
  for (const line of lines) {
    const mine = line.sender.toLowerCase() === me.toLowerCase();
    const classes = ["line"];
    if (mine) classes.push("mine");
    if (line.state) classes.push(line.state);
    const continues =
      previous !== null &&
      previous.sender === line.sender &&
      line.sentAtMs - previous.sentAtMs < RUN_MS;
    if (continues) classes.push("cont");
    const item = el("li", classes.join(" "));
    if (line.id !== undefined) item.dataset.id = line.id.toString();
    if (!continues) {
      const head = el("div", "head");
      const when = el("time", "", time.format(line.sentAtMs));
      when.dateTime = new Date(line.sentAtMs).toISOString();
      when.title = day.format(line.sentAtMs);
      head.append(el("span", "who", line.sender), when);
      item.append(head);
    }
    item.append(el("p", "body", line.body));
    if (line.state === "sending") item.append(el("span", "note", "sending…"));
    if (line.state === "waiting") item.append(el("span", "note", "waiting for the server…"));
    if (line.state === "failed") item.append(el("span", "note", `not sent: ${line.problem ?? ""}`));
    items.push(item);
    previous = line;
  }
  return items;
}

export function emptyNote(text: string): HTMLLIElement {
  return el("li", "empty", text);
}
