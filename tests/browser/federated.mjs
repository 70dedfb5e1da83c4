// Signs in to agentcrm through the organization's OpenID provider, in Debian's Chromium: on
// agentcrm's sign-in page names the organization, signs in at the provider (oidc-provider's
// development pages: any password), continues past its consent, then allows on agentcrm's
// consent page when it comes.
//
//   node federated.mjs <authorization-url> <organization> <login>
//
// Prints JSON: where the browser ended (`redirected_to`) or the error page it showed
// (`error`), and how long it took.
import { launch } from './chromium.mjs';

const [url, organization, login] = process.argv.slice(2);
if (!url || !organization || !login) {
  console.error('usage: node federated.mjs <authorization-url> <organization> <login>');
  process.exit(2);
}
const started = Date.now();
const browser = await launch();
try {
  const page = await browser.newPage();
  // Every redirect on stderr, for whoever reads a failure.
  page.on('response', (r) => {
    if (r.status() >= 300) console.error(`${r.status()} ${r.url().slice(0, 120)} -> ${(r.headers().location ?? '').slice(0, 120)}`);
  });
  const server = new URL(url).origin;
  await page.goto(url);
  await page.locator('#federate-organization').fill(organization);
  const [posted] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server}/oauth/authorize`) && r.request().method() === 'POST'),
    page.getByRole('button', { name: "Continue to your organization's sign-in" }).click(),
  ]);
  if (posted.status() !== 303) {
    await page.waitForLoadState();
    const alert = await page.locator('[role=alert]').first().innerText();
    console.log(JSON.stringify({ error: alert, ms: Date.now() - started }));
  } else {
    // The first answer of agentcrm's after the provider: a page (consent, or an error), or a
    // redirect that leaves it (back to the client, which may not be listening).
    const leaves = (r) => {
      const to = r.headers().location;
      return to !== undefined && new URL(to, server).origin !== server;
    };
    const settled = page.waitForResponse(
      (r) => r.url().startsWith(server) && (r.status() < 300 || r.status() >= 400 || leaves(r)),
      { timeout: 30000 },
    );
    await page.locator('input[name=login]').waitFor({ timeout: 15000 });
    await page.locator('input[name=login]').fill(login);
    await page.locator('input[name=password]').fill('any password');
    await page.getByRole('button', { name: 'Sign-in' }).click();
    // The provider asks for consent the first time.
    const cont = page.getByRole('button', { name: 'Continue' });
    const first = await Promise.race([settled.then(() => 'back'), cont.waitFor({ timeout: 10000 }).then(() => 'consent')]);
    if (first === 'consent') await cont.click();
    const answer = await settled;
    if (leaves(answer)) {
      console.log(JSON.stringify({ redirected_to: answer.headers().location, ms: Date.now() - started }));
    } else {
      await page.waitForLoadState();
      if (await page.getByRole('heading', { name: /^Allow / }).count()) {
        // Where agentcrm sends the browser back (read from the redirect itself).
        const [allowed] = await Promise.all([
          page.waitForResponse((r) => r.url().startsWith(`${server}/oauth/authorize`) && r.request().method() === 'POST'),
          page.getByRole('button', { name: 'Allow' }).click(),
        ]);
        console.log(JSON.stringify({ redirected_to: allowed.headers().location, ms: Date.now() - started }));
      } else {
        const alert = await page.locator('[role=alert]').first().innerText();
        console.log(JSON.stringify({ error: alert, ms: Date.now() - started }));
      }
    }
  }
} finally {
  await browser.close();
}
