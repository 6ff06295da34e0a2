#!/usr/bin/env node
// Browser audit of the vdna-db web catalogue.
//
// Usage:  node audit.mjs BASE_URL OUT_DIR PATH [PATH...]
//   e.g.  node audit.mjs http://127.0.0.1:40619 /tmp/audit / '/d/ref/gradients:h100'
//
// For every PATH and for two viewports, desktop (1280x900) and phone (390x844,
// deviceScaleFactor 1, isMobile, hasTouch), it loads BASE_URL+PATH in headless
// Chromium (puppeteer-core, no bundled browser: $CHROMIUM, default
// /usr/bin/chromium) and records:
//   status         HTTP status of the document
//   screenshot     full-page PNG, OUT_DIR/<slug>-<desktop|phone>.png, where the
//                  slug is the path with every run of non-alphanumerics turned
//                  into '-' and trimmed ('/' is 'catalogue')
//   overflow_px    document.documentElement.scrollWidth - window.innerWidth
//                  (> 0: the page scrolls sideways). On the phone Chromium
//                  zooms out to fit wide content, which inflates innerWidth,
//                  so the width used is min(innerWidth, viewport width);
//                  inner_width, layout_width, scale, scroll_width are reported
//   overflowing    up to 5 elements whose right edge passes that width + 1 and
//                  that no ancestor clips or scrolls (overflow-x other than
//                  visible); the elements where the overflow starts (their
//                  parent fits) come first
//   plots          outermost <svg> elements plus <img> whose src contains
//                  '/plot/' and that loaded (naturalWidth > 0); plots_broken
//                  counts '/plot/' images that did not load
//   focus          Tab pressed up to 40 times: reached (distinct elements
//                  focused), unnamed (focused elements with an empty accessible
//                  name, as Chromium's accessibility tree computes it; falls
//                  back to aria-label, labels, innerText, title, alt, value),
//                  invisible (focused elements with an empty rect),
//                  no_focus_ring (no outline or box-shadow while focused),
//                  wrapped (focus came back to the start: every tab stop seen),
//                  sequence (each stop: tag, el, role, name, visible)
//   violations     axe-core (injected from node_modules) violations:
//                  {id, impact, help, nodes, targets (first 3)}
//   console_errors, failed_requests   page errors / failed sub-resources
//   elapsed_ms
// and prints one JSON object on stdout: {"pages":[...], "elapsed_ms": N}.
//
// Dependencies (package.json): puppeteer-core 24.x (25.x needs node >= 22.12;
// this runs on node 20) and axe-core 4.x. puppeteer-core never downloads a
// browser.
//
// Exit status: 0 when every page was audited (findings are data, not failures:
// the Rust test decides what to assert); 2 on bad usage; 1 with a message on
// stderr when it could not audit (Chromium missing or failing to start, a page
// that would not load, a page that took longer than AUDIT_PAGE_TIMEOUT_MS,
// default 30000).
//
// How the Rust integration test uses it: it starts `vdna-db serve --addr
// 127.0.0.1:0` on a temporary store holding some DNAs, reads the
// "listening on http://127.0.0.1:PORT" line, runs
//   node tests/web/audit.mjs http://127.0.0.1:PORT <tmpdir> <paths...>
// (after `npm ci` in tests/web; the test should skip, not fail, when node,
// tests/web/node_modules or Chromium are missing), parses stdout as JSON and
// asserts on the fields above (e.g. overflow_px == 0 on the phone, no
// serious/critical axe violations, focus.unnamed empty, plots > 0 where a page
// draws plots). The screenshots stay in OUT_DIR for a human to look at.
// stdout carries only the JSON; diagnostics go to stderr.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

const PAGE_TIMEOUT_MS = Number(process.env.AUDIT_PAGE_TIMEOUT_MS || 30000);
const MAX_TABS = 40;
const VIEWPORTS = [
  { name: 'desktop', width: 1280, height: 900, deviceScaleFactor: 1, isMobile: false, hasTouch: false },
  { name: 'phone', width: 390, height: 844, deviceScaleFactor: 1, isMobile: true, hasTouch: true },
];

class AuditError extends Error {}

function usage(msg) {
  if (msg) process.stderr.write(`audit.mjs: ${msg}\n`);
  process.stderr.write('usage: node audit.mjs BASE_URL OUT_DIR PATH [PATH...]\n');
  process.exit(2);
}

function slugOf(p) {
  if (p === '/' || p === '') return 'catalogue';
  const s = p.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 120).replace(/-+$/, '');
  return s || 'page';
}

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new AuditError(`${what}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// ---- in-page helpers (serialised into the page by page.evaluate) ----------

function measureOverflow(deviceWidth) {
  // On a phone (isMobile) Chromium zooms out to fit wide content, so
  // window.innerWidth grows with the overflow; the device width the page was
  // laid out for is the yardstick.
  const iw = Math.min(window.innerWidth, deviceWidth);
  const sw = document.documentElement.scrollWidth;
  const describe = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    const cls = typeof el.className === 'string' ? el.className : (el.getAttribute('class') || '');
    for (const c of cls.split(/\s+/).filter(Boolean).slice(0, 3)) s += '.' + c;
    return s;
  };
  const clipped = (el) => {
    for (let a = el.parentElement; a && a !== document.documentElement; a = a.parentElement) {
      if (a === document.body) break;
      const ox = getComputedStyle(a).overflowX;
      if (ox !== 'visible') return true; // auto, scroll, hidden, clip
    }
    return false;
  };
  const offending = new Set();
  const all = document.body ? document.body.querySelectorAll('*') : [];
  for (const el of all) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > iw + 1 && !clipped(el)) offending.add(el);
  }
  const list = [...offending].map((el) => {
    const r = el.getBoundingClientRect();
    const text = (el.innerText || el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 40);
    return {
      el: describe(el),
      parent: el.parentElement ? describe(el.parentElement) : null,
      right: Math.round(r.right),
      width: Math.round(r.width),
      text,
      origin: !offending.has(el.parentElement),
    };
  });
  list.sort((a, b) => (b.origin - a.origin) || (b.right - a.right));
  return { inner_width: window.innerWidth, layout_width: iw, scale: window.visualViewport ? window.visualViewport.scale : 1, scroll_width: sw, overflow_px: sw - iw, overflowing_count: list.length, overflowing: list.slice(0, 5) };
}

async function loadPlotImages(ms) {
  // Lazy images below the fold are not awaited by the 'load' event.
  const imgs = [...document.querySelectorAll('img')].filter((i) => (i.getAttribute('src') || '').includes('/plot/'));
  await Promise.all(imgs.map((img) => {
    if (img.complete) return null;
    img.loading = 'eager';
    return new Promise((res) => {
      img.addEventListener('load', res, { once: true });
      img.addEventListener('error', res, { once: true });
      setTimeout(res, ms);
    });
  }));
}

function countPlots() {
  const svgs = [...document.querySelectorAll('svg')].filter((s) => !s.parentElement || !s.parentElement.closest('svg')).length;
  const imgs = [...document.querySelectorAll('img')].filter((i) => (i.getAttribute('src') || '').includes('/plot/'));
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  return { plots: svgs + ok, plots_svg: svgs, plots_img: ok, plots_broken: imgs.length - ok };
}

function focusedInfo() {
  const el = document.activeElement;
  if (!el || el === document.body || el === document.documentElement) return { none: true };
  window.__auditSeen = window.__auditSeen || [];
  const idx = window.__auditSeen.indexOf(el);
  const seenBefore = idx >= 0;
  if (!seenBefore) window.__auditSeen.push(el);
  const clean = (s) => (s || '').replace(/\s+/g, ' ').trim();
  let name = clean(el.getAttribute('aria-label'));
  if (!name && el.getAttribute('aria-labelledby')) {
    name = clean(el.getAttribute('aria-labelledby').split(/\s+/)
      .map((id) => document.getElementById(id)).filter(Boolean).map((n) => n.textContent).join(' '));
  }
  if (!name && el.labels && el.labels.length) name = clean([...el.labels].map((l) => l.innerText).join(' '));
  if (!name && el.tagName !== 'SELECT') name = clean(el.innerText).slice(0, 60);
  if (!name) name = clean(el.getAttribute('title'));
  if (!name) name = clean(el.getAttribute('alt'));
  if (!name && el.querySelector) {
    const img = el.querySelector('img[alt], svg[aria-label]');
    if (img) name = clean(img.getAttribute('alt') || img.getAttribute('aria-label'));
  }
  if (!name && 'value' in el && el.tagName !== 'SELECT') name = clean(String(el.value));
  const r = el.getBoundingClientRect();
  const cs = getComputedStyle(el);
  let d = el.tagName.toLowerCase();
  if (el.id) d += '#' + el.id;
  const cls = typeof el.className === 'string' ? el.className : '';
  for (const c of cls.split(/\s+/).filter(Boolean).slice(0, 3)) d += '.' + c;
  if (el.getAttribute('name')) d += `[name=${el.getAttribute('name')}]`;
  else if (el.getAttribute('href')) d += `[href=${el.getAttribute('href').slice(0, 60)}]`;
  return {
    index: seenBefore ? idx : window.__auditSeen.length - 1,
    seen_before: seenBefore,
    tag: el.tagName.toLowerCase(),
    el: d,
    heuristic_name: name,
    visible: r.width > 0 && r.height > 0 && cs.visibility !== 'hidden',
    focus_ring: (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0) || cs.boxShadow !== 'none',
  };
}

async function runAxe() {
  // eslint-disable-next-line no-undef
  const r = await axe.run(document, { resultTypes: ['violations'] });
  return r.violations.map((v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    nodes: v.nodes.length,
    targets: v.nodes.slice(0, 3).map((n) => (Array.isArray(n.target) ? n.target.flat().join(' ') : String(n.target))),
    summary: v.nodes[0] && v.nodes[0].failureSummary ? v.nodes[0].failureSummary.replace(/\s+/g, ' ').slice(0, 200) : undefined,
  }));
}

// ---- driver ---------------------------------------------------------------

async function keyboardWalk(page) {
  const sequence = [];
  let wrapped = false;
  // Start from the top of the document with nothing focused.
  await page.evaluate(() => {
    window.__auditSeen = [];
    if (document.activeElement && document.activeElement.blur) document.activeElement.blur();
    window.scrollTo(0, 0);
  });
  for (let i = 0; i < MAX_TABS; i++) {
    await page.keyboard.press('Tab');
    const info = await page.evaluate(focusedInfo);
    if (info.none) { wrapped = sequence.length > 0; break; }
    if (info.seen_before) { wrapped = true; break; }
    // The accessible name as Chromium computes it (labels, alt of contents,
    // aria-*); the DOM heuristic is the fallback.
    let role = null;
    let name = info.heuristic_name;
    try {
      const h = await page.evaluateHandle(() => document.activeElement);
      const ax = await page.accessibility.snapshot({ root: h, interestingOnly: false });
      await h.dispose();
      if (ax) {
        role = ax.role || null;
        if (typeof ax.name === 'string') name = ax.name.replace(/\s+/g, ' ').trim().slice(0, 60);
      }
    } catch { /* keep the heuristic */ }
    sequence.push({ tag: info.tag, el: info.el, role, name, visible: info.visible, focus_ring: info.focus_ring });
  }
  return {
    reached: sequence.length,
    wrapped,
    unnamed: sequence.filter((s) => !s.name).map(({ tag, el, role }) => ({ tag, el, role })),
    invisible: sequence.filter((s) => !s.visible).map(({ tag, el, name }) => ({ tag, el, name })),
    no_focus_ring: sequence.filter((s) => !s.focus_ring).map(({ el }) => el),
    sequence,
  };
}

async function auditPage(browser, baseUrl, outDir, p, vp, slug, axeSource) {
  const t0 = Date.now();
  const page = await browser.newPage();
  const consoleErrors = [];
  const failedRequests = [];
  page.on('pageerror', (e) => consoleErrors.push(String(e && e.message || e).slice(0, 300)));
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text().slice(0, 300)); });
  page.on('requestfailed', (r) => failedRequests.push({ url: r.url(), error: r.failure() && r.failure().errorText }));
  page.on('response', (r) => { if (r.status() >= 400 && r.request().resourceType() !== 'document') failedRequests.push({ url: r.url(), status: r.status() }); });
  try {
    page.setDefaultTimeout(PAGE_TIMEOUT_MS);
    page.setDefaultNavigationTimeout(PAGE_TIMEOUT_MS);
    await page.setBypassCSP(true); // so axe can be injected whatever the page's CSP
    await page.setCacheEnabled(false); // a real 200, not a 304 from the previous viewport
    await page.setViewport({
      width: vp.width, height: vp.height, deviceScaleFactor: vp.deviceScaleFactor,
      isMobile: vp.isMobile, hasTouch: vp.hasTouch,
    });
    const url = baseUrl + p;
    let response;
    try {
      response = await page.goto(url, { waitUntil: 'load', timeout: PAGE_TIMEOUT_MS });
    } catch (e) {
      throw new AuditError(`loading ${url} (${vp.name}) failed: ${e.message}`);
    }
    const status = response ? response.status() : null;
    await page.evaluate(loadPlotImages, 10000);

    const overflow = await page.evaluate(measureOverflow, vp.width);
    const plots = await page.evaluate(countPlots);

    const shot = path.resolve(outDir, `${slug}-${vp.name}.png`);
    await page.screenshot({ path: shot, fullPage: true, captureBeyondViewport: true });
    // Full-page capture may resize the viewport; put it back before the rest.
    await page.setViewport({
      width: vp.width, height: vp.height, deviceScaleFactor: vp.deviceScaleFactor,
      isMobile: vp.isMobile, hasTouch: vp.hasTouch,
    });

    await page.addScriptTag({ content: axeSource });
    const violations = await page.evaluate(runAxe);

    const focus = await keyboardWalk(page);

    return {
      path: p,
      viewport: vp.name,
      url,
      status,
      screenshot: shot,
      overflow_px: overflow.overflow_px,
      inner_width: overflow.inner_width,
      layout_width: overflow.layout_width,
      scale: overflow.scale,
      scroll_width: overflow.scroll_width,
      overflowing: overflow.overflowing,
      overflowing_count: overflow.overflowing_count,
      ...plots,
      focus,
      violations,
      console_errors: consoleErrors,
      failed_requests: failedRequests,
      elapsed_ms: Date.now() - t0,
    };
  } finally {
    await page.close().catch(() => {});
  }
}

async function main() {
  const [baseArg, outDir, ...paths] = process.argv.slice(2);
  if (!baseArg || !outDir || paths.length === 0) usage('need BASE_URL, OUT_DIR and at least one PATH');
  if (!/^https?:\/\//.test(baseArg)) usage(`BASE_URL must start with http:// or https://, got ${JSON.stringify(baseArg)}`);
  const baseUrl = baseArg.replace(/\/+$/, '');
  for (const p of paths) if (!p.startsWith('/')) usage(`PATH must start with '/', got ${JSON.stringify(p)}`);

  const chromium = process.env.CHROMIUM || '/usr/bin/chromium';
  try {
    fs.accessSync(chromium, fs.constants.X_OK);
  } catch {
    throw new AuditError(`Chromium not found or not executable at ${chromium} (set CHROMIUM to its path)`);
  }

  let axeSource;
  try {
    axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
  } catch (e) {
    throw new AuditError(`axe-core not installed (run \`npm ci\` in ${HERE}): ${e.message}`);
  }
  let puppeteer;
  try {
    puppeteer = (await import('puppeteer-core')).default;
  } catch (e) {
    throw new AuditError(`puppeteer-core not installed (run \`npm ci\` in ${HERE}): ${e.message}`);
  }

  fs.mkdirSync(outDir, { recursive: true });

  const t0 = Date.now();
  let browser;
  try {
    try {
      browser = await puppeteer.launch({
        executablePath: chromium,
        headless: true,
        args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--hide-scrollbars'],
        timeout: PAGE_TIMEOUT_MS,
        protocolTimeout: PAGE_TIMEOUT_MS * 2,
      });
    } catch (e) {
      throw new AuditError(`could not start Chromium at ${chromium}: ${e.message}`);
    }

    const used = new Map();
    const slugs = paths.map((p) => {
      const s = slugOf(p);
      const n = (used.get(s) || 0) + 1;
      used.set(s, n);
      return n === 1 ? s : `${s}-${n}`;
    });

    const pages = [];
    for (let i = 0; i < paths.length; i++) {
      for (const vp of VIEWPORTS) {
        pages.push(await withTimeout(
          auditPage(browser, baseUrl, outDir, paths[i], vp, slugs[i], axeSource),
          PAGE_TIMEOUT_MS, `auditing ${paths[i]} (${vp.name})`,
        ));
      }
    }
    process.stdout.write(JSON.stringify({ pages, elapsed_ms: Date.now() - t0 }, null, 1) + '\n');
  } finally {
    if (browser) {
      const proc = browser.process();
      await withTimeout(browser.close(), 10000, 'closing Chromium').catch(() => {
        if (proc && proc.exitCode === null) proc.kill('SIGKILL');
      });
    }
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    const msg = e instanceof AuditError ? e.message : (e && e.stack) || String(e);
    process.stderr.write(`audit.mjs: error: ${msg}\n`);
    process.exit(1);
  },
);
