"""`medtransfer serve RUN`: one saved run behind an HTTP API (FastAPI under uvicorn).

The model is loaded once at start-up and every prediction goes through `pipeline/reuse.probability_frame`,
the code `mt.predict` runs, after the same readers (`encode_rows`, `decode_image_bytes`, `read_signal_file`,
`frame_inputs`), so a served probability equals `mt.predict`'s for the same input.

    GET  /health       no token needed (for probes): {"ok": true, "model_version": ...}
    GET  /model-card   the run's model_card.md (text/markdown)
    POST /predict      tabular runs: JSON {"rows": [{column: value, ...}, ...]} (null = missing value)
                       text runs:    JSON {"texts": ["...", ...]}
                       signal runs:  JSON {"signals": [...]} (N, C, T), or (N, T) for one channel; or
                                     multipart/form-data files (.npy/.csv/.tsv/.txt, one recording each)
                       2D image runs: multipart/form-data files (PNG/JPEG/BMP/TIFF/DICOM)

The answer: {"model_version", "task", "classes", "predictions": [{"id", "probabilities": {class: p},
"predicted", and for binary runs "positive_class", "threshold"}], "warnings": [...]}.

Safety: a bearer token, compared in constant time, on every route but /health; a body is refused (413)
from its Content-Length, or while it streams, once it passes the limit; at most `max_batch` inputs and
`max_pixels` image pixels per request; bad input is a 4xx with one line in {"detail": ...}. The log has
one line per request (method, path without query, status, milliseconds): never a body, a row, a value
or an upload's name; an unexpected failure is logged by its exception class only.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request  # module level: FastAPI reads the routes' annotations by name
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .errors import MedTransferError

log = logging.getLogger("medtransfer.serve")

DEFAULT_MAX_MB = 10.0
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_PIXELS = 40_000_000  # all images of one request together: bounds the decoded tensor's memory
MIN_TOKEN_CHARS = 16
MODALITIES = ("tabular", "text", "signal", "image2d")
JSON_KEY = {"tabular": "rows", "text": "texts", "signal": "signals"}
SCALARS = (str, int, float, bool, type(None))


class BadRequest(Exception):
    """A request refused before the model sees it: its HTTP status and one line saying what to send."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Served:
    """The run being served, loaded once: model, model.json, version and model card."""
    run: Path
    model: object
    meta: dict
    version: str
    card: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def modality(self) -> str:
        return self.meta["input"]["modality"]


def load_served(run: str | Path) -> Served:
    """The run's classifier in eval mode, its version (folder name @ the first 12 hex digits of the
    weights' SHA-256: a retrained run in the same folder answers with another version) and its card."""
    from .models.checkpoint import load_checkpoint, model_version
    from .pipeline.run_folder import require_classifier

    run = Path(run)
    model, meta = load_checkpoint(run)
    require_classifier(meta, run)
    modality = meta["input"]["modality"]
    if modality not in MODALITIES:
        raise MedTransferError(f"{run} takes {modality} inputs; `medtransfer serve` serves {', '.join(MODALITIES)} "
                               "runs: predict on 3D volumes with `medtransfer predict RUN medmnist:…`")
    model.eval()
    card = run / "model_card.md"
    return Served(run, model, meta, model_version(run),
                  card.read_text(encoding="utf-8") if card.is_file() else None)


# --- reading a request into the model's tensors ---------------------------------------------------


def json_inputs(served: Served, body: bytes, max_batch: int, warnings: list[str]):
    """(x, ids, id column name) from a JSON body: rows of a table, texts, or a signal array."""
    key = JSON_KEY.get(served.modality)
    if key is None:
        raise BadRequest(415, "this run takes image files: send multipart/form-data with one file per image "
                              "(e.g. curl -F files=@scan.png)")
    try:
        payload = json.loads(body, parse_constant=refuse_constant)
    except BadRequest:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the body is not valid JSON ({exc}); send {{\"{key}\": [...]}}") from None
    except RecursionError:
        raise BadRequest(400, f"the body's JSON is nested too deeply; send {{\"{key}\": [...]}}") from None
    if not isinstance(payload, dict) or key not in payload:
        raise BadRequest(422, f"send a JSON object {{\"{key}\": [...]}}: this run takes {served.modality} inputs")
    extra = sorted(set(payload) - {key})
    if extra:
        raise BadRequest(422, f"unknown field(s) {extra} in the body; send only {{\"{key}\": [...]}}")
    items = payload[key]
    if not isinstance(items, list) or not items:
        raise BadRequest(422, f"\"{key}\" must be a non-empty JSON array, one item per input")
    check_batch(len(items), max_batch)
    if served.modality == "tabular":
        return table_inputs(served.meta, items, warnings)
    if served.modality == "text":
        return text_inputs(served.meta, items)
    from .api import signal_tensor

    x = signal_tensor(served.meta, items, warnings)
    return x, [str(i) for i in range(len(x))], "input"


def refuse_constant(name: str):
    raise BadRequest(422, f"{name} is not a JSON number; send null for a missing value")


def check_batch(n: int, max_batch: int) -> None:
    if n > max_batch:
        raise BadRequest(413, f"{n} inputs in one request; at most {max_batch} (--max-batch): split the request")


def table_inputs(meta: dict, rows: list, warnings: list[str]):
    """Rows as `mt.predict` encodes a DataFrame of them. Every row names every column the model reads (null
    for a missing value) and nothing else but the run's id column: a misspelt column is refused rather than
    imputed. A value the encoding cannot read (text in a numeric column, an unseen category) is imputed as
    missing, as `mt.predict` does, and named in the answer's warnings."""
    import pandas as pd

    from .pipeline.reuse import encode_rows, row_ids

    columns = [*meta["encoder"]["numeric"], *meta["encoder"]["categorical"]]
    allowed = set(columns) | ({meta["id_column"]} if meta.get("id_column") else set())
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(422, f"row {i} is not a JSON object {{column: value}}")
        unknown = [c for c in row if c not in allowed]
        if unknown:
            raise BadRequest(422, f"row {i}: unknown column(s) {unknown}; the model reads {', '.join(columns)}")
        missing = [c for c in columns if c not in row]
        if missing:
            raise BadRequest(422, f"row {i} lacks column(s) {missing}; send null for a missing value")
        nested = [c for c, v in row.items() if not isinstance(v, SCALARS)]
        if nested:
            raise BadRequest(422, f"row {i}: column(s) {nested} hold arrays or objects; send one number or text "
                                  "per column")
        huge = [c for c, v in row.items() if isinstance(v, int) and abs(v) > 2**1023]
        if huge:
            raise BadRequest(422, f"row {i}: column(s) {huge} hold integers beyond the range of a float; check the "
                                  "units")
    frame = pd.DataFrame(rows)
    x = encode_rows(meta, frame, "the request", warnings)
    return (x, *row_ids(meta, frame))


def text_inputs(meta: dict, texts: list):
    """Texts tokenised as `mt.predict` tokenises a DataFrame of them."""
    import pandas as pd

    from .data.text import frame_inputs

    odd = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if odd:
        raise BadRequest(422, f"texts {odd[:5]} are not JSON strings; send one string per text")
    return frame_inputs(pd.DataFrame({"text": texts}), "the request", meta.get("text_column"),
                        meta["input"].get("tokenizer"))


def file_inputs(served: Served, uploads: list[tuple[str, bytes]], max_pixels: int, warnings: list[str]):
    """(x, ids, "input") from uploaded files, named by their file names: images decoded in memory by the
    decoder of `folder:` at the training images' channels and size; recordings read as `signal-folder:`
    reads them."""
    if served.modality == "image2d":
        from .data.folder import IMAGE_EXTENSIONS, decode_image_bytes
        from .pipeline.reuse import decoded_layout

        check_suffixes(uploads, IMAGE_EXTENSIONS, "an image file")
        check_pixels(uploads, max_pixels)
        channels, size = decoded_layout(served.meta)
        return decode_image_bytes(uploads, size, channels), [name for name, _ in uploads], "input"
    if served.modality == "signal":
        import torch

        from .data.signals import SIGNAL_SUFFIXES, read_signal_file, stack_recordings
        from .pipeline.reuse import check_signal_inputs

        check_suffixes(uploads, SIGNAL_SUFFIXES, "a recording file")
        names = [name for name, _ in uploads]
        x = torch.from_numpy(stack_recordings([read_signal_file(Path(n), data) for n, data in uploads], names))
        check_signal_inputs(served.meta, x, "the uploaded recordings", warnings)
        return x, names, "input"
    raise BadRequest(415, f"this run takes JSON {{\"{JSON_KEY[served.modality]}\": [...]}} "
                          "(Content-Type: application/json), not files")


def check_suffixes(uploads: list[tuple[str, bytes]], suffixes: tuple[str, ...], what: str) -> None:
    for name, _ in uploads:
        if Path(name).suffix.lower() not in suffixes:
            raise BadRequest(415, f"{name!r} is not {what} by its name; send {', '.join(suffixes)} files")


def check_pixels(uploads: list[tuple[str, bytes]], max_pixels: int) -> None:
    """Refuse images whose pixels together pass `max_pixels`, from their headers, before decoding (a small
    PNG can hold a huge image). DICOM is left to the body limit."""
    import io

    from PIL import Image

    total = 0
    for name, data in uploads:
        if Path(name).suffix.lower() == ".dcm":
            continue
        try:
            with Image.open(io.BytesIO(data)) as img:
                total += img.width * img.height
        except Exception:  # not readable: the decoder names it with its reason
            continue
        if total > max_pixels:
            raise BadRequest(413, f"the images of this request hold more than {max_pixels} pixels together; send "
                                  "fewer or smaller images")


# --- the answer ---------------------------------------------------------------------------------


def answer(served: Served, x, ids: list[str], id_name: str, warnings: list[str]) -> dict:
    """The probabilities, decisions and operating point of `probability_frame` (as `mt.predict`), as JSON.
    The warnings go to the client only: they may quote values of the request, which the log never holds."""
    from .pipeline.reuse import probability_frame

    with served.lock:  # one forward pass at a time: two CPU-bound passes only slow each other down
        frame = probability_frame(served.model, served.meta, x, ids, [], id_name)
    classes, task = served.meta["classes"], served.meta["task"]
    prob = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=float).tolist()
    predictions = []
    for i in range(len(frame)):
        item = {"id": str(frame[id_name].iloc[i]), "probabilities": dict(zip(classes, prob[i]))}
        if "predicted" in frame.columns:
            item["predicted"] = frame["predicted"].iloc[i]
        if task == "binary":
            item["positive_class"] = frame["positive_class"].iloc[i]
            item["threshold"] = float(frame["threshold"].iloc[i])
        predictions.append(item)
    return {"model_version": served.version, "task": task, "classes": classes, "predictions": predictions,
            "warnings": warnings}


# --- the app ------------------------------------------------------------------------------------


async def read_body(request, max_bytes: int) -> bytes:
    """The body, refused (413) from its Content-Length before any of it is read, or as soon as the bytes
    streamed pass `max_bytes` (a chunked body has no length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, too_large(int(declared), max_bytes))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, too_large(size, max_bytes, "at least "))
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(size: int, max_bytes: int, qualifier: str = "") -> str:
    return (f"the body is {qualifier}{size} bytes; the limit is {max_bytes} bytes (--max-mb): send fewer inputs per "
            "request")


async def read_uploads(request, body: bytes, max_batch: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file of a multipart body, parsed in memory (nothing spooled to disk)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=math.inf, max_fields=100)  # counted below
    parser.spool_max_size = len(body) + 1  # the body is capped already: keep every file in memory
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(400, f"the multipart body cannot be read ({exc.message}); send one file per input") from None
    fields = [key for key, value in form.multi_items() if isinstance(value, str)]
    if fields:
        raise BadRequest(422, f"unexpected form field(s) {fields}; send only files")
    files = [value for _, value in form.multi_items()]
    if not files:
        raise BadRequest(422, "no files in the multipart body; send one file per input (e.g. curl -F files=@x.png)")
    check_batch(len(files), max_batch)
    uploads = []
    for i, upload in enumerate(files):
        uploads.append((upload.filename or f"upload-{i}", upload.file.read()))
    await form.close()
    return uploads


def create_app(run: str | Path, *, token: str | None, max_bytes: int = int(DEFAULT_MAX_MB * 2**20),
               max_batch: int = DEFAULT_MAX_BATCH, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The FastAPI app serving `run` (see the module docstring). `token`: the bearer token every route but
    /health requires; None serves without one (`serve` allows that on a loopback address only)."""
    served = load_served(run)
    app = FastAPI(title=f"medtransfer: {served.version}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served

    async def authorised(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "missing bearer token: send the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(MedTransferError)
    async def bad_input(request, exc: MedTransferError):
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=400)

    @app.get("/health")
    async def health():
        return {"ok": True, "model_version": served.version}

    @app.get("/model-card", dependencies=[Depends(authorised)])
    async def model_card():
        if served.card is None:
            raise HTTPException(404, f"{served.version} has no model_card.md")
        return PlainTextResponse(served.card, media_type="text/markdown; charset=utf-8")

    @app.post("/predict", dependencies=[Depends(authorised)])
    async def predict(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/json", "multipart/form-data"):
            raise BadRequest(415, f"Content-Type {kind or 'none'!r}: send application/json (rows, texts, signals) "
                                  "or multipart/form-data (files)")
        body = await read_body(request, max_bytes)
        warnings: list[str] = []
        uploads = await read_uploads(request, body, max_batch) if kind == "multipart/form-data" else None
        try:
            return JSONResponse(await run_in_threadpool(predict_sync, served, body, uploads, max_batch, max_pixels,
                                                        warnings))
        except (BadRequest, MedTransferError):
            raise
        except Exception as exc:  # its message may quote the request: the log gets the class only
            log.error("POST /predict failed: %s", type(exc).__name__)
            return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the request was not logged"},
                                status_code=500)

    app.add_middleware(AccessLog)
    return app


def predict_sync(served: Served, body: bytes, uploads, max_batch: int, max_pixels: int, warnings: list[str]) -> dict:
    if uploads is None:
        x, ids, id_name = json_inputs(served, body, max_batch, warnings)
    else:
        x, ids, id_name = file_inputs(served, uploads, max_pixels, warnings)
    return answer(served, x, ids, id_name, warnings)


class AccessLog:
    """ASGI middleware: one log line per request: method, path (no query string), status and milliseconds to
    the answer's start. Logged before the answer leaves, so a client that has it finds the line written."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, logged = time.perf_counter(), []

        def write(status: int) -> None:
            logged.append(status)
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, 1000 * (time.perf_counter() - start))

        async def send_logged(message):
            if message["type"] == "http.response.start":
                write(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            if not logged:  # failed before answering: the server's error handler answers 500
                write(500)


# --- running it ---------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def check_serving(token: str | None, no_auth: bool, host: str, port: int, max_mb: float, max_batch: int) -> str | None:
    """The token to require (None with --no-auth), or one line saying why the server must not start."""
    if no_auth and token:
        raise MedTransferError("--no-auth and --token contradict each other: give one")
    if not no_auth:
        token = os.environ.get("MEDTRANSFER_TOKEN") if token is None else token
        if not token:
            raise MedTransferError("no token: pass --token T or set MEDTRANSFER_TOKEN (clients send 'Authorization: "
                                   "Bearer T'), or --no-auth to serve without one on 127.0.0.1")
        if len(token) < MIN_TOKEN_CHARS or token != token.strip():
            raise MedTransferError(f"the token must be at least {MIN_TOKEN_CHARS} characters without surrounding "
                                   "spaces; make one with: python -c 'import secrets; "
                                   "print(secrets.token_urlsafe(32))'")
    elif not is_loopback(host):
        raise MedTransferError(f"--no-auth on {host} would answer anyone who can reach it: refused; bind 127.0.0.1 "
                               "(--host) or give a token (--token or MEDTRANSFER_TOKEN)")
    if not 0 <= port <= 65535:
        raise MedTransferError(f"--port must be from 0 to 65535 (0: a free port), got {port}")
    if not (math.isfinite(max_mb) and max_mb > 0):
        raise MedTransferError(f"--max-mb must be a number of megabytes > 0, got {max_mb}")
    if max_batch < 1:
        raise MedTransferError(f"--max-batch must be an integer >= 1, got {max_batch}")
    return None if no_auth else token


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or one line naming the address and why it is refused."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from here on, before uvicorn's loop accepts them
    except OSError as exc:
        raise MedTransferError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or "
                               "--host") from None
    return sock


def uvicorn_server(app, sock: socket.socket):
    """uvicorn on an already-bound socket, with its own access log off (AccessLog writes ours) and its
    loggers at warning, so no request detail reaches the log."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, log_config=None,
                            limit_concurrency=256, timeout_keep_alive=5, server_header=False)
    return uvicorn.Server(config)


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          no_auth: bool = False, max_mb: float = DEFAULT_MAX_MB, max_batch: int = DEFAULT_MAX_BATCH) -> None:
    """Serve `run` until interrupted (Ctrl-C). A token (`token`, else MEDTRANSFER_TOKEN) is required unless
    `no_auth`, which is refused on an address other than loopback."""
    token = check_serving(token, no_auth, host, port, max_mb, max_batch)
    app = create_app(run, token=token, max_bytes=int(max_mb * 2**20), max_batch=max_batch)
    sock = listen(host, port)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    served = app.state.served
    shown = f"[{host}]" if ":" in host else host
    log.info("serving %s (%s, %s) on http://%s:%d: POST /predict, GET /model-card (%s), GET /health; Ctrl-C stops",
             served.version, served.modality, served.meta["task"], shown, sock.getsockname()[1],
             "no authentication" if token is None else "bearer token required")
    uvicorn_server(app, sock).run(sockets=[sock])


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1"):
    """Serve `app` from a thread on a free port of `host` for the duration of the block, yielding its base
    URL; the server stops when the block ends (tests and the load benchmark)."""
    sock = listen(host, 0)
    server = uvicorn_server(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
