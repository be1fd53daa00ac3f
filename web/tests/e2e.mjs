// The web client in headless Chromium against a real server, one scenario
// per run: `node tests/e2e.mjs SCENARIO`. tests/browser.rs starts the
// server, runs this, and restarts the server when asked; run it through
// `cargo test --test browser`.

import {
  Netcat,
  browserUser,
  join,
  line,
  logIn,
  noRepeats,
  open,
  say,
  seesOnce,
  server,
  unread,
  waitForUnread,
  runScenario,
} from "./harness.mjs";

const scenarios = {
  /** Two browser users in one room: each sees the other's lines, once; unread counts move. */
  async room(browser) {
    const alice = await browserUser(browser, "alice");
    const bob = await browserUser(browser, "bob");
    await join(alice, "garden");
    await join(bob, "garden");
    await say(alice, "hello bob, the roses are out");
    await seesOnce(bob, "hello bob, the roses are out");
    await say(bob, "hi alice, and the tulips");
    await seesOnce(alice, "hi alice, and the tulips");
    await seesOnce(alice, "hello bob, the roses are out");
    await seesOnce(bob, "hi alice, and the tulips");

    // Speech in a room bob is not looking at waits as unread until he opens it.
    await open(alice, "#lobby");
    await say(alice, "anyone in the lobby?");
    await say(alice, "hello?");
    await waitForUnread(bob, "#lobby", 2);
    await open(bob, "#lobby");
    await seesOnce(bob, "anyone in the lobby?");
    await seesOnce(bob, "hello?");
    if ((await unread(bob, "#lobby")) !== 0) throw new Error("#lobby still counts unread once open");
    await noRepeats(alice);
    await noRepeats(bob);

    // Both are online, and each is listed.
    await bob.locator('#online [data-user="alice"]').waitFor();
    await alice.locator("#online").filter({ hasText: "bob" }).waitFor();
  },

  /** A browser user and a netcat user write to each other. */
  async dm(browser) {
    const alice = await browserUser(browser, "alice");
    const nick = await Netcat.connect("nick");
    await nick.command("/tell alice hello from netcat");
    await waitForUnread(alice, "@nick", 1);
    await open(alice, "@nick");
    await seesOnce(alice, "hello from netcat");
    await say(alice, "hello from the browser");
    await nick.expect(/^@alice: hello from the browser$/);

    // A conversation started from the browser, by name.
    await alice.locator("#dm-user").fill("nick");
    await alice.locator("#dm-user").press("Enter");
    await say(alice, "second thought");
    await nick.expect(/^@alice: second thought$/);
    await seesOnce(alice, "hello from the browser");
    await noRepeats(alice);
    if (nick.count("@alice: hello from the browser") !== 1) throw new Error("nick got the DM twice");
    nick.close();
  },

  /** A DM sent while the browser user is logged out shows when they log in again. */
  async away(browser) {
    const alice = await browserUser(browser, "alice");
    await alice.locator("#logout").click();
    await alice.locator("#login").waitFor();
    const nick = await Netcat.connect("nick");
    await nick.command("/tell alice sent while you were away");
    await logIn(alice, "alice");
    await waitForUnread(alice, "@nick", 1);
    await open(alice, "@nick");
    await seesOnce(alice, "sent while you were away");
    // Shown, so acknowledged: a reload does not bring it back as unread.
    await alice.waitForTimeout(500);
    await alice.reload();
    await alice.locator('#chat[data-connection="up"]').waitFor();
    await seesOnce(alice, "sent while you were away");
    await alice.waitForTimeout(500);
    const left = await unread(alice, "@nick");
    if (left !== 0) throw new Error(`after a reload @nick counts ${left} unread`);
    nick.close();
  },

  /** An operator kicks the browser user: the page goes back to the log-in form, saying who and why. */
  async kicked(browser) {
    const alice = await browserUser(browser, "alice");
    const root = await Netcat.connect("root", { register: false });
    await root.command("/kick alice be nice");
    await alice.locator("#login").waitFor();
    await alice.getByText("you were kicked by root: be nice").waitFor();
    // A kick is not a ban: alice logs in again.
    await logIn(alice, "alice");
    await alice.locator('#chat[data-connection="up"]').waitFor();
    root.close();
  },

  /**
   * The server killed and started again under an open page: the banner
   * shows, the page reconnects by itself, and what was sent meanwhile (to
   * the page, and from it) arrives once.
   */
  async restart(browser) {
    const alice = await browserUser(browser, "alice");
    let nick = await Netcat.connect("nick");
    await nick.command("/tell alice before the restart");
    await waitForUnread(alice, "@nick", 1);
    await open(alice, "@nick");
    await seesOnce(alice, "before the restart");

    await server("kill");
    await alice.locator("#banner").waitFor({ state: "visible" });
    const banner = await alice.locator("#banner-text").textContent();
    if (!/Reconnecting in \d+ s/.test(banner)) throw new Error(`banner says: ${banner}`);
    // Typed while the server is down: kept, and sent once it is back.
    await alice.locator("#say").fill("typed while the server was down");
    await alice.locator("#say").press("Enter");
    await line(alice, "typed while the server was down").first().waitFor();

    await server("start");
    nick = await Netcat.connect("nick", { register: false });
    await nick.command("/tell alice sent during the restart");
    await alice.locator("#banner").waitFor({ state: "hidden" });
    await seesOnce(alice, "sent during the restart");
    await seesOnce(alice, "before the restart");
    await seesOnce(alice, "typed while the server was down");
    await line(alice, "typed while the server was down").and(alice.locator("[data-id]")).waitFor();
    await nick.expect(/^@alice: typed while the server was down$/);
    await alice.waitForTimeout(1000);
    await noRepeats(alice);
    await seesOnce(alice, "sent during the restart");
    if (nick.count("@alice: typed while the server was down") !== 1) throw new Error("nick got it twice");
    nick.close();
  },

  /** Over TLS: the page is served over https and its calls go over HTTP/2. */
  async tls(browser) {
    const alice = await browserUser(browser, "alice");
    const bob = await browserUser(browser, "bob");
    if (!alice.url().startsWith("https://")) throw new Error(`the page is at ${alice.url()}`);
    await bob.locator("#dm-user").fill("alice");
    await bob.locator("#dm-user").press("Enter");
    await say(bob, "over tls");
    await waitForUnread(alice, "@bob", 1);
    await open(alice, "@bob");
    await seesOnce(alice, "over tls");
    const protocols = await alice.evaluate(() =>
      performance
        .getEntriesByType("resource")
        .filter((entry) => entry.name.includes("/meshtalk.v1."))
        .map((entry) => entry.nextHopProtocol),
    );
    if (protocols.length === 0 || protocols.some((p) => p !== "h2")) {
      throw new Error(`the calls went over ${protocols}`);
    }
  },

  /** Scrolling back through a room's history, a page at a time, between other rooms' messages. */
  async history(browser) {
    const nick = await Netcat.connect("nick");
    await nick.command("/join attic");
    await nick.command("/join cellar");
    const total = 130;
    for (let i = 1; i <= total; i++) {
      // Every room line is followed by another room's, so the room's ids are spread out.
      await nick.command(`/join attic`);
      nick.say(`attic line ${i}`);
      await nick.command(`/join cellar`);
      nick.say(`cellar line ${i}`);
    }
    // Answered in order: once this is, every line above is stored.
    await nick.command("/history 1");
    const alice = await browserUser(browser, "alice");
    await join(alice, "attic");
    await seesOnce(alice, `attic line ${total}`);
    const shown = () => alice.locator("#lines [data-id]").count();
    if ((await shown()) >= total) throw new Error("the whole history came at once");
    while (await alice.locator("#older").isVisible()) {
      await alice.locator("#log").evaluate((log) => (log.scrollTop = 0));
      await alice.waitForTimeout(200);
    }
    await alice.locator("#start").waitFor();
    const bodies = await alice.locator("#lines .body").allTextContents();
    const expected = Array.from({ length: total }, (_, i) => `attic line ${i + 1}`);
    if (JSON.stringify(bodies) !== JSON.stringify(expected)) {
      throw new Error(`history shows ${bodies.length} lines: ${JSON.stringify(bodies.slice(0, 5))}…`);
    }
    await noRepeats(alice);
    nick.close();
  },
};

await runScenario(scenarios, process.argv[2], { limitMs: 150_000 });
