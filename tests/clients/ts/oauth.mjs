// Signs a person in to agentcrm with the official TypeScript SDK's OAuth support.
//
//   node oauth.mjs URL CALLBACK_PORT
//
// The SDK discovers the authorization server from the 401 and registers itself; each
// authorization URL is printed on stderr as `AUTHORIZE <url>` for whoever plays the person
// (the test drives Chromium to it), and the code comes back to a callback server on
// http://127.0.0.1:CALLBACK_PORT/callback. Then: list tools, `whoami`, wait for the access
// token to expire and call again (the SDK refreshes on the 401), and call `search`, which the
// person did not allow at first (on the 403 the SDK asks the person again). Prints one JSON
// report.
import http from 'node:http';

import { UnauthorizedError, auth } from '@modelcontextprotocol/sdk/client/auth.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, port] = process.argv.slice(2);
const redirectUrl = `http://127.0.0.1:${port}/callback`;
const store = { tokens: undefined, client: undefined, verifier: undefined, savedAt: 0 };
let rounds = 0;
let stepUps = 0;
let pendingCode;

/// One-shot callback server, listening before the browser is sent anywhere.
function waitForCode() {
    return new Promise((resolve, reject) => {
        const server = http.createServer((req, res) => {
            const code = new URL(req.url, redirectUrl).searchParams.get('code');
            res.end('Signed in; you can close this window.');
            if (code) {
                server.close();
                resolve(code);
            }
        });
        server.on('error', reject);
        server.listen(Number(port), '127.0.0.1');
    });
}

const provider = {
    get redirectUrl() {
        return redirectUrl;
    },
    get clientMetadata() {
        return {
            client_name: 'TypeScript SDK test',
            redirect_uris: [redirectUrl],
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code'],
            token_endpoint_auth_method: 'none',
        };
    },
    clientInformation: () => store.client,
    saveClientInformation: (info) => {
        store.client = info;
    },
    tokens: () => store.tokens,
    saveTokens: (tokens) => {
        store.tokens = tokens;
        store.savedAt = Date.now();
    },
    redirectToAuthorization: (authorizationUrl) => {
        rounds += 1;
        pendingCode = waitForCode();
        console.error(`AUTHORIZE ${authorizationUrl.toString()}`);
    },
    saveCodeVerifier: (verifier) => {
        store.verifier = verifier;
    },
    codeVerifier: () => store.verifier,
};

/// Runs `action`; when the SDK needs the person (UnauthorizedError), finishes the
/// authorization with the code the browser brings back and runs it again. On a 403 the SDK
/// (1.32) only refreshes, which cannot add scope, and gives up: the application then asks
/// the person for the challenged scope itself, as the SDK's `auth()` lets it.
async function asPerson(transport, action, scope) {
    try {
        return await action();
    } catch (error) {
        if (error instanceof UnauthorizedError) {
            await transport.finishAuth(await pendingCode);
            return await action();
        }
        if (error?.code !== 403 || !scope) throw error;
        store.tokens = undefined; // a refresh cannot widen the grant: go through the person
        const result = await auth(provider, { serverUrl: new URL(url), scope });
        if (result !== 'REDIRECT') throw new Error(`expected to ask the person, got ${result}`);
        await transport.finishAuth(await pendingCode);
        stepUps += 1;
        return await action();
    }
}

async function drive() {
    let transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
    const client = new Client({ name: 'agentcrm-ts-oauth', version: '1.0.0' });
    try {
        await client.connect(transport);
    } catch (error) {
        if (!(error instanceof UnauthorizedError)) throw error;
        await transport.finishAuth(await pendingCode);
        transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
        await client.connect(transport);
    }
    try {
        const tools = await client.listTools();
        const whoami = await client.callTool({ name: 'whoami', arguments: {} });
        if (whoami.isError) throw new Error(`whoami failed: ${JSON.stringify(whoami)}`);
        const first = store.tokens.access_token;
        // Until the server refuses the token (its expiry, with the server's small leeway).
        const deadline = Date.now() + 30_000;
        for (;;) {
            const probe = await fetch(url, {
                method: 'POST',
                headers: {
                    authorization: `Bearer ${first}`,
                    accept: 'application/json, text/event-stream',
                    'content-type': 'application/json',
                },
                body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
            });
            await probe.body?.cancel();
            if (probe.status === 401) break;
            if (Date.now() > deadline) throw new Error('the access token never expired');
            await new Promise((r) => setTimeout(r, 250));
        }
        const listed = await asPerson(transport, () => client.callTool({ name: 'list_customers', arguments: {} }));
        if (listed.isError) throw new Error(`list_customers after expiry failed: ${JSON.stringify(listed)}`);
        const refreshed = store.tokens.access_token !== first;
        const searched = await asPerson(
            transport,
            () => client.callTool({ name: 'search', arguments: { query: 'ada' } }),
            'search'
        );
        const after = await client.callTool({ name: 'list_customers', arguments: {} });
        return {
            tools: tools.tools.length,
            whoami: whoami.structuredContent,
            refreshed,
            search_is_error: searched.isError ?? false,
            still_lists_customers: !after.isError,
            authorization_rounds: rounds,
            application_step_ups: stepUps,
            scope_after: store.tokens.scope,
        };
    } finally {
        await client.close();
    }
}

const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('no result within 90 s')), 90_000));
try {
    const report = await Promise.race([drive(), timeout]);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exit(0);
} catch (error) {
    console.error(`TypeScript OAuth client failed: ${error?.stack ?? error}`);
    process.exit(1);
}
