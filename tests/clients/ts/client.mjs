// Drive agentcrm with the official TypeScript MCP SDK, as an independent client.
//
//     node client.mjs stdio -- COMMAND [ARGS...]
//     node client.mjs http URL [--header Name:Value ...]
//
// Connects (the SDK's `initialize` handshake; it speaks up to 2025-11-25), lists the tools,
// calls `whoami` (a read), creates a customer with a unique email and reads it back (a write),
// calls a tool that does not exist, and prints one JSON object on stdout; exits non-zero with a
// message on stderr when anything fails. The SDK validates each tool's structured content
// against the output schema it listed. Over stdio the child gets this process's whole
// environment (the SDK otherwise passes only a safe subset).

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

const TIMEOUT_MS = 60_000;
const USAGE = 'usage: node client.mjs stdio -- COMMAND [ARGS...] | http URL [--header Name:Value ...]';

const SDK_VERSION = JSON.parse(
    readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8')
).version;

function parseArgs(argv) {
    const [transport, ...rest] = argv;
    if (transport === 'stdio') {
        const command = rest[0] === '--' ? rest.slice(1) : rest;
        if (command.length === 0) throw new Error(`give the server command after \`--\`\n${USAGE}`);
        return { transport, command };
    }
    if (transport === 'http') {
        const [url, ...options] = rest;
        if (!url) throw new Error(USAGE);
        const headers = {};
        for (let i = 0; i < options.length; i += 2) {
            const [flag, value] = [options[i], options[i + 1]];
            const sep = value?.indexOf(':') ?? -1;
            if (flag !== '--header' || sep <= 0) throw new Error(`expected --header Name:Value\n${USAGE}`);
            headers[value.slice(0, sep).trim()] = value.slice(sep + 1).trim();
        }
        return { transport, url, headers };
    }
    throw new Error(USAGE);
}

/// Keeps every message the server sends, so the report can name the negotiated protocol
/// version (the SDK keeps it to itself over stdio).
function recordIncoming(transport, received) {
    let handler;
    Object.defineProperty(transport, 'onmessage', {
        configurable: true,
        get: () => handler,
        set: (inner) => {
            handler = inner && ((message, extra) => {
                received.push(message);
                inner(message, extra);
            });
        },
    });
}

function describeError(error) {
    if (error instanceof McpError) {
        // The SDK prefixes the server's message with `MCP error <code>: `.
        const message = error.message.replace(/^MCP error -?\d+: /, '');
        return `JSON-RPC error ${error.code}: ${message}`;
    }
    return `${error?.name}: ${error?.message}`;
}

/// The structured content of a successful call, or an error naming the tool.
function structured(name, result) {
    if (result.isError || result.structuredContent === undefined) {
        throw new Error(`${name} failed: ${JSON.stringify(result)}`);
    }
    return result.structuredContent;
}

async function drive(args) {
    const transport =
        args.transport === 'stdio'
            ? new StdioClientTransport({
                  command: args.command[0],
                  args: args.command.slice(1),
                  env: { ...process.env },
                  stderr: 'inherit',
              })
            : new StreamableHTTPClientTransport(new URL(args.url), { requestInit: { headers: args.headers } });
    const received = [];
    recordIncoming(transport, received);
    const client = new Client({ name: 'agentcrm-ts-test-client', version: '1.0.0' });
    // Anything the transport could not parse (a stray line on stdout, a broken SSE event)
    // or a notification the SDK refused lands here: the report carries it.
    const transportErrors = [];
    client.onerror = (error) => transportErrors.push(describeError(error));

    await client.connect(transport);
    try {
        const initialized = received.find((m) => m.result?.protocolVersion !== undefined);
        const tools = [];
        let cursor;
        do {
            const page = await client.listTools(cursor === undefined ? {} : { cursor });
            tools.push(...page.tools.map((tool) => tool.name));
            cursor = page.nextCursor;
        } while (cursor);

        const whoami = structured('whoami', await client.callTool({ name: 'whoami', arguments: {} }));

        const email = `ts-${args.transport}-${randomUUID()}@example.test`;
        const created = structured(
            'create_customer',
            await client.callTool({
                name: 'create_customer',
                arguments: { email, first_name: 'Ada', last_name: 'TypeScript', tags: ['ts-sdk'] },
            })
        ).customer;
        const fetched = structured(
            'get_customer',
            await client.callTool({ name: 'get_customer', arguments: { customer_id: created.id } })
        ).customer;

        let unknown;
        try {
            const missing = await client.callTool({ name: 'no_such_tool', arguments: {} });
            if (missing.isError) {
                unknown = `isError result: ${missing.content.map((block) => block.text ?? JSON.stringify(block)).join(' ')}`;
            }
        } catch (error) {
            unknown = describeError(error);
        }
        if (unknown === undefined) throw new Error('calling an unknown tool succeeded');
        // A tool the caller may lack (it needs `admin`): what reaches the model, if refused.
        let refused = null;
        try {
            const adminOnly = await client.callTool({ name: 'list_agents', arguments: {} });
            if (adminOnly.isError) {
                refused = `isError result: ${adminOnly.content.map((block) => block.text ?? JSON.stringify(block)).join(' ')}`;
            }
        } catch (error) {
            refused = describeError(error);
        }

        const report = {
            sdk: `@modelcontextprotocol/sdk ${SDK_VERSION}`,
            protocol_version: initialized?.result.protocolVersion ?? null,
            server_name: client.getServerVersion()?.name ?? null,
            session_id: transport.sessionId ?? null,
            tools,
            whoami,
            email,
            created,
            fetched,
            unknown_tool_error: unknown,
            refused_tool: refused,
            // A copy: closing the client below aborts its open GET stream, and the SDK reports
            // that abort as an error of its own making, not the server's.
            transport_errors: [...transportErrors],
        };
        if (args.transport === 'http') {
            // The SDK leaves ending the HTTP session to the application (DELETE with the
            // session id); a stateless server answers 405, which the SDK accepts.
            await transport.terminateSession();
            report.session_terminated = transport.sessionId === undefined;
        }
        return report;
    } finally {
        await client.close();
    }
}

async function main() {
    let args;
    try {
        args = parseArgs(process.argv.slice(2));
    } catch (error) {
        console.error(error.message);
        process.exit(2);
    }
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no result within ${TIMEOUT_MS / 1000} s`)), TIMEOUT_MS);
    });
    try {
        const report = await Promise.race([drive(args), timeout]);
        process.stdout.write(`${JSON.stringify(report)}\n`);
    } catch (error) {
        console.error(`TypeScript MCP client failed: ${describeError(error)}`);
        process.exitCode = 1;
    } finally {
        clearTimeout(timer);
    }
    // A stdio child or an HTTP keep-alive socket must not keep us waiting.
    process.exit(process.exitCode ?? 0);
}

await main();
