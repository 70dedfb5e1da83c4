// Loopback credential proxy for the MCP conformance suite (no dependencies).
//
// The suite sends no credentials; agentcrm refuses unauthenticated requests. This proxy
// listens on 127.0.0.1 (a free port), adds `X-Api-Key: <key>` to every request, forwards
// it to the upstream server unchanged otherwise (method, path, headers, Host included, so
// the server's DNS-rebinding check sees what the suite sent) and streams the response
// back as it arrives (SSE included): status, headers and body untouched.
//
// Usage: UPSTREAM=http://127.0.0.1:PORT API_KEY=acrm_... node proxy.mjs
// Prints `proxy listening on http://127.0.0.1:PORT` on stdout once ready.
// Optional PROXY_LOG=path appends one line per request (method, path, status).

import http from 'node:http';
import fs from 'node:fs';

const upstream = new URL(process.env.UPSTREAM ?? '');
const apiKey = process.env.API_KEY;
if (!apiKey || upstream.protocol !== 'http:') {
  console.error('proxy: set UPSTREAM=http://host:port and API_KEY');
  process.exit(2);
}
const log = process.env.PROXY_LOG ? fs.createWriteStream(process.env.PROXY_LOG, { flags: 'a' }) : null;

// Hop-by-hop headers are for one connection only (RFC 9110 7.6.1).
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

function forwardHeaders(raw) {
  const out = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (HOP.has(name) || name === 'x-api-key') continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

const agent = new http.Agent({ keepAlive: true });

const server = http.createServer((req, res) => {
  const headers = forwardHeaders(req.rawHeaders);
  headers.push('X-Api-Key', apiKey);
  const started = Date.now();
  const up = http.request({
    host: upstream.hostname,
    port: upstream.port,
    method: req.method,
    path: req.url,
    headers, // Host is passed through as the client sent it
    agent,
    setHost: false,
  });
  up.on('response', (ur) => {
    res.writeHead(ur.statusCode, ur.statusMessage, forwardHeaders(ur.rawHeaders));
    res.flushHeaders(); // an SSE stream may send nothing for a while
    ur.on('error', () => res.destroy());
    ur.pipe(res);
    log?.write(`${new Date().toISOString()} ${req.method} ${req.url} host=${req.headers.host} -> ${ur.statusCode} ${ur.headers['content-type'] ?? ''} (${Date.now() - started} ms to headers)\n`);
  });
  up.on('error', (err) => {
    log?.write(`${new Date().toISOString()} ${req.method} ${req.url} upstream error: ${err.message}\n`);
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`proxy: upstream error: ${err.message}\n`);
    } else {
      res.destroy();
    }
  });
  // The client went away (e.g. closed an SSE stream): end the upstream request too.
  res.on('close', () => {
    if (!res.writableFinished) up.destroy();
  });
  req.pipe(up);
});

server.keepAliveTimeout = 65_000;
server.listen(0, '127.0.0.1', () => {
  console.log(`proxy listening on http://127.0.0.1:${server.address().port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
