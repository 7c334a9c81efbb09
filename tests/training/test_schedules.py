import numpy as np
import pytest

from training.config import load_config
from training.schedules import build_schedules, cosine_schedule, teacher_temp_schedule


def test_cosine_with_warmup_endpoints():
    s = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10)
    assert len(s) == 100
    assert s[0] == 0.0
    assert s[10] == pytest.approx(1.0)  # end of warm-up: the base value
    assert s[5] == pytest.approx(0.5)
    assert s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[10:]) <= 1e-12)


def test_teacher_temp_warmup():
    s = teacher_temp_schedule(0.04, 0.07, warmup_iters=30, total_iters=100)
    assert s[0] == pytest.approx(0.04)
    assert s[29] == pytest.approx(0.07)
    assert s[-1] == pytest.approx(0.07)


def test_run_schedules_follow_the_paper():
    cfg = load_config(
        None,
        [
            "optim.epochs=10",
            "optim.warmup_epochs=2",
            "data.batch_size=512",
            "loss.warmup_teacher_temp_epochs=3",
            "optim.freeze_last_layer_epochs=1",
        ],
    )
    ipe = 20
    s = build_schedules(cfg, ipe, world_size=2)
    assert s.total_iters == 200
    peak = 0.0005 * 1024 / 256  # lr = base_lr × global batch / 256
    assert s.lr[0] == 0.0
    assert s.lr[2 * ipe] == pytest.approx(peak)
    assert s.lr[-1] == pytest.approx(1e-6)
    assert s.weight_decay[0] == pytest.approx(0.04)
    assert s.weight_decay[-1] == pytest.approx(0.4)
    assert s.momentum[0] == pytest.approx(0.996)
    assert s.momentum[-1] == pytest.approx(1.0)
    assert s.teacher_temp[0] == pytest.approx(0.04)
    assert s.teacher_temp[3 * ipe - 1] == pytest.approx(0.07)
    assert s.teacher_temp[-1] == pytest.approx(0.07)
    assert s.freeze_last_layer_iters == ipe
