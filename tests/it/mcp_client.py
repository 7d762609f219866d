"""Drives ferry's MCP server with the official MCP Python SDK, in one session, through steps
given as JSON; prints a JSON list with one result per step. tests/it/mcp.rs runs it.

    mcp_client.py stdio <ferry binary> <env as JSON> <steps as JSON>
    mcp_client.py http <url of /mcp> <headers as JSON> <steps as JSON>

Steps:
    {"list_tools": true}                      -> {"tools": [{name, description, input_schema, output_schema, annotations}]}
    {"call": NAME, "args": {...}}             -> {"is_error", "structured", "text"}
    {"download": URL, "to": PATH, "user_agent": UA}  -> {"exit": curl's exit code}
    {"until": NAME, "args": {...}, "field": F, "in": [...]}  -> the last call's result,
        calling NAME (link_status) up to 100 times, 0.1 s apart, until the link's F is in "in"
A string "$N.key" in a step stands for structured["key"] of step N's result.
"""

import asyncio
import json
import subprocess
import sys

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def fill(value, results):
    """Replaces "$N.key" strings with what step N returned under that key."""
    if isinstance(value, str) and value.startswith("$"):
        step, key = value[1:].split(".", 1)
        return results[int(step)]["structured"][key]
    if isinstance(value, dict):
        return {k: fill(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, results) for v in value]
    return value


async def call(client, name, args):
    r = await client.call_tool(name, args)
    text = "".join(getattr(c, "text", "") for c in r.content)
    return {"is_error": bool(r.is_error), "structured": r.structured_content, "text": text}


async def step(client, s):
    if "list_tools" in s:
        tools = (await client.list_tools()).tools
        return {
            "tools": [
                {
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.input_schema,
                    "output_schema": t.output_schema,
                    "annotations": t.annotations.model_dump(by_alias=True, exclude_none=True)
                    if t.annotations
                    else None,
                }
                for t in tools
            ]
        }
    if "call" in s:
        return await call(client, s["call"], s.get("args", {}))
    if "download" in s:
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "30", "-A", s["user_agent"], "-o", s["to"], s["download"]],
            check=False,
        )
        return {"exit": done.returncode}
    if "until" in s:
        for _ in range(100):
            r = await call(client, s["until"], s["args"])
            if r["is_error"] or (r["structured"] or {}).get("link", {}).get(s["field"]) in s["in"]:
                return r
            await asyncio.sleep(0.1)
        return r
    raise ValueError(f"unknown step {s}")


async def main():
    mode, target, extra, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    if mode == "stdio":
        server = StdioServerParameters(command=target, args=["mcp"], env=extra)
        client = Client(server, read_timeout_seconds=30)
    else:
        http = httpx2.AsyncClient(headers=extra, timeout=30)
        client = Client(streamable_http_client(target, http_client=http), read_timeout_seconds=30)
    results = []
    async with client:
        for s in steps:
            results.append(await step(client, fill(s, results)))
    print(json.dumps(results))


asyncio.run(asyncio.wait_for(main(), timeout=120))
