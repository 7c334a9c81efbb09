from core.package import read_meta
from dinoserve.cli import main
from tests.stores import edge_store


def test_index_command_with_a_real_package(micro_package, synthetic_dir, tmp_path, monkeypatch,
                                           capsys):  # fmt: skip
    monkeypatch.setenv("DINOSERVE_MODEL", str(micro_package))
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.setenv("DINOSERVE_INDEX_DIR", str(tmp_path / "index"))
    argv = ["index", str(synthetic_dir), "--labels", "dirs", "--collection", "shapes"]
    assert main([*argv, "--batch", "16"]) == 0
    assert "120 indexed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 indexed, 120 unchanged" in capsys.readouterr().out

    meta = read_meta(micro_package)
    client = edge_store(tmp_path / "qdrant")
    physical = client.resolve_alias("shapes")
    assert physical == f"shapes__{meta.version}"
    assert client.dim(physical) == meta.embed_dim
    client.close()
    assert (tmp_path / "index" / "shapes.failures.jsonl").exists()


def test_index_command_errors_are_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DINOSERVE_MODELS_DIR", str(tmp_path / "models"))
    assert main(["index", str(tmp_path / "missing"), "--collection", "x"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--shard", "3/2"]) == 2
    assert "shard" in capsys.readouterr().err
    monkeypatch.setenv("DINOSERVE_INDEXER__BATCH", "0")
    assert main(["index", str(tmp_path)]) == 2
    assert "batch" in capsys.readouterr().err
