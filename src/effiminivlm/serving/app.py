"""The scoring service: a FastAPI app over one `Scorer`, with dynamic batching and bounded everything.

Routes: `POST /v1/score` (JSON list of listings, or `{"items": [...]}`, or multipart with an `items` JSON
part and image file parts), `POST /v1/score/csv` (a LoViF input.csv -> the submission CSV `predict` writes),
`GET /v1/model`, `GET /healthz` (alive), `GET /readyz` (accepting work), `/docs` (OpenAPI) and the web page
at `/` (static/, plain HTML + JS). Errors are `{"detail": "<field>: <why>"}` with 413 (too large), 422 (bad
field), 503 + Retry-After (queue full or shutting down) or 504 (request timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.serving.batcher import Batcher, QueueFull, ShuttingDown
from effiminivlm.serving.predict import submission_text
from effiminivlm.serving.schemas import ModelInfo, ScoredItem, ScoreResponse, ServeSettings, listing_model
from effiminivlm.serving.scorer import Scorer
from effiminivlm.serving.service import (
    Item,
    RequestError,
    build_items,
    data_uri,
    parse_json_body,
    score_batch,
    version,
)

STATIC = files("effiminivlm.serving") / "static"
LOG = logging.getLogger("effiminivlm.serve")
KEEP_ALIVE_S = 15  # seconds an idle client connection stays open
CSV_ROW_COLUMNS = ("parent_asin", "category", "title", "features", "description", "images")


def _validation_message(err: ValidationError, prefix: str = "items") -> str:
    """The first pydantic error as one line naming the field: 'items.0.title: String should have ...'."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *first.get("loc", ())))
    return f"{loc}: {first.get('msg', 'invalid')}"


def create_app(scorer: Scorer, settings: ServeSettings | None = None) -> FastAPI:
    """The app for one loaded model. The batcher starts and drains with the app's lifespan."""
    from effiminivlm.protocol.cost import stored_profile

    settings = settings or ServeSettings()
    prof = stored_profile(scorer.model, scorer.model_dir)
    listings = TypeAdapter(list[listing_model(settings.max_text_chars)])  # type: ignore[misc]
    batcher: Batcher[Item, Any] = Batcher(lambda items: score_batch(scorer, items, settings),
                                          max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                          max_queue=settings.max_queue)
    cfg = scorer.model.cfg
    info = ModelInfo(version=version(), config=dataclasses.asdict(cfg), params_m=prof.params_m,
                     flops_g=prof.flops_g, c=prof.c, e=prof.e, image_size=prof.image_size,
                     max_length=prof.max_length,
                     images=scorer.images, precision=scorer.precision, device=str(scorer.device),
                     batching={"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                               "max_queue": settings.max_queue})

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.close()  # uvicorn has let in-flight requests finish; anything queued is finished

    app = FastAPI(title="effiminivlm", version=info.version, lifespan=lifespan,
                  description="Predicts a product listing's average rating from its text and image.")
    app.state.batcher = batcher
    app.state.settings = settings
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        """Refuse an oversized body from its Content-Length, before reading it; POSTs must send one."""
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "Content-Length is required"}, status_code=411)
            if not length.isdigit() or int(length) > settings.max_body_bytes:
                return JSONResponse({"detail": f"body: {length} bytes is over the limit of "
                                               f"{settings.max_body_bytes:,}"}, status_code=413)
        return await call_next(request)

    def error(status: int, message: str) -> JSONResponse:
        headers = {"Retry-After": str(settings.retry_after_s)} if status == 503 else None
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    async def run(items: list[Item]) -> list[Any] | JSONResponse:
        try:
            return await asyncio.wait_for(batcher.submit(items), settings.request_timeout_s)
        except QueueFull as e:
            return error(503, f"busy: {e}; retry later")
        except ShuttingDown as e:
            return error(503, str(e))
        except TimeoutError:
            return error(504, f"not scored within {settings.request_timeout_s:g} s")

    async def parse_score_request(request: Request) -> tuple[list[Any], dict[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        uploads: dict[str, bytes] = {}
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=settings.max_items * 16,
                                      max_part_size=settings.max_body_bytes)
            raw = form.get("items")
            if not isinstance(raw, str):
                raise RequestError(422, "items: a multipart request needs an 'items' part with the JSON list")
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    uploads[name] = await value.read()
            body = parse_json_body(raw)
        else:
            body = parse_json_body(await request.body())
        if isinstance(body, dict) and "items" in body:
            body = body["items"]
        if not isinstance(body, list):
            raise RequestError(422, "body: expected a JSON list of listings or {\"items\": [...]}")
        if not body:
            raise RequestError(422, "items: the list is empty")
        if len(body) > settings.max_items:
            raise RequestError(413, f"items: {len(body)} listings, more than the limit of "
                                    f"{settings.max_items}")
        try:
            return listings.validate_python(body), uploads
        except ValidationError as e:
            raise RequestError(422, _validation_message(e)) from None

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        """A client that hangs up mid-upload is routine, not a server error: one INFO line, no traceback."""
        LOG.info("client %s disconnected during %s %s", request.client.host if request.client else "?",
                 request.method, request.url.path)
        return Response(status_code=499)

    @app.post("/v1/score", response_model=ScoreResponse, openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Listing"}}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "items": {"type": "string", "description": "the JSON list; images as 'upload:<part name>'"}}}}},
        "required": True}}, responses={413: {}, 422: {}, 503: {}, 504: {}})
    async def score(request: Request, image: bool = False) -> Any:
        """Score listings. `?image=true` adds the image the model saw (PNG data URI) to each result."""
        parsed, uploads = await parse_score_request(request)
        items = await asyncio.to_thread(build_items, parsed, settings, uploads, image)  # decode off the loop
        results = await run(items)
        if isinstance(results, JSONResponse):
            return results
        return ScoreResponse(params_m=prof.params_m, flops_g=prof.flops_g, items=[
            ScoredItem(item_id=it.row["parent_asin"], score=r.score, image_status=r.image_status,
                       model_image=data_uri(r.view_png)) for it, r in zip(items, results, strict=True)])

    @app.post("/v1/score/csv", response_class=Response, responses={
        200: {"content": {"text/csv": {}}, "description": "item_id,score,params,flops"}})
    async def score_csv(request: Request) -> Response:
        """Score a LoViF input.csv (multipart part `file`; image_paths relative to the server's images
        folder) and return the submission CSV that `effiminivlm predict` writes for it, plus a last column
        `image_status` per row (`ok`, or why the row was scored without its image: `no_ref` when it had
        none or its path was refused, `missing`, ...)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(422, "file: send the CSV as multipart/form-data with a part named 'file'")
        form = await request.form(max_files=1, max_part_size=settings.max_body_bytes)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError(422, "file: a multipart part 'file' with the CSV is required")
        items = await asyncio.to_thread(read_csv_items, await upload.read(), upload.filename or "input.csv",
                                        settings)
        results = await run(items)
        if isinstance(results, JSONResponse):
            return results
        text = submission_text([it.row["parent_asin"] for it in items], [r.score for r in results],
                               prof.params_m, prof.flops_g, image_status=[r.image_status for r in results])
        name = Path(upload.filename or "input.csv").stem + "_scored.csv"
        return Response(text, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/v1/model", response_model=ModelInfo)
    async def model_info() -> ModelInfo:
        """The served model: its config, params (M), canonical FLOPs (G), C and E, and the version."""
        return info

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Alive: the process answers; with the batcher's counters."""
        return {"status": "ok", "pending": batcher.pending, **batcher.stats.as_dict()}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready: the model is loaded and the batcher accepts work (503 while starting or shutting down)."""
        ready = batcher.running and not batcher.closing
        return JSONResponse({"ready": ready, "pending": batcher.pending}, status_code=200 if ready else 503)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    return app


def read_csv_items(body: bytes, name: str, settings: ServeSettings) -> list[Item]:
    """An uploaded LoViF CSV -> items, read by `predict`'s own reader (`read_lovif`: image paths confined to
    the images folder, list-literal cells, duplicate ids). The upload is read from a private temporary
    folder because the reader takes a path; errors name the uploaded file, not that folder."""
    from effiminivlm.data.lovif import read_lovif

    with tempfile.TemporaryDirectory(prefix="effiminivlm-csv-") as tmp:
        path = Path(tmp) / "input.csv"
        path.write_bytes(body)
        images_dir = settings.images_dir if settings.images_dir is not None else Path(tmp) / "no-images"
        try:
            table, _ = read_lovif(path, images_dir)
        except EffiMiniVLMError as e:
            raise RequestError(422, str(e).replace(str(path), Path(name).name)) from None
    if table.num_rows == 0:
        raise RequestError(422, f"{Path(name).name}: no rows")
    if table.num_rows > settings.max_csv_rows:
        raise RequestError(413, f"{Path(name).name}: {table.num_rows} rows, more than the limit of "
                                f"{settings.max_csv_rows}")
    if table.num_rows > settings.max_queue:
        raise RequestError(413, f"{Path(name).name}: {table.num_rows} rows, more than the queue holds "
                                f"({settings.max_queue}); split the file")
    rows = table.select(list(CSV_ROW_COLUMNS)).to_pylist()
    return [Item(row) for row in rows]


def serve(model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          images_dir: str | Path | None = None, images: str = "first", precision: str = "auto",
          device: str | None = None, log: Any = print, **limits: Any) -> None:
    """`effiminivlm serve`: load the model once, build the app, run uvicorn until SIGINT/SIGTERM. On a
    signal uvicorn stops accepting connections, lets in-flight requests finish (the batcher drains), exits."""
    import uvicorn

    root = None
    if images_dir is not None:
        root = Path(images_dir).resolve()
        if not root.is_dir():
            raise EffiMiniVLMError(f"--images-dir {images_dir}: not a folder")
    try:
        settings = ServeSettings(images_dir=root, **limits)
    except ValueError as e:  # name the command-line option, not the field
        flag = str(e).replace("request_timeout_s", "timeout").split(" ", 1)
        raise EffiMiniVLMError(f"--{flag[0].replace('_', '-')} {flag[1]}") from None
    scorer = Scorer.from_pretrained(model_dir, device=device, precision=precision, images=images,
                                    batch_size=settings.max_batch, num_workers=0)
    app = create_app(scorer, settings)
    log(f"serving {model_dir} on http://{host}:{port} (page /, API docs /docs); images folder: {root}")
    # Keep-alive longer than common clients' own idle expiry (httpx: 5 s, uvicorn's default too): when both
    # are equal, a request sent on a connection the server is closing at that instant is reset (lost).
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=KEEP_ALIVE_S,
                timeout_graceful_shutdown=int(settings.request_timeout_s) + 5)
