// Compares MCP conformance suite results with tests/conformance/expected-failures.txt.
//
// Usage: node compare.mjs EXPECTED_FILE LABEL=RESULTS_DIR=SUITE_LOG [...]
//
// A scenario ran when the suite's log says `=== Running scenario: NAME ===`; its checks
// are in RESULTS_DIR/server-NAME-<timestamp>/checks.json. It fails when any check has
// status FAILURE (or it left no checks). Expected-failure entries are `scenario` (the
// whole scenario may fail) or `scenario:check-id` (only that check may fail; absent or
// skipped is fine), each applying to every run in which the scenario ran.
// Exit 1 when a scenario fails unexpectedly, when a listed scenario or check passes
// (remove it from the list), or when an entry names a scenario that ran in no run.

import fs from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
// --partial: only some of the runs were made, so an entry may well match none of them.
const partial = args[0] === '--partial' && args.shift() !== undefined;
const [expectedFile, ...runSpecs] = args;
if (!expectedFile || runSpecs.length === 0) {
  console.error('usage: compare.mjs [--partial] EXPECTED_FILE LABEL=RESULTS_DIR=SUITE_LOG ...');
  process.exit(2);
}

// scenario -> { whole: reason|undefined, checks: Map(checkId -> reason) }
const expected = new Map();
const entryLines = new Map(); // entry text -> line number, for "matched nothing"
fs.readFileSync(expectedFile, 'utf8').split('\n').forEach((raw, i) => {
  const hash = raw.indexOf('#');
  const entry = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
  const reason = hash >= 0 ? raw.slice(hash + 1).trim() : '';
  if (!entry) return;
  const bad = (why) => {
    console.error(`${expectedFile}:${i + 1}: ${why}: ${raw}`);
    process.exit(2);
  };
  if (/\s/.test(entry)) bad('one entry per line');
  if (!reason) bad('give a reason as a # comment');
  const [scenario, check] = entry.split(/:(.*)/s);
  const e = expected.get(scenario) ?? { whole: undefined, checks: new Map() };
  if (check) e.checks.set(check, reason);
  else e.whole = reason;
  if (e.whole !== undefined && e.checks.size > 0) {
    bad(`${scenario} is listed both whole and per check`);
  }
  expected.set(scenario, e);
  entryLines.set(entry, i + 1);
});

const short = (s, n = 400) => {
  const t = String(s ?? '').replace(/\s+/g, ' ').trim();
  return t.length > n ? `${t.slice(0, n)}…` : t;
};

const seenScenarios = new Set();
const totals = [];
let problems = 0;

for (const spec of runSpecs) {
  const [label, dir, logFile] = spec.split('=');
  const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
  const ran = [...log.matchAll(/^=== Running scenario: (\S+) ===$/gm)].map((m) => m[1]);
  const checksOf = new Map();
  for (const d of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    const m = d.match(/^server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z$/);
    const file = path.join(dir, d, 'checks.json');
    if (m && fs.existsSync(file)) checksOf.set(m[1], JSON.parse(fs.readFileSync(file, 'utf8')));
  }
  console.log(`\n── ${label}: ${ran.length} scenarios ──`);
  const t = { label, passed: 0, expected: 0, unexpected: 0, stale: 0 };
  if (ran.length === 0) {
    console.log(`  ERROR no scenario ran; see ${logFile}`);
    t.unexpected++;
    problems++;
  }
  for (const name of ran) {
    seenScenarios.add(name);
    const checks = checksOf.get(name);
    const exp = expected.get(name);
    const warnings = (checks ?? []).filter((c) => c.status === 'WARNING');
    const failures = checks
      ? checks.filter((c) => c.status === 'FAILURE')
      : [{ id: '(no results)', errorMessage: 'the suite wrote no checks.json for this scenario' }];
    const failed = failures.length > 0;
    const lines = [];
    let verdict;
    if (exp?.whole !== undefined) {
      if (failed) {
        verdict = 'xfail';
        lines.push(`expected: ${exp.whole}`);
      } else {
        verdict = 'stale';
        lines.push(`listed as expected to fail (${exp.whole}) but passes: remove it from ${expectedFile}`);
      }
    } else {
      const listed = exp?.checks ?? new Map();
      const unlisted = failures.filter((c) => !listed.has(c.id));
      const passingListed = [...listed.keys()].filter((id) =>
        (checks ?? []).some((c) => c.id === id && (c.status === 'SUCCESS' || c.status === 'WARNING')) &&
        !failures.some((c) => c.id === id));
      for (const c of unlisted) lines.push(`${c.id}: ${short(c.errorMessage)}`);
      for (const id of passingListed) lines.push(`${id}: listed as expected to fail but passes: remove ${name}:${id} from ${expectedFile}`);
      for (const c of failures.filter((c) => listed.has(c.id))) lines.push(`${c.id}: expected: ${listed.get(c.id)}`);
      verdict = unlisted.length > 0 ? 'fail' : passingListed.length > 0 ? 'stale' : failed ? 'xfail' : 'pass';
    }
    if (verdict !== 'xfail') for (const w of warnings) lines.push(`warning ${w.id}: ${short(w.errorMessage, 200)}`);
    const tag = { pass: 'PASS ', xfail: 'XFAIL', fail: 'FAIL ', stale: 'XPASS' }[verdict];
    console.log(`  ${tag} ${name}`);
    for (const l of lines) console.log(`          ${l}`);
    if (verdict === 'pass') t.passed++;
    else if (verdict === 'xfail') t.expected++;
    else if (verdict === 'fail') { t.unexpected++; problems++; }
    else { t.stale++; problems++; }
  }
  totals.push(t);
}

for (const [scenario, e] of expected) {
  if (!partial && !seenScenarios.has(scenario)) {
    const entries = e.whole !== undefined ? [scenario] : [...e.checks.keys()].map((c) => `${scenario}:${c}`);
    for (const entry of entries) {
      console.log(`\n  STALE ${expectedFile}:${entryLines.get(entry)}: ${entry} matches no scenario that ran`);
      problems++;
    }
  }
}

console.log('\n── summary ──');
for (const t of totals) {
  console.log(`  ${t.label.padEnd(28)} ${String(t.passed).padStart(3)} passed, ${String(t.expected).padStart(3)} expected failures, ${t.unexpected} unexpected failures, ${t.stale} listed but passing`);
}
const sum = (k) => totals.reduce((a, t) => a + t[k], 0);
console.log(problems === 0
  ? '\nconformance: OK (every failure is listed in expected-failures.txt, and every listed one still fails)'
  : `\nconformance: ${problems} problem(s): unexpected failures or stale entries above`);
// The plain closing line: passed = scenarios as expected (passing or listed), failed = problems.
console.log(`conformance: ${sum('passed') + sum('expected')} passed, ${problems} failed`);
process.exit(problems === 0 ? 0 : 1);
