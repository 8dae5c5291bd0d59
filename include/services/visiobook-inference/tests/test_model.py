"""Unit tests for the model and the request handling. Run: python3 -m unittest"""

from __future__ import annotations

import json
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
import faults  # noqa: E402
import model  # noqa: E402

CASES = {
    "A young wizard, a dragon and the magic of an ancient kingdom": "fantasy",
    "Robots and aliens on a spaceship to a distant planet": "science_fiction",
    "A detective follows every clue to solve the murder": "mystery",
    "Their love grew until the wedding kiss": "romance",
}


class ModelTest(unittest.TestCase):
    def setUp(self) -> None:
        self.model = model.Model.load(ROOT / "model.json", device="cpu")

    def test_known_examples(self) -> None:
        for text, label in CASES.items():
            with self.subTest(text=text):
                result = self.model.predict(text)
                self.assertEqual(result["label"], label)
                self.assertGreater(result["confidence"], 0.9)

    def test_deterministic_and_normalised(self) -> None:
        first = self.model.predict("secret dragons")
        self.assertEqual(first, self.model.predict("secret dragons"))
        self.assertAlmostEqual(sum(first["scores"].values()), 1.0, places=5)
        self.assertEqual(first["known_tokens"], 2)  # plural "dragons" maps to "dragon"

    def test_unknown_text_is_uniformish(self) -> None:
        result = self.model.predict("zzz qqq")
        self.assertEqual(result["known_tokens"], 0)
        self.assertLess(result["confidence"], 0.3)

    def test_malformed_specs(self) -> None:
        with self.assertRaises(model.ModelError):
            model.Model({"name": "x"})
        spec = json.loads((ROOT / "model.json").read_text())
        spec["bias"] = [0.0]
        with self.assertRaises(model.ModelError):
            model.Model(spec)
        spec = json.loads((ROOT / "model.json").read_text())
        spec["weights"][0] = [1.0]
        with self.assertRaises(model.ModelError):
            model.Model(spec)
        with self.assertRaises(model.ModelError):
            model.Model.load(ROOT / "missing.json")

    def test_device_selection_without_torch(self) -> None:
        with mock.patch.object(model, "_torch", return_value=None):
            self.assertEqual(model.pick_device("auto"), "cpu")
            self.assertEqual(model.pick_device("cpu"), "cpu")
            with self.assertRaises(model.ModelError):
                model.pick_device("cuda")


class AppTest(unittest.TestCase):
    def make(self, **kwargs: object) -> app.App:
        params: dict = {"version": "0.3.0", "commit": "abc", "model_path": ROOT / "model.json", "device": "cpu"}
        params.update(kwargs)
        return app.App(**params)

    def test_health_reports_model_and_device(self) -> None:
        code, _, body = self.make().handle("GET", "/health")
        data = json.loads(body)
        self.assertEqual(code, 200)
        self.assertEqual((data["model_loaded"], data["device"], data["status"]), (True, "cpu", "ok"))
        self.assertEqual(data["model"], "visiobook-genre@2024.06.1")

    def test_health_fails_without_model_or_when_broken(self) -> None:
        code, _, body = self.make(model_path=ROOT / "missing.json").handle("GET", "/health")
        self.assertEqual((code, json.loads(body)["model_loaded"]), (503, False))
        self.assertEqual(self.make(broken="test").handle("GET", "/health")[0], 503)

    def test_predict_single_and_batch(self) -> None:
        application = self.make()
        code, _, body = application.handle("POST", "/predict", json.dumps({"text": "murder clue"}).encode())
        self.assertEqual((code, json.loads(body)["label"]), (200, "mystery"))
        code, _, body = application.handle("POST", "/predict", json.dumps({"texts": list(CASES)}).encode())
        labels = [p["label"] for p in json.loads(body)["predictions"]]
        self.assertEqual(labels, list(CASES.values()))
        metrics = application.handle("GET", "/metrics")[2].decode()
        self.assertIn(
            'inference_request_duration_seconds_count{service="visiobook-inference",'
            'model="visiobook-genre",device="cpu"} 2',
            metrics,
        )
        self.assertIn('inference_predictions_total{service="visiobook-inference",label="mystery"} 2', metrics)
        self.assertIn('model_loaded{service="visiobook-inference"} 1', metrics)

    def test_predict_errors(self) -> None:
        application = self.make(max_batch=2)
        for body in (b"nope", b"[]", b'{"text": 3}', b'{"texts": []}', b'{"texts": ["a", "b", "c"]}'):
            with self.subTest(body=body):
                self.assertEqual(application.handle("POST", "/predict", body)[0], 400)
        self.assertEqual(application.handle("GET", "/predict")[0], 405)
        self.assertEqual(application.handle("DELETE", "/health")[0], 405)
        self.assertEqual(application.handle("GET", "/nope")[0], 404)
        self.assertEqual(application.handle("GET", "/")[0], 200)
        unloaded = self.make(model_path=ROOT / "missing.json")
        self.assertEqual(unloaded.handle("POST", "/predict", b'{"text": "x"}')[0], 400)

    def test_injected_faults_spare_health_and_metrics(self) -> None:
        slept: list[float] = []
        injected = faults.Faults(slow_after=0, errors_after=0, slow_seconds=4, clock=lambda: 0.0)
        application = self.make(injected=injected, sleep=slept.append)
        self.assertEqual(application.handle("POST", "/predict", b'{"text": "x"}')[0], 500)
        self.assertEqual(application.handle("GET", "/health")[0], 200)
        metrics = application.handle("GET", "/metrics")[2].decode()
        self.assertEqual(slept, [4])
        self.assertIn('http_requests_total{service="visiobook-inference",code="500",path="/predict"} 0', metrics)

    def test_config_helpers(self) -> None:
        self.assertEqual(app.read_version(environ={"APP_VERSION": "1"}), "1")
        self.assertEqual(app.read_version(ROOT, environ={}), (ROOT / "VERSION").read_text().strip())
        self.assertEqual(app.read_version(ROOT / "missing", environ={}), "0.0.0-dev")
        self.assertEqual(app.read_commit(environ={"GIT_COMMIT": "x"}), "x")
        with tempfile.TemporaryDirectory() as tmp:
            self.assertIsNone(app.broken_reason(Path(tmp), environ={}))
            self.assertIsNotNone(app.broken_reason(Path(tmp), environ={"DEMO_FAIL_HEALTH": "true"}))
            Path(tmp, "BROKEN_IN").write_text("production")
            self.assertIsNotNone(app.broken_reason(Path(tmp), environ={"APP_ENVIRONMENT": "production"}))
            self.assertIsNone(app.broken_reason(Path(tmp), environ={"APP_ENVIRONMENT": "staging"}))
            Path(tmp, "BROKEN").touch()
            self.assertIsNotNone(app.broken_reason(Path(tmp), environ={}))


if __name__ == "__main__":
    unittest.main()
