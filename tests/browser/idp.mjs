// A real OpenID Connect provider for the federation tests: oidc-provider with one
// confidential client and its built-in (development) sign-in pages, on loopback.
//
//   node idp.mjs CLIENT_ID CLIENT_SECRET REDIRECT_URI
//
// Every login is an account whose `sub` and `email` are what was typed as the login; the
// email is verified unless it starts with `unverified`. Prints `issuer <url>` once listening.
import Provider from 'oidc-provider';

const [clientId, clientSecret, redirectUri] = process.argv.slice(2);
if (!redirectUri) {
  console.error('usage: node idp.mjs CLIENT_ID CLIENT_SECRET REDIRECT_URI');
  process.exit(2);
}

const server = (await import('node:http')).createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { email: ['email', 'email_verified'], openid: ['sub'] },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: id, email_verified: !id.startsWith('unverified') }),
  }),
  // Loopback over plain HTTP is a test setting: say so instead of refusing.
  clientBasedCORS: () => true,
});
provider.proxy = false;
server.on('request', provider.callback());
console.log(`issuer ${issuer}`);
