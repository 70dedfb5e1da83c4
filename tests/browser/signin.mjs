// Completes agentcrm's sign-in and consent in Debian's Chromium, as a person would: opens the
// authorization URL, signs in (when asked), leaves the listed scopes unticked, clicks Allow,
// and waits until the browser has left the server for the client's redirect URI.
//
//   node signin.mjs <authorization-url> <email> <password> [scope-to-untick ...]
//
// Prints the URL the browser was sent back to, and how long the round trip took, as JSON.
import { launch } from './chromium.mjs';

const [url, email, password, ...untick] = process.argv.slice(2);
if (!url || !email || !password) {
  console.error('usage: node signin.mjs <authorization-url> <email> <password> [scope ...]');
  process.exit(2);
}
const started = Date.now();
const browser = await launch();
try {
  const page = await browser.newPage();
  const server = new URL(url).origin;
  await page.goto(url);
  if (await page.locator('#password').count()) {
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill(password);
    await Promise.all([page.waitForURL(/\/oauth\/authorize/), page.getByRole('button', { name: 'Sign in' }).click()]);
    const error = page.locator('[role=alert]');
    if (await error.count()) throw new Error(`sign-in refused: ${await error.first().innerText()}`);
  }
  await page.getByRole('heading', { name: /^Allow / }).waitFor();
  for (const scope of untick) await page.locator(`input[name=grant][value="${scope}"]`).uncheck();
  await Promise.all([
    page.waitForURL((u) => u.origin !== server, { waitUntil: 'commit', timeout: 20000 }),
    page.getByRole('button', { name: 'Allow' }).click(),
  ]);
  console.log(JSON.stringify({ redirected_to: page.url(), round_trip_ms: Date.now() - started }));
} finally {
  await browser.close();
}
