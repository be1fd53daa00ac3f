// What docs/ shows of the web client, made from a real session:
// `node tests/docs.mjs shots` writes the screenshots into $MESHTALK_DOCS_DIR,
// `node tests/docs.mjs measure` prints the page's weight and how soon a
// live message shows. Run through tests/browser.rs (its ignored tests),
// which starts the server:
//   cargo test --release --test browser -- --ignored --nocapture

import path from "node:path";
import {
  Netcat,
  PASSWORD,
  WEB,
  browserUser,
  join,
  open,
  say,
  seesOnce,
  waitForUnread,
  runScenario,
} from "./harness.mjs";

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const scenarios = {
  async shots(browser) {
    const dir = process.env.MESHTALK_DOCS_DIR;
    if (!dir) throw new Error("MESHTALK_DOCS_DIR is not set");
    const ada = await browserUser(browser, "ada", { viewport: DESKTOP });
    const grace = await browserUser(browser, "grace", { viewport: PHONE });
    const linus = await Netcat.connect("linus");
    const ken = await Netcat.connect("ken");
    for (const who of [linus, ken]) await who.command("/join rust");
    await join(ada, "rust");
    await join(grace, "rust");
    linus.say("anyone tried the new borrow checker diagnostics?");
    await say(ada, "yes: the lifetime hints are much clearer now");
    ken.say("they even point at the line where the borrow ends");
    await say(grace, "took me an afternoon to stop fighting it, worth it");
    await linus.command("/join lobby");
    linus.say("release notes are up in #rust, have a look");
    await ken.command("/tell ada lunch at noon?");
    await ken.command("/tell ada the usual place");
    await linus.command("/tell grace ping me when the build is green");
    await say(ada, "nice, I'll read them after standup");
    await waitForUnread(ada, "@ken", 2);
    await waitForUnread(ada, "#lobby", 1);
    await seesOnce(grace, "nice, I'll read them after standup");
    await ada.locator("#say").fill("see you there");
    await ada.waitForTimeout(500);
    await ada.screenshot({ path: path.join(dir, "web-desktop.png") });

    await grace.locator("#say").fill("on it");
    await grace.waitForTimeout(300);
    await grace.screenshot({ path: path.join(dir, "web-phone.png") });
    await grace.locator("#show-list").click();
    await grace.waitForTimeout(300);
    await grace.screenshot({ path: path.join(dir, "web-phone-list.png") });
    linus.close();
    ken.close();
  },

  async measure(browser) {
    const runs = 5;
    // Every load below starts with an empty cache; the reloads keep the
    // session in sessionStorage, as a reload of a logged-in tab would.
    const context = await browser.newContext();
    const page = await context.newPage();
    const net = await traffic(page);
    await page.goto(WEB);
    await page.locator("#login").waitFor();
    await page.waitForLoadState("load");
    const loginPage = net.total();
    await page.locator("#name").fill("alice");
    await page.locator("#password").fill(PASSWORD);
    await page.locator("#register-button").click();
    await page.locator('#chat[data-connection="up"]').waitFor();
    const nick = await Netcat.connect("nick");
    await nick.command("/tell alice hello");
    await open(page, "@nick");
    await seesOnce(page, "hello");

    // Time to the first live message: from navigation start to the page
    // showing a DM that was sent the moment the page said it was live.
    await page.exposeFunction("__meshtalkLive", async (body) => {
      nick.socket.write(`/tell alice ${body}\r\n`);
      return Date.now();
    });
    await page.addInitScript(() => {
      const marks = (window.__marks = {});
      const seen = new MutationObserver(() => {
        const chat = document.getElementById("chat");
        if (!marks.live && chat?.dataset.connection === "up") {
          marks.live = performance.now();
          marks.body = `live ${Math.random().toString(36).slice(2)}`;
          window.__meshtalkLive(marks.body).then((sentAt) => (marks.sentAt = sentAt));
        }
        if (marks.body && !marks.shown) {
          for (const body of document.querySelectorAll("#lines .body")) {
            if (body.textContent === marks.body) {
              marks.shown = performance.now();
              marks.shownAt = Date.now();
            }
          }
        }
      });
      seen.observe(document, { subtree: true, childList: true, attributes: true });
    });
    const results = [];
    for (let run = 0; run < runs; run++) {
      net.reset();
      await page.reload();
      await page.waitForFunction(() => window.__marks?.shown && window.__marks?.sentAt, null, { timeout: 20_000 });
      const marks = await page.evaluate(() => window.__marks);
      await page.waitForTimeout(300);
      results.push({
        live: marks.live,
        shown: marks.shown,
        sendToShown: marks.shownAt - marks.sentAt,
        bytes: net.total(),
      });
    }
    // A warm load: the cache kept, the page revalidated.
    await net.cache(true);
    await page.reload();
    await page.locator('#chat[data-connection="up"]').waitFor();
    net.reset();
    await page.reload();
    await page.locator('#chat[data-connection="up"]').waitFor();
    await page.waitForTimeout(300);
    const warm = net.total();

    const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
    console.log(
      `@@figures ${JSON.stringify({
        coldLoginPage: loginPage,
        coldLoggedIn: results.map((r) => r.bytes),
        warmLoggedIn: warm,
        loadToLiveMs: results.map((r) => Math.round(r.live)),
        loadToFirstMessageMs: results.map((r) => Math.round(r.shown)),
        sendToShownMs: results.map((r) => r.sendToShown),
        medians: {
          loadToLiveMs: Math.round(median(results.map((r) => r.live))),
          loadToFirstMessageMs: Math.round(median(results.map((r) => r.shown))),
          sendToShownMs: median(results.map((r) => r.sendToShown)),
        },
      })}`,
    );
    nick.close();
  },
};

/**
 * The bytes a page receives, counted by Chromium (headers and body as they
 * came over the wire, compressed), per request; with the cache off unless
 * turned on.
 */
async function traffic(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
  let requests = new Map();
  cdp.on("Network.responseReceived", ({ requestId, response }) => {
    requests.set(requestId, { url: new URL(response.url).pathname, status: response.status, bytes: 0 });
  });
  cdp.on("Network.dataReceived", ({ requestId, encodedDataLength }) => {
    const request = requests.get(requestId);
    if (request) request.bytes += encodedDataLength;
  });
  cdp.on("Network.loadingFinished", ({ requestId, encodedDataLength }) => {
    const request = requests.get(requestId);
    if (request) request.bytes = encodedDataLength;
  });
  return {
    reset: () => (requests = new Map()),
    cache: (on) => cdp.send("Network.setCacheDisabled", { cacheDisabled: !on }),
    total: () => {
      const list = [...requests.values()];
      return {
        requests: list.length,
        bytes: list.reduce((sum, r) => sum + r.bytes, 0),
        each: list.map((r) => `${r.url} ${r.status} ${r.bytes}`),
      };
    },
  };
}

await runScenario(scenarios, process.argv[2]);
