import io
import tarfile
import uuid

from PIL import Image

from core import store
from indexer.sources import list_source
from tests.api.conftest import engine_for, index_into


def test_thumbnail_of_an_indexed_image(client, synthetic_dir):
    pid = store.point_id(str(sorted(synthetic_dir.rglob("*.png"))[0].resolve()))
    r = client.get(f"/images/{pid}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)  # never enlarged
    again = client.get(f"/images/{pid}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_only_points_that_exist(client):
    for bad in (str(uuid.uuid4()), "not-a-uuid", "..%2F..%2Fetc%2Fpasswd"):
        r = client.get(f"/images/{bad}")
        assert r.status_code == 404 and r.json()["error"]["code"] in ("unknown_image", "not_found")
    assert client.get(f"/images/{uuid.uuid4()}?collection=nope").status_code == 404


def test_large_tar_member_and_vanished_source(micro_package, tmp_path, make_client):
    folder = tmp_path / "src" / "big"
    folder.mkdir(parents=True)
    Image.new("RGB", (600, 300), (200, 30, 30)).save(folder / "a.png")
    Image.new("RGB", (40, 40), (20, 30, 200)).save(folder / "b.png")
    archive = tmp_path / "set.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src", arcname="train")
    embedder = engine_for(micro_package)
    index_into(tmp_path / "q", embedder, "tarred", list_source(archive, "dirs"))
    index_into(tmp_path / "q", embedder, "files", list_source(tmp_path / "src", "dirs"))
    (folder / "b.png").unlink()
    client = make_client(qdrant_path=tmp_path / "q", collection="tarred")
    big = store.point_id(f"tar://{archive.resolve()}#train/big/a.png")
    r = client.get(f"/images/{big}")
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (256, 128)
    gone = store.point_id(str((folder / "b.png").resolve()))
    r = client.get(f"/images/{gone}?collection=files")
    assert r.status_code == 404 and r.json()["error"]["code"] == "image_unavailable"
