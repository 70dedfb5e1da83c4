"""Drive agentcrm through langchain-mcp-adapters, as a LangChain application would.

    python langchain_client.py stdio -- COMMAND [ARGS...]
    python langchain_client.py http URL [--header Name:Value ...]

`MultiServerMCPClient` loads the server's tools as LangChain tools; they are invoked the way
an agent executor invokes them (a tool call in, a `ToolMessage` out), no model involved:
`whoami` (a read), `create_customer` with a unique email then `get_customer` of it (a write),
`get_customer` of an id that does not exist (a tool error the model is shown), and a tool the
server does not have. The adapter opens a new MCP session for every operation (over stdio,
a new server process). Over stdio the server gets the agentcrm variables of this process
(`AGENTCRM_*`, `DATABASE_URL`, `RUST_LOG`) as the connection's `env`, as a user's config
would name them. Prints one JSON object on stdout; exits non-zero with a message on stderr
when anything fails.
"""

import argparse
import asyncio
import json
import os
import sys
import uuid
from importlib.metadata import version

from langchain_core.messages import ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import convert_mcp_tool_to_langchain_tool
from mcp.shared.exceptions import McpError
from mcp.types import Tool

TIMEOUT_SECONDS = 90
SERVER = "agentcrm"


def parse_header(text):
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected Name:Value, got {text!r}")
    return name.strip(), value.strip()


def connection(args):
    if args.transport == "stdio":
        env = {k: v for k, v in os.environ.items() if k.startswith("AGENTCRM_") or k in ("DATABASE_URL", "RUST_LOG")}
        return {"transport": "stdio", "command": args.command[0], "args": args.command[1:], "env": env}
    return {"transport": "streamable_http", "url": args.url, "headers": dict(args.header)}


async def invoke(tool, args):
    """Invokes a LangChain tool with a tool call, as an agent executor does."""
    message = await tool.ainvoke({"type": "tool_call", "id": f"call-{uuid.uuid4().hex[:8]}", "name": tool.name, "args": args})
    if not isinstance(message, ToolMessage):
        raise RuntimeError(f"{tool.name} did not answer a ToolMessage: {message!r}")
    return message


def text_of(message):
    content = message.content
    if isinstance(content, str):
        return content
    return " ".join(block.get("text", "") if isinstance(block, dict) else str(block) for block in content)


def structured(message):
    if message.status != "success" or not message.artifact:
        raise RuntimeError(f"{message.name} failed: {text_of(message)}")
    return message.artifact["structured_content"]


async def drive(args):
    conn = connection(args)
    client = MultiServerMCPClient({SERVER: conn})
    info = (await client.get_server_info(server_name=SERVER))[SERVER]
    tools = await client.get_tools()
    by_name = {tool.name: tool for tool in tools}

    whoami = await invoke(by_name["whoami"], {})
    email = f"langchain-{args.transport}-{uuid.uuid4()}@example.test"
    created = structured(
        await invoke(
            by_name["create_customer"],
            {"email": email, "first_name": "Ada", "last_name": "LangChain", "tags": ["langchain"]},
        )
    )["customer"]
    fetched = structured(await invoke(by_name["get_customer"], {"customer_id": created["id"]}))["customer"]
    # A tool error (isError) reaches the model as a ToolMessage with status "error".
    missing = await invoke(by_name["get_customer"], {"customer_id": str(uuid.uuid4())})

    # A tool the server does not have (say, one listed earlier and since withdrawn), wrapped
    # by the adapter like any listed tool.
    ghost = convert_mcp_tool_to_langchain_tool(
        None, Tool(name="no_such_tool", inputSchema={"type": "object"}), connection=conn, server_name=SERVER
    )
    try:
        answer = await invoke(ghost, {})
        unknown = f"ToolMessage {answer.status}: {text_of(answer)}" if answer.status == "error" else None
    except McpError as error:  # a JSON-RPC error response
        unknown = f"JSON-RPC error {error.error.code}: {error.error.message}"
    if unknown is None:
        raise RuntimeError("calling an unknown tool succeeded")

    return {
        "adapter": f"langchain-mcp-adapters {version('langchain-mcp-adapters')}",
        "mcp": version("mcp"),
        "protocol_version": str(info.protocolVersion),
        "server_name": info.serverInfo.name,
        "tools": [tool.name for tool in tools],
        "tool_types": sorted({type(tool).__name__ for tool in tools}),
        "whoami": structured(whoami),
        "whoami_status": whoami.status,
        "whoami_text": text_of(whoami),
        "email": email,
        "created": created,
        "fetched": fetched,
        "missing_status": missing.status,
        "missing_text": text_of(missing),
        "unknown_tool_error": unknown,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        print(f"langchain MCP client failed: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
