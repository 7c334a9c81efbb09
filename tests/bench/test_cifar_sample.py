from bench.device import gpu_train
from bench.device.cifar_sample import QUERIES, SAMPLE, build_sample


def test_sample_is_labelled_disjoint_from_the_held_out_and_within_its_bytes(tmp_path):
    tar = gpu_train.fake_cifar(tmp_path / "fake.tar.gz", per_class=12)
    out = tmp_path / "shipped"
    report = build_sample(
        str(tar),
        out,
        per_class=5,
        queries_per_class=2,
        holdout=4,
        max_bytes=40_000,
        cache=str(tmp_path / "cache"),
    )
    assert report["sample"] == 50 and report["queries"] == 20
    files = {p.relative_to(out / SAMPLE) for p in (out / SAMPLE).rglob("*.jpg")}
    queries = {p.relative_to(out / QUERIES) for p in (out / QUERIES).rglob("*.jpg")}
    assert len(files) == 50 and len(queries) == 20 and not files & queries
    assert {p.parts[0] for p in files} == set(report["classes"])  # labels are the folders
    # Queries come from the held-out tail (the last 4 of 12 per class: 0008–0011).
    assert all(int(p.stem) >= 8 for p in queries) and all(int(p.stem) < 8 for p in files)
    size = sum(p.stat().st_size for p in out.rglob("*.jpg"))
    assert size == report["bytes"] <= 40_000


def test_sample_refuses_a_budget_it_cannot_meet(tmp_path):
    import pytest

    tar = gpu_train.fake_cifar(tmp_path / "fake.tar.gz", per_class=6)
    with pytest.raises(ValueError, match="lower --per-class"):
        build_sample(
            str(tar),
            tmp_path / "out",
            per_class=2,
            queries_per_class=1,
            holdout=2,
            max_bytes=1_000,
            cache=str(tmp_path / "cache"),
        )
