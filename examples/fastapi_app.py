"""ekv in a FastAPI app: the store opens in the lifespan handler and closes there, and a
dependency hands it to the routes. docs/fastapi.md explains it; tests/test_guides.py runs it under
TestClient and under uvicorn with two worker processes on one data directory.

Run: EKV_DATA_DIR=var/ekv uvicorn fastapi_app:app --app-dir examples --workers 4"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request

import ekv

DATA_DIR = os.environ.get("EKV_DATA_DIR", "var/ekv")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Each worker process opens the store once, at start-up, and closes it at shutdown.
    async with ekv.AsyncEKV("web", data_dir=DATA_DIR) as kv:
        app.state.kv = kv
        yield


app = FastAPI(lifespan=lifespan)


def get_kv(request: Request) -> ekv.AsyncEKV:
    kv: ekv.AsyncEKV = request.app.state.kv
    return kv


KV = Annotated[ekv.AsyncEKV, Depends(get_kv)]


@app.put("/items/{item_id}")
async def put_item(item_id: str, item: dict[str, Any], kv: KV) -> dict[str, Any]:
    await kv.put(f"item/{item_id}", item)
    return {"id": item_id, "pid": os.getpid()}


@app.get("/items/{item_id}")
async def get_item(item_id: str, kv: KV) -> dict[str, Any]:
    item = await kv.get(f"item/{item_id}")
    if item is None:
        raise HTTPException(status_code=404, detail=f"no item {item_id!r}")
    return {"item": item, "pid": os.getpid()}


@app.get("/items")
async def list_items(kv: KV) -> dict[str, Any]:
    return {"ids": [key.removeprefix("item/") for key in await kv.keys("item/")], "pid": os.getpid()}


@app.get("/whoami")
async def whoami(kv: KV) -> dict[str, Any]:
    # "node" in the one process that runs the cluster, "attached" in the others
    return {"pid": os.getpid(), "role": (await kv.info())["processes"]["role"]}
