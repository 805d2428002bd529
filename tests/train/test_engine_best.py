"""train.best_metric picks the best epoch; valid macro F1; the EMA of the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.ema import WeightEma
from train.engine import better
from train.evaluate import macro_f1


def _m(acc=0.5, f1=0.5, loss=1.0):
    return {"valid_acc": acc, "valid_macro_f1": f1, "valid_loss": loss}


@pytest.mark.parametrize(
    "metric, new, best, wins",
    [
        ("valid_acc", _m(acc=0.6), _m(acc=0.5), True),
        ("valid_acc", _m(acc=0.5, loss=0.1), _m(acc=0.5, loss=1.0), False),  # a tie keeps the earlier epoch
        ("valid_macro_f1", _m(f1=0.7, acc=0.1), _m(f1=0.6, acc=0.9), True),
        ("valid_macro_f1", _m(f1=0.6), _m(f1=0.6), False),
        ("valid_loss", _m(loss=0.9, acc=0.0), _m(loss=1.0, acc=1.0), True),  # lower is better
        ("valid_loss", _m(loss=1.1), _m(loss=1.0), False),
        ("valid_loss", _m(loss=1.0), _m(loss=1.0), False),
    ],
)
def test_best_metric_decides_and_a_tie_keeps_the_earlier_epoch(metric, new, best, wins):
    assert better(new, best, metric) is wins
    assert better(new, None, metric)


def test_a_best_from_before_the_metric_existed_is_beaten():
    assert better(_m(f1=0.1), {"valid_acc": 0.9, "valid_loss": 0.1}, "valid_macro_f1")


def test_macro_f1_averages_the_classes_that_occur():
    # labels [0,0,1,1,2], predictions [0,1,1,1,0]; class 3 never occurs
    tp = np.array([1, 2, 0, 0.0])
    predicted = np.array([2, 3, 0, 0.0])
    true = np.array([2, 2, 1, 0.0])
    expected = np.mean([2 * 1 / 4, 2 * 2 / 5, 0.0])
    assert macro_f1(np.stack([tp, predicted, true])) == pytest.approx(expected)


def _bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_ema_decay_warms_up_to_its_setting():
    ema = WeightEma(_bn_net(), decay=0.9)
    seen = []
    for _ in range(100):
        seen.append(ema.current_decay())
        ema.update(_bn_net())
    assert seen[0] == pytest.approx(0.1) and seen[1] == pytest.approx(2 / 11)
    assert seen == sorted(seen) and seen[-1] == 0.9


def test_ema_moves_parameters_and_batchnorm_statistics_by_one_minus_decay():
    net = _bn_net()
    ema = WeightEma(net, decay=0.75)
    ema.updates = 1000  # past the warmup: the decay is 0.75
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    net.train()
    net(torch.randn(8, 3))  # running stats and num_batches_tracked move
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)
    now, model = ema.module.state_dict(), net.state_dict()
    for k, v in now.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.75 * before[k] + 0.25 * model[k]), k
        else:
            assert torch.equal(v, model[k]), k
    assert ema.updates == 1001 and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trips():
    net = _bn_net()
    a = WeightEma(net, 0.9)
    with torch.no_grad():
        net[0].weight.mul_(3)
    a.update(net)
    b = WeightEma(_bn_net(), 0.9)
    b.load_state_dict(a.state_dict())
    assert b.updates == 1
    assert all(
        torch.equal(x, y) for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values())
    )
    assert a.facts()["decay"] == 0.9 and a.facts()["updates"] == 1


def test_resuming_a_run_saved_without_ema_with_ema_on_is_one_clear_error(tmp_path):
    from core.errors import UserError
    from train.checkpoint import check_ema_state

    check_ema_state(tmp_path, 0)
    with pytest.raises(UserError, match="train.ema_decay=0"):
        check_ema_state(tmp_path, 1)
    (tmp_path / "custom_checkpoint_0.pkl").write_bytes(b"")
    check_ema_state(tmp_path, 1)
