"""Uploads cannot fill the disk: past DINOSERVE_BLOB_MAX_BYTES an add answers 507 in the one
error shape, and nothing already stored is touched (no point written, no blob removed)."""

from __future__ import annotations

import pytest

from core.blob_usage import LEDGER
from core.blobs import Blobs
from core.settings import Settings
from tests.api.test_collections import files, noise_png
from tests.security.test_uploads import error

ADD = "/collections/shapes/images"


def blob_files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.glob("??/*")}


def test_past_the_limit_an_add_is_507_and_the_store_is_intact(make_client, tmp_path):
    root = tmp_path / "blobs"
    first, second, third = noise_png(80), noise_png(81), noise_png(82)
    # Room for the first image and one more, not for the two of the second request.
    limit = len(first) + max(len(second), len(third)) + 10
    c = make_client(blob_dir=root, blob_max_bytes=limit, raise_server_exceptions=False)
    ok = c.post(ADD + "?label=kept", files=files(first))
    assert ok.status_code == 200, ok.text
    (kept,) = ok.json()["ids"]
    before_points = c.get("/collections/shapes").json()
    before_blobs = blob_files(root)

    full = c.post(ADD + "?label=late", files=files(second, third))
    err = error(full, 507, "blob_store_full")
    assert "DINOSERVE_BLOB_MAX_BYTES" in err["message"]

    assert c.get("/collections/shapes").json() == before_points  # no point, no label
    assert blob_files(root) == before_blobs  # no blob of the refused add, none removed
    assert not [p for p in root.rglob("*.tmp")]
    assert Blobs(root).usage.total() == len(first)  # the reservation was given back
    assert c.get(f"/images/{kept}").status_code == 200  # what is stored still reads
    again = c.post(ADD + "?label=relabelled", files=files(first))  # no new bytes: no refusal
    assert again.status_code == 200 and again.json()["images"][0]["unchanged"]
    assert c.post(ADD, files=files(second)).status_code == 200  # one still fits

    # Deleting frees the room again.
    assert c.delete(f"{ADD}/{kept}").status_code == 200
    assert Blobs(root).usage.total() == len(second)
    assert c.post(ADD, files=files(third)).status_code == 200


def test_the_total_is_kept_across_restarts(make_client, tmp_path):
    root = tmp_path / "blobs"
    img = noise_png(83)
    c = make_client(blob_dir=root, blob_max_bytes=len(img) + 1)
    assert c.post(ADD, files=files(img)).status_code == 200
    assert (root / LEDGER).read_text() == f"{len(img)}\n"
    # A second app on the same blob volume (a restart, another replica) counts from there.
    other = make_client(blob_dir=root, blob_max_bytes=len(img) + 1, raise_server_exceptions=False)
    error(other.post(ADD, files=files(noise_png(84))), 507, "blob_store_full")


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_the_limit_is_validated(value, monkeypatch):
    monkeypatch.setenv("DINOSERVE_BLOB_MAX_BYTES", value)
    with pytest.raises(ValueError, match="blob_max_bytes"):
        Settings()


def test_the_default_is_a_few_gib():
    assert Settings.model_fields["blob_max_bytes"].default == 5 * 1024**3
