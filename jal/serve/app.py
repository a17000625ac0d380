"""The web service over an open project: the JSON API under /api/, the page at /, its OpenAPI at /docs.

    app = create_app(project, token="...", local=True)

Security: with a token, every /api/ request must carry `Authorization: Bearer TOKEN` (401
without, 403 with another); the page reads the token once from its URL. Served on
loopback, requests must name a loopback host, so a web page elsewhere cannot reach the
service by rebinding its own name to 127.0.0.1. Request bodies are small JSON objects:
anything over MAX_BODY bytes gets 413, anything that is not JSON of the right fields 422
(and a body without a JSON Content-Type is not read as JSON, so a cross-site form cannot
post one). No request names a file: samples are pool indices, and the page's three
files are fixed names read from the package.
"""

from __future__ import annotations

import secrets
from importlib import resources

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.middleware.trustedhost import TrustedHostMiddleware

from jal.errors import JalError
from jal.serve import views
from jal.serve.project import Project
from jal.serve.state import Conflict

MAX_BODY = 4096  # bytes: a label is a few dozen
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]", "::1"]
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
# The page loads nothing but its own files and the images it fetched; no other site may frame it.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-ancestors 'none'"


class LabelRequest(BaseModel):
    """A class for one pool sample."""

    model_config = ConfigDict(strict=True, extra="forbid")
    index: int  # pool index, 0..P-1
    label: int  # class, 0..C-1


def create_app(project: Project, *, token: str | None, local: bool) -> FastAPI:
    """The service of `project`; `token`: what /api/ requests must present (None: nothing); `local`: loopback only."""
    app = FastAPI(
        title="jal serve",
        summary="Label what an actively learning model asks for; it trains on your labels, round by round.",
        description="Every /api/ request needs `Authorization: Bearer TOKEN` where the server has a token.",
        version="1",
        max_body_size=MAX_BODY,
    )
    if local:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)
    page = resources.files("jal.serve") / "static"
    files = {name: (page / name).read_bytes() for name in ("index.html", *STATIC)}

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        # Before the body is read: a request without the token learns nothing, not even a validation error.
        if token is not None and request.url.path.startswith("/api/"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                return JSONResponse({"detail": "this server needs its token: Authorization: Bearer TOKEN"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            if not secrets.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "wrong token"}, 403)
        return await call_next(request)

    for error, status in ((Conflict, 409), (JalError, 400)):
        app.add_exception_handler(error, _answer(status))
    app.add_exception_handler(OSError, _unsaved)

    def in_pool(index: int) -> int:
        if not 0 <= index < project.pool_size:
            raise JalError(f"sample {index} is not in the pool: pool indices are 0..{project.pool_size - 1}")
        return index

    @app.get("/", include_in_schema=False)
    def index_page() -> Response:
        headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}
        return Response(files["index.html"], media_type="text/html", headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return JSONResponse({"detail": "not found"}, 404)
        return Response(files[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/state", summary="The project's state")
    def state() -> dict:
        """Pool size, classes, labels given, the current round, the proposals left to label, and the round in
        training with its progress (elapsed seconds against the previous round's), or the last round that failed."""
        return views.summary(project)

    @app.post("/api/rounds", status_code=202, summary="Start the next round")
    def start_round() -> dict:
        """Trains a fresh model on every label given so far, scores the pool and proposes the next samples, in the
        background; follow it in /api/state. 409 while a round trains, or before any label is given."""
        project.start_round()
        return views.summary(project)

    @app.get("/api/proposals", summary="The samples to label")
    def proposals() -> dict:
        """The current round's proposals, best first: pool index, score, image URL, and the label where given."""
        return views.proposals(project.state)

    @app.get("/api/samples/{index}/image", summary="A sample as a PNG", response_class=Response,
             responses={200: {"content": {"image/png": {}}}})  # fmt: skip
    def sample_image(index: int = Depends(in_pool)) -> Response:
        """Pool sample `index` as a PNG: an image at its own resolution, or a plot of a feature vector."""
        png = project.renderer.png(index)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.post("/api/labels", summary="Label a sample")
    def label(request: LabelRequest) -> dict:
        """Labels a proposed sample with a class; on disk before the answer. 400: no such sample or class;
        409: the sample is labelled already (say, in another tab) or not among the current proposals."""
        project.give(request.index, request.label)
        return views.summary(project)

    @app.delete("/api/labels/last", summary="Undo the last label")
    def undo() -> dict:
        """Takes the last label back, if it was given in the current round (409 otherwise); the sample is to
        label again."""
        undone = project.undo()
        return {"undone": {"index": undone.index, "label": undone.label}, "state": views.summary(project)}

    @app.get("/api/curve", summary="The learning curve")
    def curve() -> dict:
        """Test accuracy and NLL of each round's model against the labels it trained on (empty without test
        labels)."""
        return views.curve(project.state)

    @app.get("/api/scores", summary="The pool's score distribution")
    def scores() -> dict:
        """A histogram of the last trained round's pool scores, of unlabelled and of labelled samples, and the
        scores of that round's proposals."""
        return views.score_histogram(project)

    @app.get("/api/history", summary="The labels given")
    def history(limit: int = Query(200, ge=1, le=1_000_000)) -> dict:
        """The last `limit` labels, newest first, with the round that proposed each and its score then."""
        return views.history(project.state, limit)

    return app


def _answer(status: int):
    async def handle(request: Request, error: JalError) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(error).split())}, status)

    return handle


async def _unsaved(request: Request, error: OSError) -> JSONResponse:
    # A full or failing disk: nothing was changed, and the page says so.
    return JSONResponse({"detail": f"the server could not save it ({error.strerror or error}); nothing changed"}, 503)
