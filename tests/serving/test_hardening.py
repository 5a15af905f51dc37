"""Hostile requests and a broken model get a 4xx / one line, never a 500 traceback or a NaN score.

Bodies nested 100,000 deep, bytes that are not UTF-8, a CSV row whose image path escapes the images folder,
a client that hangs up mid-upload, and a model whose head yields NaN (service, `predict`).
"""

from __future__ import annotations

import csv
import io
import logging
import socket
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from effiminivlm.cli import main

LISTING = {"main_category": "AMAZON FASHION", "title": "Leather cap", "features": ["Imported"],
           "description": "A cap."}


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose output layer's bias is NaN: every prediction is NaN."""
    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import create_model, create_tokenizer

    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    model = create_model(cfg, pretrained=False)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.fill_(float("nan"))
    folder = tmp_path_factory.mktemp("nan_model") / "nan"
    model.save_pretrained(folder, tokenizer=create_tokenizer(cfg))
    return folder


@pytest.mark.parametrize("body, field", [
    ("[" * 100_000 + "]" * 100_000, "items.0.0"),
    ('[{"title": ' + "[" * 100_000 + "]" * 100_000 + "}]", "items.0.title"),
    ('{"items": [{"title": "x"}, {"features": ' + "[" * 5000 + "]" * 5000 + "}]}", "items.1.features"),
])
def test_deep_nesting_is_a_422_naming_the_field(make_app, body, field):
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        resp = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"].startswith(f"{field}: nested too deep")


def test_invalid_utf8_is_a_400_never_replaced_and_scored(make_app):
    body = b'[{"main_category": "AMAZON FASHION", "title": "Cap \xff\xfe", "description": ""}]'
    with TestClient(make_app()) as client:
        resp = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
        ok = client.post("/v1/score", content=body.replace(b"\xff\xfe", "é".encode()),
                         headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["detail"] == "body: not UTF-8 text (byte 51: invalid start byte)"
    assert ok.status_code == 200


def test_csv_rows_scored_without_their_image_say_so(make_app, lovif):
    header, first, second = list(csv.reader(io.StringIO((lovif / "input.csv").read_text())))[:3]
    second[header.index("image_paths")] = "../../../etc/passwd"  # outside the images folder: refused
    buf = io.StringIO()
    csv.writer(buf).writerows([header, first, second])
    text = buf.getvalue()
    with TestClient(make_app()) as client:
        resp = client.post("/v1/score/csv", files={"file": ("input.csv", text.encode(), "text/csv")})
    assert resp.status_code == 200, resp.text
    out = resp.text.splitlines()
    assert out[0] == "item_id,score,params,flops,image_status"
    assert [line.rsplit(",", 1)[1] for line in out[1:]] == ["ok", "no_ref"]


def test_a_client_that_hangs_up_is_one_info_line(make_app, caplog):
    from effiminivlm.serving.app import LOG
    from effiminivlm.serving.local import LocalServer

    caplog.set_level(logging.INFO)
    with LocalServer(make_app()) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n[{\"title\": ")
        with socket.create_connection((host, int(port))) as sock:  # the server goes on serving
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
    gone = [r for r in caplog.records if r.name == LOG.name and "disconnected during POST /v1/score" in
            r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_nan_model_is_a_clear_error_in_the_service_and_predict(nan_model, lovif, tmp_path, capsys):
    from effiminivlm.serving.app import create_app
    from effiminivlm.serving.scorer import Scorer

    app = create_app(Scorer.from_pretrained(nan_model, num_workers=0, precision="fp32"))
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.post("/v1/score", json=[LISTING, LISTING])
    assert resp.status_code == 500
    assert resp.json()["detail"] == (f"model {nan_model}: 2 of 2 predictions are not finite (NaN or inf); "
                                     "nothing written (retrain or check the weights)")
    for precision in ("auto", "fp32"):  # the fast path and the fp32 path
        out = tmp_path / f"{precision}.csv"
        assert main(["predict", str(lovif / "input.csv"), "--model", str(nan_model), "--out", str(out),
                     "--precision", precision]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"error: model {nan_model}: 160 of 160 predictions are not finite (NaN or inf); "
                       "nothing written (retrain or check the weights)")
        assert not out.exists()
