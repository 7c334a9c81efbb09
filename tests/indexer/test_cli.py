from core.package import read_meta
from dinoserve.cli import main
from tests.stores import edge_store


def test_index_command_with_a_real_package(
    micro_package, synthetic_dir, tmp_path, monkeypatch, capsys
):
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
    assert "DINOSERVE_INDEXER__BATCH=0 (indexer.batch)" in capsys.readouterr().err


def test_index_needs_a_source_and_never_indexes_the_working_directory(
    tmp_path, monkeypatch, capsys
):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "stray.png")  # would be indexed from "."
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "qdrant"))
    assert main(["index", "--collection", "mine"]) == 2
    assert "name a folder or tar/tar.gz, or pass --manifest" in capsys.readouterr().err
    assert not (tmp_path / "qdrant").exists()


def test_index_reports_an_empty_folder_and_dirs_labels_on_a_flat_one(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "qdrant"))
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(flat / f"{i}.png")
    assert main(["index", str(flat), "--labels", "dirs"]) == 2
    err = capsys.readouterr().err
    assert "--labels dirs" in err and "3 images lie directly in it" in err
    assert not (tmp_path / "qdrant").exists()  # refused before the store was touched
