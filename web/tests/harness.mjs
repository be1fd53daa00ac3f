// What the browser scenarios share: Chromium started the way this machine
// allows, a browser user (one context each: its own storage, its own
// session), a line-protocol user on a raw socket, and the talk with the
// Rust test that owns the server (a line on stdout asks, a line on stdin
// answers).

import net from "node:net";
import readline from "node:readline";
import { chromium } from "playwright-core";

export const WEB = need("MESHTALK_WEB_URL");
export const TALK = need("MESHTALK_TALK_ADDR");
export const PASSWORD = "correct-horse-battery-staple";

/** How long a user-visible change may take to show. */
const PATIENCE_MS = 20_000;

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/browser.rs`);
  return value;
}

/**
 * Headless Chromium from Debian, with no network beyond this machine: the
 * flags stop it from calling home at start, and Playwright gives it a new
 * empty profile (user data dir) each launch.
 */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    chromiumSandbox: false,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-sync",
      "--disable-quic",
    ],
  });
}

// --- the Rust test's side of the conversation ---

const fromRust = readline.createInterface({ input: process.stdin });
const answers = fromRust[Symbol.asyncIterator]();

/** Asks the Rust test to act on the server (`kill`, `start`) and waits until it has. */
export async function server(action) {
  console.log(`@@${action}`);
  const { value, done } = await answers.next();
  if (done || value.trim() !== `${action} done`) {
    throw new Error(`the test did not ${action} the server: ${value}`);
  }
}

export function finish() {
  fromRust.close();
}

/**
 * Runs the scenario `name` in a fresh browser and says `@@passed NAME`
 * when it did. With `limitMs`, a scenario that hangs fails instead, with
 * what it was waiting for in the log.
 */
export async function runScenario(scenarios, name, { limitMs } = {}) {
  const scenario = scenarios[name];
  if (!scenario) {
    console.error(`no scenario ${name}: ${Object.keys(scenarios).join(", ")}`);
    process.exit(2);
  }
  if (limitMs) {
    setTimeout(() => {
      console.error(`the ${name} scenario ran out of time`);
      process.exit(1);
    }, limitMs).unref();
  }
  const browser = await launch();
  try {
    await scenario(browser);
    console.log(`@@passed ${name}`);
  } finally {
    await browser.close();
    finish();
  }
}

// --- browser users ---

/** A browser user: a page of its own, registered (or logged in) as `name`. */
export async function browserUser(browser, name, { register = true, viewport } = {}) {
  const context = await browser.newContext({
    ...(viewport ? { viewport } : {}),
    // Over TLS the server's certificate comes from the test's own CA,
    // which this browser profile does not know.
    ignoreHTTPSErrors: WEB.startsWith("https:"),
  });
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE_MS);
  page.on("pageerror", (error) => console.log(`[${name}] page error: ${error.message}`));
  await page.goto(WEB);
  await logIn(page, name, register);
  return page;
}

/** Fills the login form and waits for the chat to show. */
export async function logIn(page, name, register = false) {
  await page.locator("#name").fill(name);
  await page.locator("#password").fill(PASSWORD);
  await page.locator(register ? "#register-button" : "#login-button").click();
  await page.locator('#chat[data-connection="up"]').waitFor();
}

/** Shows the sidebar, which a phone-sized window hides behind a button. */
async function sidebar(page) {
  if (await page.locator("#show-list").isVisible()) {
    await page.locator("#show-list").click();
  }
}

/** Opens a conversation from the sidebar (`#room` or `@user`). */
export async function open(page, key) {
  await sidebar(page);
  await page.locator(`#sidebar [data-key="${key.toLowerCase()}"]`).click();
  await page.locator("#title").filter({ hasText: key.startsWith("#") ? key : key.slice(1) }).waitFor();
}

/** Joins a room through the sidebar's form; it opens. */
export async function join(page, room) {
  await sidebar(page);
  await page.locator("#join-room").fill(room);
  await page.locator("#join-room").press("Enter");
  await page.locator("#title").filter({ hasText: `#${room}` }).waitFor();
}

/** Types a line in the open conversation and waits until it is stored. */
export async function say(page, text) {
  await page.locator("#say").fill(text);
  await page.locator("#say").press("Enter");
  await line(page, text).and(page.locator("[data-id]")).waitFor();
}

/** The lines showing exactly `text` in the open conversation. */
export function line(page, text) {
  return page.locator("#lines .line").filter({ has: page.locator(".body", { hasText: exactly(text) }) });
}

/** Waits for `text` in the open conversation, then checks it shows once and stays once. */
export async function seesOnce(page, text) {
  await line(page, text).first().waitFor();
  await page.waitForTimeout(300);
  const count = await line(page, text).count();
  if (count !== 1) throw new Error(`"${text}" shows ${count} times`);
}

/** No message id shows twice in the open conversation. */
export async function noRepeats(page) {
  const ids = await page.locator("#lines [data-id]").evaluateAll((lines) => lines.map((l) => l.dataset.id));
  const repeated = ids.filter((id, i) => ids.indexOf(id) !== i);
  if (repeated.length > 0) throw new Error(`ids shown twice: ${repeated}`);
}

/** The unread badge of a sidebar entry (`#room` or `@user`), as shown. */
export async function unread(page, key) {
  const badge = page.locator(`#sidebar [data-key="${key.toLowerCase()}"] .badge`);
  return (await badge.count()) === 0 ? 0 : Number(await badge.textContent());
}

export async function waitForUnread(page, key, count) {
  await page.locator(`#sidebar [data-key="${key.toLowerCase()}"] .badge`).filter({ hasText: exactly(String(count)) }).waitFor();
}

function exactly(text) {
  return new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
}

// --- a line-protocol user, as `nc` would be ---

export class Netcat {
  static async connect(name, { register = true } = {}) {
    const [host, port] = [TALK.slice(0, TALK.lastIndexOf(":")), Number(TALK.slice(TALK.lastIndexOf(":") + 1))];
    const socket = net.connect(port, host);
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const user = new Netcat(socket, name);
    await user.expect(/^\* welcome/);
    if (register) await user.command(`/register ${name} ${PASSWORD}`);
    await user.command(`/login ${name} ${PASSWORD}`);
    return user;
  }

  constructor(socket, name) {
    this.name = name;
    this.socket = socket;
    this.lines = [];
    this.waiters = [];
    let partial = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => {
      partial += chunk;
      let end;
      while ((end = partial.indexOf("\n")) >= 0) {
        this.lines.push(partial.slice(0, end).replace(/\r$/, ""));
        partial = partial.slice(end + 1);
      }
      for (const wake of this.waiters.splice(0)) wake();
    });
    socket.on("close", () => {
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  /** Sends a command and waits for its `+OK`; fails on `-ERR`. */
  async command(text) {
    const from = this.lines.length;
    this.socket.write(`${text}\r\n`);
    const reply = await this.expect(/^(\+OK|-ERR)/, from);
    if (reply.startsWith("-ERR")) throw new Error(`${this.name}: ${text} -> ${reply}`);
    return reply;
  }

  /** Says `text` in the current room (the line protocol answers speech only on error). */
  say(text) {
    this.socket.write(`${text}\r\n`);
  }

  /** The first line from `from` on matching `pattern`, waiting for it. */
  async expect(pattern, from = 0) {
    const deadline = Date.now() + PATIENCE_MS;
    for (;;) {
      const found = this.lines.slice(from).find((l) => pattern.test(l));
      if (found !== undefined) return found;
      if (this.socket.destroyed || Date.now() > deadline) {
        throw new Error(`${this.name} never got ${pattern}; got ${JSON.stringify(this.lines)}`);
      }
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  }

  /** How many lines so far are exactly `text`. */
  count(text) {
    return this.lines.filter((l) => l === text).length;
  }

  close() {
    this.socket.destroy();
  }
}
