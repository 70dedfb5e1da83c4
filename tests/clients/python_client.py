"""Drive agentcrm with the official Python MCP SDK, as an independent client.

    python python_client.py [--mode auto|legacy] stdio -- COMMAND [ARGS...]
    python python_client.py [--mode auto|legacy] http URL [--header Name:Value ...]

`auto` (the SDK default) probes `server/discover` and adopts 2026-07-28 when the server
offers it, else falls back to `initialize`; `legacy` forces the `initialize` handshake
(2025-11-25, with an HTTP session). Prints one JSON object on stdout; exits non-zero with
a message on stderr when anything fails. The SDK validates each tool's structured content
against the output schema it listed.
"""

import argparse
import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack

import httpx2  # the HTTP client the mcp 2.x SDK is built on (one of its dependencies)
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

TIMEOUT_SECONDS = 60


def parse_header(text):
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected Name:Value, got {text!r}")
    return name.strip(), value.strip()


async def server_target(args, stack):
    if args.transport == "stdio":
        # The SDK otherwise hands the child only a safe subset of the environment.
        return StdioServerParameters(command=args.command[0], args=args.command[1:], env=dict(os.environ))
    if not args.header:
        return args.url
    # Extra headers need our own HTTP client; the transport leaves closing it to us.
    http = await stack.enter_async_context(httpx2.AsyncClient(headers=dict(args.header), timeout=TIMEOUT_SECONDS))
    return streamable_http_client(args.url, http_client=http)


async def drive(args):
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client(await server_target(args, stack), mode=args.mode))
        tools = await client.list_tools()
        whoami = await client.call_tool("whoami", {})
        info = await client.call_tool("server_info", {})
        for name, result in (("whoami", whoami), ("server_info", info)):
            if result.is_error or result.structured_content is None:
                raise RuntimeError(f"{name} failed: {result}")
        try:
            missing = await client.call_tool("no_such_tool", {})
            text = " ".join(getattr(block, "text", str(block)) for block in missing.content)
            unknown = f"isError result: {text}" if missing.is_error else None
        except MCPError as error:  # a JSON-RPC error response
            unknown = f"JSON-RPC error {error.code}: {error.message}"
        if unknown is None:
            raise RuntimeError("calling an unknown tool succeeded")
        # A tool the caller may lack (it needs `admin`): what reaches the model, if refused.
        try:
            admin_only = await client.call_tool("list_agents", {})
            text = " ".join(getattr(block, "text", str(block)) for block in admin_only.content)
            refused = f"isError result: {text}" if admin_only.is_error else None
        except MCPError as error:
            refused = f"JSON-RPC error {error.code}: {error.message}"
        return {
            "protocol_version": client.protocol_version,
            "server_name": client.server_info.name if client.server_info else None,
            "tools": [tool.name for tool in tools.tools],
            "whoami": whoami.structured_content,
            "server_info": info.structured_content,
            "unknown_tool_error": unknown,
            "refused_tool": refused,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto")
    transports = parser.add_subparsers(dest="transport", required=True)
    stdio = transports.add_parser("stdio", help="launch the server and talk over its stdin/stdout")
    stdio.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    http = transports.add_parser("http", help="streamable HTTP")
    http.add_argument("url")
    http.add_argument("--header", action="append", type=parse_header, default=[], metavar="Name:Value")
    args = parser.parse_args()
    if args.transport == "stdio":
        args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not args.command:
            stdio.error("give the server command after `--`")
    try:
        report = asyncio.run(asyncio.wait_for(drive(args), TIMEOUT_SECONDS))
    except Exception as error:
        # anyio task groups wrap failures in ExceptionGroups; name the leaves.
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, TimeoutError):
            error = TimeoutError(f"no result within {TIMEOUT_SECONDS} s")
        print(f"python MCP client failed: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
