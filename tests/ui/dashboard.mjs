// Drives the dashboard in Debian's headless Chromium with playwright-core.
// Usage: node dashboard.mjs <dashboard URL> <screenshot dir> <fixture JSON>
// The fixture names what the Rust test stored: users, their event counts.
// Exits non-zero, naming the failed check, on the first failure.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const [base, shots, fixturePath] = process.argv.slice(2);
const fixture = JSON.parse(readFileSync(fixturePath, "utf8"));
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

function parseCsv(text) {
  const rows = [];
  let row = [], cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; }
      else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(cell); cell = ""; }
    else if (c === "\r") {}
    else if (c === "\n") { row.push(cell); rows.push(row); row = []; cell = ""; }
    else cell += c;
  }
  if (cell || row.length) { row.push(cell); rows.push(row); }
  return rows;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1360, height: 860 } });
const page = await context.newPage();
const problems = [];
page.on("console", (m) => { if (m.type() === "error") problems.push(`${page.url()}: console error: ${m.text()}`); });
page.on("pageerror", (e) => problems.push(`${page.url()}: uncaught: ${e.message}`));
page.on("requestfailed", (r) => problems.push(`${page.url()}: request failed: ${r.url()}`));
const external = [];
page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) external.push(r.url()); });

async function visit(path, ready) {
  const resp = await page.goto(base + path);
  check(resp.status() === 200, `${path} answers 200`);
  const csp = resp.headers()["content-security-policy"] || "";
  check(csp.includes("default-src 'none'") && csp.includes("script-src 'self'") && !csp.includes("unsafe"), `${path} has a strict CSP`);
  await page.waitForSelector(ready);
}

async function shot(name) {
  await page.screenshot({ path: join(shots, name + ".png"), fullPage: true });
}

const cellTexts = (sel) => page.$$eval(sel, (tds) => tds.map((td) => td.textContent));
const rowsOnScreen = () => page.$$eval("#events tbody tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));

try {
  // ---- events --------------------------------------------------------------
  await visit("/events", "#events tbody tr td[data-key=user]");
  const all = await cellTexts('#events td[data-key="user"]');
  check(all.length === fixture.total, `the events table shows all ${fixture.total} events (${all.length})`);
  await shot("events");

  // A filter narrows the table: one user.
  await page.fill('input[name="username"]', fixture.user);
  await page.click('#events-filters button[type="submit"]');
  await page.waitForFunction((n) => document.querySelectorAll('#events td[data-key="user"]').length === n, fixture.user_events);
  const one = await cellTexts('#events td[data-key="user"]');
  check(one.length === fixture.user_events && one.every((u) => u === fixture.user), `the user filter leaves ${fixture.user}'s ${fixture.user_events} events`);
  // And a tenant filter.
  await page.fill('input[name="username"]', "");
  await page.fill('input[name="tenant"]', fixture.tenant);
  await page.click('#events-filters button[type="submit"]');
  await page.waitForFunction((n) => document.querySelectorAll('#events td[data-key="user"]').length === n, fixture.tenant_events);
  const tenantRows = await cellTexts('#events td[data-key="user"]');
  check(tenantRows.every((u) => u.startsWith(fixture.tenant + "/")), `the tenant filter leaves only ${fixture.tenant}'s users`);
  await page.fill('input[name="tenant"]', "");
  await page.click('#events-filters button[type="submit"]');
  await page.waitForFunction((n) => document.querySelectorAll('#events td[data-key="user"]').length === n, fixture.total);

  // Sorting by a column.
  await page.click('#events th[data-key="user"]');
  const sorted = await cellTexts('#events td[data-key="user"]');
  check(sorted.join("\n") === [...sorted].sort((a, b) => a.localeCompare(b)).join("\n"), "a click on User sorts by user");
  check((await page.getAttribute('#events th[data-key="user"]', "aria-sort")) === "ascending", "the sorted column says so");

  // Column choice, kept across a reload.
  await page.click("details.columns summary");
  await page.uncheck('input[data-column="browser"]');
  check((await page.$$('#events th[data-key="browser"]')).length === 0, "an unchecked column is hidden");
  await page.reload();
  await page.waitForSelector("#events tbody tr td[data-key=user]");
  check((await page.$$('#events th[data-key="browser"]')).length === 0, "the column choice outlives a reload (localStorage)");

  // CSV export holds exactly the rows on screen.
  await page.click('#events th[data-key="type"]');
  const screen = await rowsOnScreen();
  const header = await page.$$eval("#events thead th", (ths) => ths.map((th) => th.textContent));
  const [csvDl] = await Promise.all([page.waitForEvent("download"), page.click("#events-csv")]);
  const csvRows = parseCsv(readFileSync(await csvDl.path(), "utf8"));
  check(JSON.stringify(csvRows) === JSON.stringify([header, ...screen]), `the CSV export holds the ${screen.length} rows on screen, in their order and columns`);
  const [xlsxDl] = await Promise.all([page.waitForEvent("download"), page.click("#events-xlsx")]);
  const xlsx = readFileSync(await xlsxDl.path());
  const text = xlsx.toString("latin1");
  check(xlsx.subarray(0, 4).toString("latin1") === "PK\u0003\u0004" && text.includes("xl/worksheets/sheet1.xml"), "the XLSX export is a workbook");
  check(screen.every((r) => text.includes(`<t xml:space="preserve">${r[1]}</t>`)), "the XLSX export holds the users on screen");
  console.log("xlsx " + (await xlsxDl.path()));

  // ---- a user --------------------------------------------------------------
  await visit("/user", "#user-search");
  await page.fill('#user-search input[name="username"]', fixture.user);
  await page.click('#user-search button[type="submit"]');
  await page.waitForSelector("#user-log tbody tr td[data-key=type]");
  const userRows = await page.$$("#user-log tbody tr");
  check(userRows.length === fixture.user_events, `searching ${fixture.user} shows their ${fixture.user_events} events`);
  check((await page.textContent("#user-view h2")) === fixture.user, "the user page names the user");
  check((await page.$$("#user-summary li")).length > 0, "the summary sentences are shown");
  check((await page.$$("#user-devices tbody tr")).length >= 1, "the user's devices are listed");
  check((await page.$$("#user-alerts tbody tr td[data-key=kind]")).length >= 1, "the user's alerts are listed");
  await shot("user");
  // forget_user is behind a confirmation, on a user kept for it.
  await page.goto(base + "/user?u=" + encodeURIComponent(fixture.forget));
  await page.waitForSelector("#forget-go");
  check(await page.isDisabled("#forget-go"), "forgetting needs the name typed first");
  await page.fill("#forget-confirm", fixture.forget + "x");
  check(await page.isDisabled("#forget-go"), "a wrong name does not enable it");
  await page.fill("#forget-confirm", fixture.forget);
  await page.click("#forget-go");
  await page.waitForSelector("#forgotten");
  check((await page.textContent("#forgotten")).includes("forgotten"), "the user is forgotten once confirmed");

  // ---- alerts --------------------------------------------------------------
  await visit("/alerts", "#alerts tbody tr td[data-key=kind]");
  const kinds = await cellTexts('#alerts td[data-key="kind"]');
  check(kinds.length >= fixture.alerts, `the outbox lists the ${fixture.alerts} alerts`);
  const deliveries = await cellTexts('#alerts td[data-key="deliveries"]');
  check(deliveries.some((d) => d.includes("webhook")), "deliveries show their sink and state");
  await shot("alerts");
  const retry = await page.$("button.retry");
  check(retry !== null, "an undelivered alert can be retried");
  await retry.click();
  await page.waitForSelector("#alerts-status.ok");
  check(/deliveries due again/.test(await page.textContent("#alerts-status")), "retry now answers");

  // ---- reports -------------------------------------------------------------
  await visit("/reports", "section.report");
  check((await page.$$("section.report")).length >= 10, "every report is shown");
  check((await page.$$("svg.chart rect.bar")).length > 0, "reports have charts");
  await shot("reports");

  // ---- stale accounts ------------------------------------------------------
  await visit("/stale", "#stale-names");
  await page.fill("#stale-names", [fixture.user, ...fixture.ghosts].join("\n"));
  await page.click("form.stale button[type=submit]");
  await page.waitForFunction(() => /accounts unused/.test(document.querySelector("#stale-status").textContent));
  const unused = await cellTexts('#stale td[data-key="user"]');
  check(JSON.stringify(unused) === JSON.stringify(fixture.ghosts), "accounts never seen are unused, a recent one is not");
  await shot("stale");

  check(external.length === 0, "nothing is loaded from elsewhere: " + external.join(", "));
  check(problems.length === 0, "no console error on any page: " + problems.join("; "));
} catch (e) {
  console.error(e.message);
  for (const p of problems) console.error(p);
  await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log("dashboard: all checks passed");
