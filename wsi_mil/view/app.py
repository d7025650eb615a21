"""The viewer's web app (Starlette) and its server (uvicorn).

Read-only by construction: GET/HEAD routes only; slides, heads and maps are looked up by
name in the run's catalog (never opened from a path in the URL); ``/run/...`` serves files
inside the run directory only; static files come from the package. Bound to 127.0.0.1 by
default, and requests whose Host header is not this machine are refused (DNS rebinding).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from wsi_mil.errors import WsiMilError
from wsi_mil.view.catalog import RunCatalog
from wsi_mil.view.scales import SCALES, ScaleError
from wsi_mil.view.service import ViewerService

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 -- recognised (to warn), never bound by default
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
}
TILE_HEADERS = {**HEADERS, "Cache-Control": "private, max-age=3600"}


def _image(body: bytes, kind: str) -> Response:
    return Response(body, media_type=f"image/{kind}", headers=TILE_HEADERS)


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, headers={**HEADERS, "Cache-Control": "no-store"})


def create_app(run_dir: str | Path, *, masks: str | Path | None = None, host: str = "127.0.0.1") -> Starlette:
    """The viewer of one run; ``host`` is added to the Host names accepted."""
    service = ViewerService(RunCatalog(run_dir, masks=masks))
    p = _param

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={**HEADERS, "Cache-Control": "no-store"})

    def slides(request: Request) -> Response:
        return _json(service.slide_list())

    def info(request: Request) -> Response:
        return _json(service.slide_info(p(request, "slide")))

    def patch(request: Request) -> Response:
        x, y = _number(request, "x"), _number(request, "y")
        return _json(service.patch_info(p(request, "slide"), x, y))

    def top(request: Request) -> Response:
        query = request.query_params
        k = int(_number(request, "k", 12))
        return _json(service.top_patches(p(request, "slide"), query.get("head", ""), query.get("map", ""), k))

    def patch_image(request: Request) -> Response:
        return _image(service.patch_image(p(request, "slide"), p(request, "head"), p(request, "row")), "jpeg")

    def cam_image(request: Request) -> Response:
        slide, head = p(request, "slide"), p(request, "head")
        return _image(service.cam_image(slide, head, p(request, "method"), p(request, "row")), "png")

    def legend(request: Request) -> Response:
        return _image(service.legend(p(request, "cmap")), "png")

    def image_tile(request: Request) -> Response:
        args = (p(request, "slide"), p(request, "level"), p(request, "col"), p(request, "row"))
        return _image(service.slide_tile(*args), "jpeg")

    def map_tile(request: Request) -> Response:
        query = request.query_params
        slide, head, name = p(request, "slide"), p(request, "head"), p(request, "map")
        scale = service.scale(slide, head, name, query.get("scale", "slide"), query.get("vmin"), query.get("vmax"))
        body = service.overlay_tile(
            slide, head, name, p(request, "level"), p(request, "col"), p(request, "row"), scale=scale
        )
        return _image(body, "png")

    def annotation_tile(request: Request) -> Response:
        args = (p(request, "slide"), p(request, "level"), p(request, "col"), p(request, "row"))
        return _image(service.annotation_tile(*args), "png")

    def run_file(request: Request) -> Response:
        return FileResponse(service.run_file(p(request, "path")), headers=HEADERS)

    def not_found(request: Request, error: Exception) -> Response:
        return JSONResponse({"error": "not found"}, status_code=404, headers=HEADERS)

    def bad_request(request: Request, error: Exception) -> Response:
        return JSONResponse({"error": str(error)}, status_code=400, headers=HEADERS)

    tile = "{level:int}/{col:int}_{row:int}"
    routes = [
        Route("/", index),
        Route("/api/slides", slides),
        Route("/api/slides/{slide}/info", info),
        Route("/api/slides/{slide}/patch", patch),
        Route("/api/slides/{slide}/top", top),
        Route("/api/slides/{slide}/patch/{head}/{row:int}.jpeg", patch_image),
        Route("/api/slides/{slide}/cam/{head}/{method}/{row:int}.png", cam_image),
        Route("/api/legend/{cmap}.png", legend),
        Route(f"/tiles/{{slide}}/image/{tile}.jpeg", image_tile),
        Route(f"/tiles/{{slide}}/map/{{head}}/{{map}}/{tile}.png", map_tile),
        Route(f"/tiles/{{slide}}/annotation/{tile}.png", annotation_tile),
        Route("/run/{path:path}", run_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    # Any Host header when listening on every interface (the user opened it to the network); else this machine only
    hosts = ["*"] if host in WILDCARD_HOSTS else sorted({*LOCAL_HOSTS, host, f"[{host}]"})
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={KeyError: not_found, ScaleError: bad_request, WsiMilError: bad_request},
    )
    app.state.service = service
    app.state.scales = SCALES
    return app


def _param(request: Request, key: str) -> Any:
    return request.path_params[key]


def _number(request: Request, key: str, default: float | None = None) -> float:
    text = request.query_params.get(key)
    if text is None and default is not None:
        return default
    try:
        return float(text or "")
    except ValueError as error:
        raise ScaleError(f"query parameter {key} must be a number") from error


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, masks: str | Path | None = None) -> None:
    """Serve the viewer until interrupted."""
    import uvicorn

    app = create_app(run_dir, masks=masks, host=host)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("viewer listening on %s: anyone who can reach this machine can see the run's slides", host)
    logger.info("wsi-mil view: http://%s:%d/ (Ctrl-C stops it)", host if ":" not in host else f"[{host}]", port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def running(
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    masks: str | Path | None = None,
    timeout: float = 30.0,
) -> Iterator[str]:
    """The viewer served from a background thread (tests, benchmarks, notebooks); yields its base URL."""
    import uvicorn

    app = create_app(run_dir, masks=masks, host=host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise WsiMilError(f"viewer did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        app.state.service.close()
