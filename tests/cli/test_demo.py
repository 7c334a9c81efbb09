from core.package import resolve
from dinoserve.demo import DEMO_MODEL, run_demo
from tests.conftest import MICRO, TINY_PRESET
from tests.stores import edge_store


def test_demo_trains_a_model_when_none_exists_then_indexes(tmp_path, monkeypatch):
    from core.settings import Settings

    monkeypatch.chdir(tmp_path)
    settings = Settings(models_dir=tmp_path / "models", qdrant_path=tmp_path / "qdrant",
                        index_dir=tmp_path / "index", model="not-there")  # fmt: skip
    overrides = [m for m in MICRO if not m.startswith("data.holdout")]
    overrides += ["optim.epochs=1", "data.holdout_per_class=20", "eval.every_epochs=1"]
    served = run_demo(settings, tmp_path / "data", tmp_path / "queries", str(TINY_PRESET),
                      tmp_path / "run", overrides, serve=False)  # fmt: skip
    assert served.model == DEMO_MODEL
    resolve(served.models_dir, DEMO_MODEL)  # a complete package with CURRENT
    assert len(list((tmp_path / "data").rglob("*.png"))) == 2000
    assert len(list((tmp_path / "queries").rglob("*.png"))) == 50
    client = edge_store(tmp_path / "qdrant")
    assert client.count(client.resolve("images")) == 2000
    client.close()

    # A second demo reuses the model and finds every image unchanged.
    again = run_demo(settings, tmp_path / "data", tmp_path / "queries", str(TINY_PRESET),
                     tmp_path / "run2", overrides, serve=False)  # fmt: skip
    assert again.model == DEMO_MODEL and not (tmp_path / "run2").exists()
