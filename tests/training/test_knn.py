import logging

import pytest
import torch
import torch.nn.functional as F

from training.backbone import create_backbone
from training.data import list_images, split_holdout
from training.knn import EvalImages, KnnEvaluator, extract_shard, knn_accuracy


def _setup(micro_config, synthetic_dir):
    cfg = micro_config()
    torch.manual_seed(0)
    backbone = create_backbone(cfg.model)
    memory, queries = split_holdout(list_images(synthetic_dir), 2)
    c = cfg.crops
    evaluator = KnnEvaluator(memory, queries, cfg.model.img_size, c.mean, c.std, 1.0)
    return backbone, evaluator


def test_single_process_matches_a_brute_force_evaluation(micro_config, synthetic_dir):
    backbone, evaluator = _setup(micro_config, synthetic_dir)
    acc = evaluator(backbone, torch.device("cpu"), k=5, temperature=0.07, batch_size=16)

    def feats(ds: EvalImages):
        with torch.no_grad():
            x = torch.stack([ds[i][0] for i in range(len(ds))])
            return F.normalize(backbone.eval()(x), dim=-1), torch.tensor(ds.labels)

    tf, tl = feats(evaluator.train)
    vf, vl = feats(evaluator.val)
    assert acc is not None
    assert abs(acc - knn_accuracy(tf, tl, vf, vl, k=5, temperature=0.07)) < 1e-6


def test_extraction_stops_at_the_deadline_and_says_so(micro_config, synthetic_dir, caplog):
    backbone, evaluator = _setup(micro_config, synthetic_dir)
    f, y, done = extract_shard(backbone, evaluator.train, 16, torch.device("cpu"), deadline=0.0)
    assert not done and f.shape == (0, backbone.num_features) and y.shape == (0,)
    with caplog.at_level(logging.WARNING):
        acc = evaluator(backbone, torch.device("cpu"), 5, 0.07, 16, max_seconds=1e-9)
    assert acc is None and "eval.max_seconds" in caplog.text


def test_shard_pads_to_whole_batches_with_ignored_rows(micro_config, synthetic_dir):
    backbone, evaluator = _setup(micro_config, synthetic_dir)
    f, y, done = extract_shard(backbone, evaluator.val, 16, torch.device("cpu"), float("inf"))
    assert done and f.shape[0] == 32 and (y >= 0).sum() == len(evaluator.val) == 20


def _rank_stops(rank: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        backbone.num_features = 4
        data = torch.utils.data.TensorDataset(torch.rand(40, 3, 8, 8), torch.arange(40) % 2)
        # Rank 1 is already past its deadline, rank 0 has all the time in the world: both must
        # stop at the first agreement, with slices of one shape, instead of rank 0 extracting
        # alone and later waiting in the all-gather.
        deadline = float("inf") if rank == 0 else 0.0
        f, _, done = extract_shard(backbone, data, 4, torch.device("cpu"), deadline)
        torch.save({"rows": f.shape[0], "done": done}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_to_stop_at_the_deadline(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_stops, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0 == r1 == {"rows": 0, "done": False}
