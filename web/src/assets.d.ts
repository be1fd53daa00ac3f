// esbuild bundles imported style sheets into dist/app.css.
declare module "*.css";
