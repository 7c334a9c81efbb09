import re
import threading
from pathlib import Path

import pytest

from core import package
from core.package import IntegrityError, PackageError, PackageMeta


def _meta(name: str = "m") -> PackageMeta:
    return PackageMeta(
        name=name,
        arch="vit_tiny_patch16_224",
        timm_kwargs={"num_classes": 0},
        img_size=32,
        patch_size=4,
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
        crop_pct=1.0,
        embed_dim=32,
        num_heads=2,
        grid=(8, 8),
        onnx={"fp32": package.OnnxVariant(file=package.ONNX_FP32)},
    )


def _write(models: Path, name: str = "m", payload: bytes = b"onnx") -> Path:
    stage = package.staging_dir(models, name)
    (stage / package.ONNX_FP32).write_bytes(payload)
    (stage / package.WEIGHTS).write_bytes(b"weights" + payload)
    out = package.finalize(stage, _meta(name))
    package.switch_current(out.parent, out.name)
    return out


def test_written_package_reads_back_and_verifies(tmp_path):
    out = _write(tmp_path)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", out.name)
    meta = package.verify(out)
    assert meta.version == out.name and meta.created_at.endswith("Z")
    assert set(meta.files) == {package.ONNX_FP32, package.WEIGHTS}
    assert package.resolve(tmp_path, "m") == out  # by name, through CURRENT
    assert package.resolve(tmp_path, str(out)) == out  # by path
    assert (out / package.ONNX_FP32).stat().st_mode & 0o222 == 0  # written read-only


@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_damaged_file_is_detected(tmp_path, damage):
    out = _write(tmp_path)
    target = out / package.WEIGHTS
    target.chmod(0o644)
    if damage == "tamper":
        target.write_bytes(b"weightsonnx!")
    else:
        target.unlink()
    with pytest.raises(IntegrityError, match=package.WEIGHTS):
        package.verify(out)


def test_unknown_schema_and_unknown_model_are_refused(tmp_path):
    out = _write(tmp_path)
    meta_path = out / package.META
    meta_path.chmod(0o644)
    meta_path.write_text(
        meta_path.read_text().replace('"schema_version": 1', '"schema_version": 9')
    )
    with pytest.raises(PackageError, match="schema"):
        package.read_meta(out)
    with pytest.raises(PackageError, match="unknown model"):
        package.resolve(tmp_path, "nope")
    with pytest.raises(PackageError, match="invalid model name"):
        package.staging_dir(tmp_path, "../x")


def test_versions_sort_by_time_and_current_follows_the_latest(tmp_path, monkeypatch):
    clock = iter([1_800_000_000.0, 1_800_000_100.0])
    real_gmtime = package.time.gmtime
    monkeypatch.setattr(package.time, "gmtime", lambda: real_gmtime(next(clock)))
    old, new = _write(tmp_path, payload=b"a"), _write(tmp_path, payload=b"b")
    package.staging_dir(tmp_path, "m")  # an unfinished export is not a version
    assert package.list_versions(tmp_path / "m") == [old.name, new.name]
    assert package.current_version(tmp_path / "m") == new.name
    package.switch_current(tmp_path / "m", old.name)  # rollback
    assert package.resolve(tmp_path, "m") == old
    with pytest.raises(PackageError, match="no such version"):
        package.switch_current(tmp_path / "m", "20990101-000000-deadbeef")


def test_current_switch_is_atomic(tmp_path, monkeypatch):
    a, b = _write(tmp_path, payload=b"a"), _write(tmp_path, payload=b"b")
    name_dir = tmp_path / "m"
    # a reader never sees anything but a complete version name while CURRENT flips
    seen, stop = set(), threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add((name_dir / package.CURRENT).read_text())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        package.switch_current(name_dir, (a, b)[i % 2].name)
    stop.set()
    reader.join()
    assert seen <= {a.name + "\n", b.name + "\n"} and seen
    # a crash before the rename leaves the old CURRENT and no temporary file
    monkeypatch.setattr(package.os, "replace", lambda *_: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError, match="crash"):
        package.switch_current(name_dir, a.name)
    assert package.current_version(name_dir) == b.name
    assert [p.name for p in name_dir.iterdir() if p.name.startswith(".")] == []


def test_install_copies_a_package_into_a_registry_keeping_its_version(tmp_path):
    src = _write(tmp_path / "shipped")
    out = package.install(src, tmp_path / "registry", "demo")
    assert out == tmp_path / "registry" / "demo" / src.name
    assert package.resolve(tmp_path / "registry", "demo") == out
    assert package.verify(out).files == package.verify(src).files
    assert (out / package.ONNX_FP32).stat().st_mode & 0o222 == 0
    assert not list((tmp_path / "registry" / "demo").glob(".staging-*"))
    # Again: the version already there is kept; activate=False leaves CURRENT alone.
    newer = _write(tmp_path / "registry", "demo", payload=b"refreshed")
    assert package.install(src, tmp_path / "registry", "demo", activate=False) == out
    assert package.resolve(tmp_path / "registry", "demo") == newer


def test_install_refuses_a_damaged_package(tmp_path):
    src = _write(tmp_path / "shipped")
    (src / package.WEIGHTS).chmod(0o644)
    (src / package.WEIGHTS).write_bytes(b"changed")
    with pytest.raises(IntegrityError):
        package.install(src, tmp_path / "registry", "demo")
    assert not (tmp_path / "registry" / "demo" / src.name).exists()
