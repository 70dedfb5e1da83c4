"""Drive agentcrm with the official Python MCP SDK, as an independent client.

    python python_client.py [--mode auto|legacy] stdio -- COMMAND [ARGS...]
    python python_client.py [--mode auto|legacy] http URL

`auto` negotiates 2026-07-28 through `server/discover`; `legacy` forces the `initialize`
handshake (2025-11-25, with an HTTP session). Prints one JSON object on stdout; exits
non-zero with a message on stderr when anything fails. The SDK validates each tool's
structured content against the output schema it listed.
"""

import argparse
import asyncio
import json
import os
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters

TIMEOUT_SECONDS = 60


def server_target(args):
    if args.transport == "http":
        return args.target[0]
    command, *rest = [a for a in args.target if a != "--"]
    # The SDK passes only a safe subset of the environment; hand the server its configuration.
    env = {k: v for k, v in os.environ.items() if k.startswith("AGENTCRM_") or k in ("DATABASE_URL", "RUST_LOG")}
    return StdioServerParameters(command=command, args=rest, env=env)


async def drive(args):
    async with Client(server_target(args), mode=args.mode, raise_exceptions=True) as client:
        tools = await client.list_tools()
        whoami = await client.call_tool("whoami", {})
        info = await client.call_tool("server_info", {})
        for name, result in (("whoami", whoami), ("server_info", info)):
            if result.is_error or result.structured_content is None:
                raise RuntimeError(f"{name} failed: {result}")
        try:
            missing = await client.call_tool("no_such_tool", {})
            unknown = f"isError result: {missing.content}" if missing.is_error else None
        except Exception as error:  # the SDK raises protocol errors
            unknown = f"{type(error).__name__}: {error}"
        if unknown is None:
            raise RuntimeError("calling an unknown tool succeeded")
        return {
            "protocol_version": client.protocol_version,
            "server_name": client.server_info.name if client.server_info else None,
            "tools": [tool.name for tool in tools.tools],
            "whoami": whoami.structured_content,
            "server_info": info.structured_content,
            "unknown_tool_error": unknown,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto")
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("target", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if not args.target:
        parser.error("give the server command (stdio) or URL (http)")
    try:
        report = asyncio.run(asyncio.wait_for(drive(args), TIMEOUT_SECONDS))
    except Exception as error:
        print(f"python MCP client failed: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
