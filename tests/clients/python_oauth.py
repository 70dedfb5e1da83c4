"""Sign a person in to agentcrm with the official Python SDK's OAuth client provider.

    python python_oauth.py URL CALLBACK_PORT

The SDK discovers the authorization server from the 401, registers itself, and asks for the
browser: each authorization URL is printed on stderr as `AUTHORIZE <url>` for whoever plays
the person (the test drives Chromium to it), and the code comes back to a callback server on
http://127.0.0.1:CALLBACK_PORT/callback. Then: list tools, `whoami`, wait for the access
token to expire and call again (the SDK refreshes), and call `search`, which the person did
not allow at first (a 403 the SDK answers by asking the person again). Prints one JSON report.
"""

import asyncio
import json
import sys
import time
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

TIMEOUT_SECONDS = 90


class Memory(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None
        self.saved_at = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken):
        self.tokens = tokens
        self.saved_at = time.time()

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull):
        self.client = client_info


class Callback:
    """One-shot HTTP server for the redirect: GET /callback?code=…&state=…&iss=…"""

    def __init__(self, port):
        self.port = port
        self.result = None

    async def wait(self):
        arrived = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            request = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            target = request.decode().split(" ")[1]
            query = parse_qs(urlparse(target).query)
            body = b"Signed in; you can close this window."
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n")
            writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            writer.close()
            if "code" in query and not arrived.done():
                arrived.set_result(query)

        server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        try:
            query = await arrived
        finally:
            server.close()
        return AuthorizationCodeResult(
            code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
        )


async def drive(url, port):
    storage = Memory()
    callback = Callback(port)
    rounds = []

    async def redirect(authorization_url):
        rounds.append(authorization_url)
        print(f"AUTHORIZE {authorization_url}", file=sys.stderr, flush=True)

    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="Python SDK test",
            redirect_uris=[f"http://127.0.0.1:{port}/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect,
        callback_handler=callback.wait,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            whoami = await client.call_tool("whoami", {})
            if whoami.is_error:
                raise RuntimeError(f"whoami failed: {whoami}")
            first_token = storage.tokens.access_token
            # Wait for the access token to expire (its own clock), then call again.
            expires_at = storage.saved_at + (storage.tokens.expires_in or 0)
            while time.time() < expires_at + 1:
                await asyncio.sleep(0.25)
            listed = await client.call_tool("list_customers", {})
            if listed.is_error:
                raise RuntimeError(f"list_customers after expiry failed: {listed}")
            refreshed = storage.tokens.access_token != first_token
            searched = await client.call_tool("search", {"query": "ada"})
            return {
                "tools": len(tools.tools),
                "whoami": whoami.structured_content,
                "refreshed": refreshed,
                "search_is_error": searched.is_error,
                "search": " ".join(getattr(b, "text", "") for b in searched.content)[:300],
                "authorization_rounds": len(rounds),
                "scope_after": storage.tokens.scope,
            }


def main():
    url, port = sys.argv[1], int(sys.argv[2])
    try:
        report = asyncio.run(asyncio.wait_for(drive(url, port), TIMEOUT_SECONDS))
    except Exception as error:
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        print(f"python OAuth client failed: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
