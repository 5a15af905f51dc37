"""The scoring service in process (FastAPI TestClient): same numbers as `predict`, every limit, every door."""

from __future__ import annotations

import ast
import base64
import csv
import http.server
import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from effiminivlm.serving.predict import predict


def _rows(lovif, n):
    with open(lovif / "input.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))[:n]


def _listing(row, images):
    return {"parent_asin": row["parent_asin"], "main_category": row["main_category"], "title": row["title"],
            "features": ast.literal_eval(row["features"]),
            "description": ast.literal_eval(row["description"]), "images": images}


def _png(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predicted(serve_model, synth_catalog, tmp_path_factory):
    """`effiminivlm predict` on the catalog's input.csv (default precision, batches of 64)."""
    lovif = synth_catalog / "lovif"
    out = tmp_path_factory.mktemp("pred") / "submission.csv"
    predict(serve_model, [str(lovif / "input.csv")], out, batch_size=64, num_workers=0, progress=False)
    return out


def test_api_scores_equal_predict_scores_exactly(make_app, lovif, predicted):
    """JSON with paths, JSON with base64, multipart uploads and the CSV route all give predict's numbers."""
    text = predicted.read_text()
    pred = {r["item_id"]: float(r["score"]) for r in csv.DictReader(io.StringIO(text))}
    rows = _rows(lovif, 64)  # predict's first batch of 64: the same batch, so the same bits
    first = [r["image_paths"].split(";")[0] for r in rows]
    with TestClient(make_app()) as client:
        by_path = client.post("/v1/score", json=[_listing(r, [p]) for r, p in zip(rows, first, strict=True)])
        b64 = [{"base64": base64.b64encode((lovif / "images" / p).read_bytes()).decode()} for p in first]
        by_b64 = client.post("/v1/score", json={"items": [_listing(r, [b]) for r, b in zip(rows, b64,
                                                                                           strict=True)]})
        files = {f"img{i}": (p, (lovif / "images" / p).read_bytes(), "image/jpeg")
                 for i, p in enumerate(first)}
        items = [_listing(r, [f"upload:img{i}"]) for i, r in enumerate(rows)]
        by_upload = client.post("/v1/score", data={"items": json.dumps(items)}, files=files)
        by_csv = client.post("/v1/score/csv", files={"file": ("input.csv", (lovif / "input.csv").read_bytes(),
                                                               "text/csv")})
    for resp in (by_path, by_b64, by_upload):
        assert resp.status_code == 200, resp.text
        got = resp.json()["items"]
        assert [g["item_id"] for g in got] == [r["parent_asin"] for r in rows]
        assert all(g["image_status"] == "ok" for g in got)
        assert [float(f"{g['score']:.8f}") for g in got] == [pred[r["parent_asin"]] for r in rows]
    raw = [g["score"] for g in by_path.json()["items"]]
    assert [g["score"] for g in by_b64.json()["items"]] == raw
    assert [g["score"] for g in by_upload.json()["items"]] == raw
    assert len(set(raw)) == len(raw)  # distinct items, distinct scores: the comparison means something
    assert by_csv.status_code == 200 and by_csv.headers["content-type"].startswith("text/csv")
    # byte for byte the submission predict wrote (all 160 rows, params, flops), plus each row's image status
    lines = [line.rsplit(",", 1) for line in by_csv.text.splitlines()]
    assert "".join(f"{kept}\n" for kept, _ in lines) == text
    assert [status for _, status in lines] == ["image_status"] + ["ok"] * 160


def test_model_health_ready_docs_and_page(make_app, serve_model):
    from effiminivlm.models.factory import load_model
    from effiminivlm.protocol.profile import profile_model

    prof = profile_model(load_model(serve_model)[0])
    with TestClient(make_app(max_batch=8)) as client:
        info = client.get("/v1/model").json()
        assert (info["params_m"], info["flops_g"], info["c"], info["e"]) == (prof.params_m, prof.flops_g,
                                                                             prof.c, prof.e)
        assert info["config"]["input"]["image_size"] == info["image_size"]
        assert info["batching"]["max_batch"] == 8 and info["version"]
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/readyz").status_code == 200
        api = client.get("/openapi.json").json()
        assert {"/v1/score", "/v1/score/csv", "/v1/model", "/healthz", "/readyz"} <= set(api["paths"])
        assert client.get("/docs").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and 'id="listing-form"' in page.text
        assert "drawHistogram" in client.get("/static/app.js").text


def test_image_the_model_saw_is_the_transform_output(make_app, serve_model):
    from effiminivlm.models.factory import load_model

    size = load_model(serve_model)[0].cfg.input.image_size
    body = _png((120, 40), (10, 200, 60))
    with TestClient(make_app()) as client:
        resp = client.post("/v1/score?image=true", json=[{"title": "green bag", "images": [
            {"base64": base64.b64encode(body).decode()}]}, {"title": "no image"}])
    one, two = resp.json()["items"]
    seen = Image.open(io.BytesIO(base64.b64decode(one["model_image"].split(",", 1)[1])))
    assert seen.size == (size, size)  # resized to the canonical square, as the model saw it
    assert np.abs(np.asarray(seen, dtype=int)[size // 2, size // 2] - (10, 200, 60)).max() <= 2
    assert two["model_image"] is None and two["image_status"] == "no_ref"


@pytest.mark.parametrize(("body", "status", "field"), [
    ([{"title": "x" * 501}], 422, "items.0.title"),
    ([{"title": "ok"}, {"description": "y" * 501}], 422, "items.1.description"),
    ([{"title": str(i)} for i in range(5)], 413, "items"),
    ([{"title": "x", "images": [{"base64": "!!notbase64"}]}], 422, "items.0.images.0"),
    ([{"title": "x", "images": [{"base64": base64.b64encode(b"<html>no</html>").decode()}]}], 422,
     "items.0.images.0"),
    ([{"title": "x", "images": ["upload:missing"]}], 422, "items.0.images.0"),
    ({"not": "a list"}, 422, "body"),
])
def test_limits_name_the_field(make_app, body, status, field):
    with TestClient(make_app(max_items=4, max_text_chars=500)) as client:
        resp = client.post("/v1/score", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"].startswith(field + ":"), resp.json()


def test_image_bytes_and_pixels_are_bounded(make_app):
    big = _png((300, 300))
    with TestClient(make_app(max_image_bytes=len(big) - 1, max_image_pixels=5_000)) as client:
        too_big = client.post("/v1/score", json=[{"images": [{"base64": base64.b64encode(big).decode()}]}])
        too_many = client.post("/v1/score", data={"items": json.dumps([{"images": ["upload:a"]}])},
                               files={"a": ("a.png", _png((100, 60)), "image/png")})
        body = client.post("/v1/score", content=b"[" + b" " * 200 + b"]",
                           headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["detail"].startswith("items.0.images.0:")
    assert too_many.status_code == 413 and "5,000 pixels" in too_many.json()["detail"]
    assert body.status_code == 422 and body.json()["detail"].startswith("items:")  # nothing to score
    with TestClient(make_app(max_body_bytes=100)) as client:
        over = client.post("/v1/score", json=[{"title": "x" * 200}])
    assert over.status_code == 413 and over.json()["detail"].startswith("body:")


def test_paths_outside_the_images_folder_and_urls_are_never_read(make_app, lovif, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    link = lovif / "images" / "link_out.png"
    link.symlink_to(outside)
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(_png())

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        refs = [str(outside), "../" + outside.name, "link_out.png", f"file://{outside}", "~/x.png",
                f"http://127.0.0.1:{httpd.server_port}/a.png", "/etc/passwd", "nope.jpg"]
        with TestClient(make_app()) as client:
            answers = [client.post("/v1/score", json=[{"title": "t", "images": [ref]}]) for ref in refs]
            no_dir = TestClient(make_app(images_dir=None))
            with no_dir:
                unconfigured = no_dir.post("/v1/score", json=[{"images": ["B003C955QN.jpg"]}])
    finally:
        httpd.shutdown()
        link.unlink()
    for ref, resp in zip(refs, answers, strict=True):
        assert resp.status_code == 422, (ref, resp.text)
        assert resp.json()["detail"].startswith("items.0.images.0:")
    assert "not fetched" in answers[5].json()["detail"] and hits == []
    assert "does not exist" in answers[-1].json()["detail"]
    assert unconfigured.status_code == 422 and "--images-dir" in unconfigured.json()["detail"]


def test_csv_errors_name_the_uploaded_file(make_app):
    with TestClient(make_app()) as client:
        dup = client.post("/v1/score/csv", files={"file": ("mine.csv", (
            b"parent_asin,main_category,title,features,description,image_paths\n"
            b"A,c,t,f,d,\nA,c,t,f,d,\n"), "text/csv")})
        missing = client.post("/v1/score/csv", files={"file": ("mine.csv", b"title\nx\n", "text/csv")})
        not_form = client.post("/v1/score/csv", content=b"x", headers={"content-type": "text/csv"})
    assert dup.status_code == 422 and dup.json()["detail"].startswith("mine.csv:3:"), dup.json()
    assert missing.status_code == 422 and "missing column" in missing.json()["detail"]
    assert "/tmp" not in missing.json()["detail"]
    assert not_form.status_code == 422 and not_form.json()["detail"].startswith("file:")


def test_full_queue_is_503_with_retry_after_and_timeouts_are_504(make_app):
    app = make_app(max_queue=3, request_timeout_s=0.3, retry_after_s=2)
    with TestClient(app) as client:
        full = client.post("/v1/score", json=[{"title": str(i)} for i in range(4)])
        real = app.state.batcher.run_batch
        app.state.batcher.run_batch = lambda items: (time.sleep(1.0), real(items))[1]
        slow = client.post("/v1/score", json=[{"title": "slow"}])
        app.state.batcher.run_batch = real
        time.sleep(1.0)  # the slow batch finishes in the worker; the server is healthy after
        ok = client.post("/v1/score", json=[{"title": "fine"}])
        health = client.get("/healthz").json()
    assert full.status_code == 503 and full.headers["retry-after"] == "2"
    assert full.json()["detail"].startswith("busy:")
    assert slow.status_code == 504 and "0.3 s" in slow.json()["detail"]
    assert ok.status_code == 200 and health["rejected_items"] == 4 and health["pending"] == 0
