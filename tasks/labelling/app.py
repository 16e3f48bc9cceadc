"""The labelling web app (FastAPI): a page comparing two responses to a prompt (/), a page rating the responses
PPO waits on (/rate), and the small JSON API behind them.

Served on 127.0.0.1 only (`rlhf label serve`). Model text reaches the page as JSON and is put in with
`textContent`, so a response holding HTML or `<script>` shows as text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from tasks.labelling.ratings import RatingQueue
from tasks.labelling.store import LabellingQueue

PAGE = Path(__file__).with_name("page.html")
RATING_PAGE = Path(__file__).with_name("rate.html")
STYLE = Path(__file__).with_name("style.css")
SCRIPT = Path(__file__).with_name("queue_page.js")
MAX_BODY_BYTES = 4096
"""A label post is a few short fields; anything larger is refused before it is read."""


class LabelPost(BaseModel):
    """One label, as the page sends it."""

    model_config = ConfigDict(extra="forbid")
    pair_id: str = Field(min_length=1, max_length=64)
    session: str = Field(min_length=1, max_length=64)
    """The page's random id: the pair was leased to it."""
    labeller: str = Field(min_length=1, max_length=64)
    order: Literal["ab", "ba"]
    """The side order the page was given with the pair."""
    choice: Literal["left", "right", "tie", "skip"]


class BodyLimit:
    """Refuse a request body over `max_bytes` (413) or of unstated length (411) before reading it.

    Hand-written because neither Starlette nor uvicorn bounds request bodies; uvicorn (h11) holds a body to its
    declared Content-Length, so checking the header is enough.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            if length is None or not length.isdigit():
                return await JSONResponse({"detail": "Content-Length required"}, 411)(scope, receive, send)
            if int(length) > self.max_bytes:
                detail = f"request body over {self.max_bytes} bytes"
                return await JSONResponse({"detail": detail}, 413)(scope, receive, send)
        await self.app(scope, receive, send)


class RatingPost(BaseModel):
    """One rating, as the rating page sends it."""

    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1, max_length=64)
    session: str = Field(min_length=1, max_length=64)
    rater: str = Field(min_length=1, max_length=64)
    rating: int = Field(ge=1, le=5)
    """1 (bad) to 5 (good)."""


def create_app(queue: LabellingQueue, ratings: RatingQueue) -> FastAPI:
    app = FastAPI(title="rlhf label", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/next")
    def next_pair(session: str = Query(min_length=1, max_length=64)) -> dict:
        shown = queue.next_for(session)
        pair = None
        if shown is not None:
            pair = {"pair_id": shown.pair.pair_id, "prompt": shown.pair.prompt, "order": shown.order}
            pair |= {"left": shown.left, "right": shown.right}
        return {"item": pair, "progress": queue.progress()}

    @app.post("/api/labels", status_code=201)
    def label(post: LabelPost) -> dict:
        if post.pair_id not in queue.pairs:
            raise HTTPException(404, f"no pair {post.pair_id!r} in the queue")
        if not queue.record(post.pair_id, post.choice, post.order, post.labeller):
            raise HTTPException(409, f"pair {post.pair_id!r} is labelled already")
        return {"progress": queue.progress()}

    @app.get("/style.css")
    def style() -> Response:
        return Response(STYLE.read_text(encoding="utf-8"), media_type="text/css")

    @app.get("/queue_page.js")
    def script() -> Response:
        return Response(SCRIPT.read_text(encoding="utf-8"), media_type="text/javascript")

    @app.get("/rate", response_class=HTMLResponse)
    def rating_page() -> str:
        return RATING_PAGE.read_text(encoding="utf-8")

    @app.get("/api/ratings/next")
    def next_item(session: str = Query(min_length=1, max_length=64)) -> dict:
        item = ratings.next_for(session)
        shown = None if item is None else {key: item[key] for key in ("item_id", "prompt", "response")}
        return {"item": shown, "progress": ratings.progress()}

    @app.post("/api/ratings", status_code=201)
    def rate(post: RatingPost) -> dict:
        try:
            stored = ratings.record(post.item_id, post.rating, post.rater)
        except KeyError:
            raise HTTPException(404, f"no response {post.item_id!r} waits for a rating") from None
        if not stored:
            raise HTTPException(409, f"response {post.item_id!r} is rated already")
        return {"progress": ratings.progress()}

    return app
