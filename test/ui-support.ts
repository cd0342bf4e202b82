// Browser-test helpers for the dashboard: build the page from ui/ (so the test drives the
// current source), drive Debian's Chromium through playwright-core, sign in, and write the
// screenshots the README and docs/dashboard.md show.
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { ROOT } from './helpers.js';

export const CHROMIUM = process.env.BERTH_CHROMIUM ?? '/usr/bin/chromium';
export const SCREENSHOTS = join(ROOT, 'docs/screenshots');

/**
 * Bundles ui/ into dist/ui/app, as `npm run build:ui` does (the type-check that also runs
 * there is left to the build: it costs more than the bundling).
 */
export function buildUi(): void {
  const v = spawnSync(process.execPath, [join(ROOT, 'node_modules/vite/bin/vite.js'), 'build', '--config', join(ROOT, 'ui/vite.config.ts')], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  if (v.status !== 0) throw new Error(`vite build failed:\n${v.stdout}${v.stderr}`);
}

export async function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A fresh page (its own context: its own sessionStorage) that records page errors. */
export async function newPage(browser: Browser): Promise<{ page: Page; errors: string[] }> {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  return { page, errors };
}

/** Signs in through the form, as a user does. */
export async function signIn(page: Page, url: string, token: string): Promise<void> {
  await page.goto(`${url}/ui/`);
  await page.getByTestId('token-input').fill(token);
  await page.getByTestId('sign-in').click();
  await page.getByTestId('whoami').waitFor();
}

export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: false });
}
