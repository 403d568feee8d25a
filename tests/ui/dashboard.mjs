// Drives the dashboard in Debian's headless Chromium with playwright-core.
// Usage: node dashboard.mjs <login URL> <screenshot dir> <fixture JSON>
// The login URL is the one `user-meta-admin ui` printed (one-time secret).
// The fixture names what the Rust test stored: users, their event counts.
// Exits non-zero, naming the failed check, on the first failure.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const [loginUrl, shots, fixturePath] = process.argv.slice(2);
const base = new URL(loginUrl).origin;
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

// What the CSV export must write for a cell: OWASP's CSV injection rule.
const csvText = (s) => (/^[=+\-@\t\r]/.test(s) ? "'" + s : s);

// The text of one entry of a zip of stored entries (as the XLSX export is).
function zipEntry(buf, name) {
  let off = 0;
  while (off + 30 <= buf.length && buf.readUInt32LE(off) === 0x04034b50) {
    const size = buf.readUInt32LE(off + 18);
    const nameLen = buf.readUInt16LE(off + 26);
    const extraLen = buf.readUInt16LE(off + 28);
    const start = off + 30 + nameLen + extraLen;
    if (buf.subarray(off + 30, off + 30 + nameLen).toString("utf8") === name) return buf.subarray(start, start + size).toString("utf8");
    off = start + size;
  }
  throw new Error(`no ${name} in the workbook`);
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

// A sheet's XML parsed by Chromium's XML parser: its rows of cell texts, or
// null when it is not well-formed XML. On a blank page of its own: the
// parser's error document has inline style, which the dashboard's CSP
// refuses (a console error); in a context of its own, so that the
// dashboard's page stays in front (a page behind has its timers slowed).
const xmlPage = await (await browser.newContext()).newPage();
const parseSheet = (xml) => xmlPage.evaluate((x) => {
  const d = new DOMParser().parseFromString(x, "application/xml");
  if (d.getElementsByTagName("parsererror").length) return null;
  return [...d.getElementsByTagName("row")].map((r) => [...r.getElementsByTagName("t")].map((t) => t.textContent));
}, xml);

const cellTexts = (sel) => page.$$eval(sel, (tds) => tds.map((td) => td.textContent));
const rowsOnScreen = () => page.$$eval("#events tbody tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));

try {
  // ---- the session ---------------------------------------------------------
  // Another browser profile, without the cookie: no page, no token.
  const stranger = await browser.newContext();
  const strangerPage = await stranger.newPage();
  const noCookie = await strangerPage.goto(base + "/events");
  check(noCookie.status() === 401, "a page without the session cookie answers 401");
  const noCookieHtml = await noCookie.text();
  check(!noCookieHtml.includes("ui-token") && /printed/.test(noCookieHtml), "and holds no token, only a note to open the printed URL");
  // The admin opens the printed URL: a cookie, then the events page.
  const opened = await page.goto(loginUrl);
  check(opened.status() === 200 && new URL(page.url()).pathname === "/events", "the printed URL leads to the events page");
  const cookies = await context.cookies(base);
  check(cookies.length === 1 && cookies[0].httpOnly && cookies[0].sameSite === "Strict" && cookies[0].path === "/" && cookies[0].expires === -1,
    "it sets one session cookie: HttpOnly, SameSite=Strict, Path=/, for this browser session (" + JSON.stringify(cookies) + ")");
  check((await page.evaluate(() => document.cookie)) === "", "the page's script cannot read the cookie");
  check(!loginUrl.includes(cookies[0].value), "the cookie is not the secret");
  // The URL is spent: opened again elsewhere, it gives nothing.
  const spent = await strangerPage.goto(loginUrl);
  check(spent.status() === 403 && (await stranger.cookies(base)).length === 0, "the printed URL works once: used again, 403 and no cookie");
  await stranger.close();

  // ---- the exports' rules, on the dashboard's own functions ----------------
  const unit = await page.evaluate(() => ({
    csv: csv(["h"], [["=1+2"], ["+1"], ["-1"], ["@x"], ["\tx"], ["\rx"], ["a=b"], ['=HYPERLINK("x")'], [" =x"]]),
    xml: xmlEscape("a\u0000b\u0008c\u000Bd\u001Fe\uFFFEf\uFFFFg\uD800h\uDC00i\t\n\r<&>\"\uD83D\uDE00\u00E9"),
  }));
  check(unit.csv === "h\r\n'=1+2\r\n'+1\r\n'-1\r\n'@x\r\n'\tx\r\n\"'\rx\"\r\na=b\r\n\"'=HYPERLINK(\"\"x\"\")\"\r\n =x\r\n",
    "csv() prefixes ' to cells starting with = + - @ tab CR, then quotes: " + JSON.stringify(unit.csv));
  check(unit.xml === "abcdefghi\t\n\r&lt;&amp;&gt;&quot;\uD83D\uDE00\u00E9", "xmlEscape() drops what XML 1.0 forbids, keeps the rest: " + JSON.stringify(unit.xml));
  // The parser the checks below rely on refuses what XML forbids.
  check((await parseSheet("<row><t>a\uFFFF</t></row>")) === null && (await parseSheet("<row><t>a\u0001</t></row>")) === null,
    "Chromium's XML parser refuses U+FFFF and C0 controls");
  const hostile = ["=1+2", "x\u0001y", "U+FFFF:\uFFFF", "U+FFFE:\uFFFE", "lone:\uD800", "<&>\"'"];
  const bytes = await page.evaluate(async (vals) => Array.from(new Uint8Array(await xlsx(["h"], vals.map((v) => [v])).arrayBuffer())), hostile);
  const hostileRows = await parseSheet(zipEntry(Buffer.from(bytes), "xl/worksheets/sheet1.xml"));
  check(JSON.stringify(hostileRows) === JSON.stringify([["h"], ["=1+2"], ["xy"], ["U+FFFF:"], ["U+FFFE:"], ["lone:"], ["<&>\"'"]]),
    "an XLSX of forbidden characters is well-formed, without them: " + JSON.stringify(hostileRows));

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
  check(JSON.stringify(csvRows) === JSON.stringify([header, ...screen].map((r) => r.map(csvText))), `the CSV export holds the ${screen.length} rows on screen, in their order and columns`);
  // The planted values (add_log's username, service, device and OS; an
  // agent's ComputerName) are on screen as they are, and text in the CSV.
  const planted = screen.flat().filter((c) => /^[=+\-@]/.test(c));
  for (const p of fixture.planted) check(planted.some((c) => c.startsWith(p)), `the planted ${p}… is on screen`);
  check(planted.length >= fixture.planted.length && csvRows.flat().every((c) => !/^[=+\-@\t\r]/.test(c)),
    `no cell of the CSV starts with = + - @ tab or CR (${planted.length} planted cells got a ')`);
  const [xlsxDl] = await Promise.all([page.waitForEvent("download"), page.click("#events-xlsx")]);
  const xlsx = readFileSync(await xlsxDl.path());
  const text = xlsx.toString("latin1");
  check(xlsx.subarray(0, 4).toString("latin1") === "PK\u0003\u0004" && text.includes("xl/worksheets/sheet1.xml"), "the XLSX export is a workbook");
  const sheet = await parseSheet(zipEntry(xlsx, "xl/worksheets/sheet1.xml"));
  check(sheet !== null, "the XLSX sheet is well-formed XML");
  check(JSON.stringify(sheet) === JSON.stringify([header, ...screen]), "the XLSX export holds the rows on screen, planted values as text");
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
  // The record of reads holds the page's own reads, by the admin's certificate.
  const readers = await page.$$eval("#user-access tbody tr td[data-key=reader]", (tds) => tds.map((td) => td.textContent));
  const throughs = await page.$$eval("#user-access tbody tr td[data-key=endpoint]", (tds) => tds.map((td) => td.textContent));
  check(readers.length >= 5 && readers.every((r) => r === fixture.reader), `the record of reads shows ${fixture.reader}'s reads of this user`);
  check(["get_user_logs", "get_user_devices", "get_last_login", "get_user_alerts", "get_user_summary"].every((e) => throughs.includes(e)), "the record of reads names each endpoint read");
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
  // The time spent per user and computer: its CSV and XLSX exports, with the
  // agent's planted ComputerName.
  const ts = fixture.time_spent;
  await page.fill('input[name="tenant"]', ts.tenant);
  await page.check('input[name="per_computer"]');
  await page.click("form.filters button[type=submit]");
  await page.waitForSelector('#time-spent td[data-key="computer"]');
  const tsHeader = await page.$$eval("#time-spent thead th", (ths) => ths.map((th) => th.textContent));
  const tsScreen = await page.$$eval("#time-spent tbody tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
  const tsAt = tsHeader.indexOf("Computer");
  check(tsScreen.length === 1 && tsScreen[0][tsHeader.indexOf("User")] === ts.user && tsScreen[0][tsAt].startsWith(ts.computer),
    `the time spent shows ${ts.user} at the planted computer: ${JSON.stringify(tsScreen)}`);
  const [tsCsvDl] = await Promise.all([page.waitForEvent("download"), page.click("#time-spent-csv")]);
  const tsCsv = parseCsv(readFileSync(await tsCsvDl.path(), "utf8"));
  check(JSON.stringify(tsCsv) === JSON.stringify([tsHeader, ...tsScreen].map((r) => r.map(csvText))) && tsCsv[1][tsAt].startsWith("'" + ts.computer),
    "the time-spent CSV holds the rows on screen, the planted computer as text: " + JSON.stringify(tsCsv));
  const [tsXlsxDl] = await Promise.all([page.waitForEvent("download"), page.click("#time-spent-xlsx")]);
  const tsSheet = await parseSheet(zipEntry(readFileSync(await tsXlsxDl.path()), "xl/worksheets/sheet1.xml"));
  check(JSON.stringify(tsSheet) === JSON.stringify([tsHeader, ...tsScreen]), "the time-spent XLSX is well-formed and holds the rows on screen");

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
