import pytest

from tests.conftest import ROOT, TINY_PRESET
from training.config import ConfigError, CropConfig, TrainConfig, load_config, save_config


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads_and_round_trips(preset, tmp_path):
    cfg = load_config(preset)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.digest() == cfg.digest()


def test_yaml_then_overrides_typed():
    cfg = load_config(
        TINY_PRESET,
        ["optim.epochs=3", "crops.global_scale=[0.3,1]", "run.compile=yes", "data.train=2024"],
    )
    assert cfg.optim.epochs == 3 and cfg.crops.global_scale == (0.3, 1.0)
    assert cfg.run.compile is True and cfg.data.train == "2024"
    assert cfg.model.patch_size == 4  # from the preset


def test_an_override_inside_the_timm_kwargs_keeps_the_others():
    demo = ROOT / "configs" / "demo.yaml"
    base = load_config(demo).model.kwargs
    one = load_config(demo, ["model.kwargs.reg_tokens=4"]).model.kwargs
    assert one == {**base, "reg_tokens": 4}
    assert load_config(demo, ["model.kwargs={depth: 2}"]).model.kwargs == {"depth": 2}


def test_typo_names_the_key_and_the_nearest_valid_one():
    with pytest.raises(
        ConfigError, match=r"unknown config key: optim\.epoch; did you mean optim\.epochs"
    ):
        load_config(TINY_PRESET, ["optim.epoch=3"])
    with pytest.raises(ConfigError, match=r"crops\.blur_sigmas; did you mean crops\.blur_sigma"):
        load_config(None, ["crops.blur_sigmas=[0.1,1]"])


def test_reference_flag_names_point_to_the_key_that_does_the_job():
    # loss.teacher_temp used to be accepted and never read: now it says which key is read.
    with pytest.raises(ConfigError, match=r"loss\.teacher_temp; use loss\.final_teacher_temp"):
        load_config(None, ["loss.teacher_temp=0.05"])
    assert "teacher_temp" not in TrainConfig.model_fields["loss"].annotation.model_fields


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    (tmp_path / "p.yaml").write_text("loss:\n  teacher_temp: 0.05\nrun:\n  sed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "p.yaml")
    assert "loss.teacher_temp" in str(err.value) and "did you mean run.seed" in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.epochs=abc", r"optim\.epochs: .*integer"),
        ("run.device=tpu", r"run\.device: .*'auto', 'cpu' or 'cuda'"),
        ("crops.jitter_p=1.5", r"crops\.jitter_p: .*less than or equal to 1"),
        ("crops.global_size=30", "multiples of model.patch_size"),
        ("data.batch_size=0", r"data\.batch_size"),
        ("optim", "not key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_PRESET, [override])


def test_sections_validate_on_construction_and_assignment():
    with pytest.raises(ValueError, match="grayscale_p"):
        CropConfig(grayscale_p=2.0)
    cfg = CropConfig()
    with pytest.raises(ValueError, match="local_number"):
        cfg.local_number = -1


def test_a_run_written_by_an_earlier_version_still_loads(tmp_path):
    # Earlier versions wrote loss.teacher_temp (never read) into every run's config.yaml.
    cfg = tmp_path / "config.yaml"
    cfg.write_text("loss:\n  teacher_temp: 0.04\n  final_teacher_temp: 0.06\n")
    with pytest.raises(ConfigError, match=r"loss\.final_teacher_temp"):
        load_config(cfg)  # as a preset: the user's own key, refused with the right one
    assert load_config(cfg, run=True).loss.final_teacher_temp == 0.06
