// `npm run bundle`: src/main.ts and what it imports (CSS included) into
// dist/app.js and dist/app.css, minified; index.html into dist/ with each
// file's URL carrying a hash of its content, so browsers may keep those
// for good and still fetch a new build. The same sources and the same
// esbuild give the same bytes, which CI checks against the committed dist/.

import { createHash } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { build } from "esbuild";

const here = new URL(".", import.meta.url);
const dist = new URL("dist/", here);

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  entryPoints: { app: new URL("src/main.ts", here).pathname },
  outdir: dist.pathname,
  bundle: true,
  format: "esm",
  target: ["es2022", "chrome100", "firefox100", "safari15.4"],
  minify: true,
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
});

const hash = async (name) =>
  createHash("sha256")
    .update(await readFile(new URL(name, dist)))
    .digest("hex")
    .slice(0, 16);
const page = (await readFile(new URL("index.html", here), "utf8"))
  .replace("%JS_HASH%", await hash("app.js"))
  .replace("%CSS_HASH%", await hash("app.css"));
await writeFile(new URL("index.html", dist), page);
