"""The files one `POST /classify` runs code in (bench/request_path.py's trace): issue 26 asks
for at most 10 (routes, dependencies, serving object, k-NN vote, engine, store), which is where
the path stands (docs/architecture.md, "How a request flows"); this keeps it there."""

from __future__ import annotations

from bench.request_path import classify_files

MOST = 10


def test_classify_runs_code_in_few_product_files(tiny_package, tmp_path):
    files = classify_files(tiny_package, tmp_path)
    assert len(files) <= MOST, files
    assert {"api/routes/classify.py", "core/knn.py", "core/store/edge.py"} <= set(files)
