import logging

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
