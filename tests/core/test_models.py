"""The model registry: known names build with a fresh head, unknown names list close matches."""

import pytest
import torch

from core.errors import UserError
from core.models import (
    HeadSpec,
    available_archs,
    backbone_frozen_eval,
    build_model,
    head_module,
    set_backbone_trainable,
)


@pytest.mark.parametrize(
    "arch, slot",
    [
        ("resnet18", "fc"),
        ("mobilenet_v3_small", "classifier"),
        ("densenet121", "classifier"),
        ("cifar_cnn", "fc3"),
    ],
)
def test_head_is_replaced_with_the_requested_classes(arch, slot):
    model = build_model(arch, 7, HeadSpec([32], 0.2)).eval()
    assert model.imgclf_head == slot
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert [type(m).__name__ for m in head_module(model)] == ["Linear", "ReLU", "Dropout", "Linear"]


def test_unknown_arch_lists_close_matches():
    with pytest.raises(UserError, match="unknown model.arch 'resnet5'.*resnet50"):
        build_model("resnet5", 3)


def test_cifar_cnn_has_no_imagenet_weights():
    with pytest.raises(UserError, match="no imagenet weights"):
        build_model("cifar_cnn", 10, pretrained="imagenet")


def test_freezing_leaves_only_the_head_trainable():
    model = build_model("resnet18", 3)
    set_backbone_trainable(model, False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.output.weight", "fc.output.bias"}
    model.train()
    backbone_frozen_eval(model)
    assert not model.bn1.training and model.fc.training
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


def test_pretrained_state_dict_from_a_local_path_is_loaded(tmp_path):
    torch.manual_seed(1)
    src = build_model("cifar_cnn", 10)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("fc3")}
    torch.save(state, tmp_path / "w.pth")
    model = build_model("cifar_cnn", 4, pretrained=str(tmp_path / "w.pth"))
    assert torch.equal(model.conv1.weight, src.conv1.weight)


def test_imagenet_weights_load_from_the_torch_cache_without_network(tmp_path, monkeypatch):
    import torchvision

    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    reference = torchvision.models.resnet18()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(reference.state_dict(), ckpt / url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    model = build_model("resnet18", 3, pretrained="imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_missing_imagenet_weights_offline_explain_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="resnet18-.*pth.*model.pretrained"):
        build_model("resnet18", 3, pretrained="imagenet")


def test_registry_includes_torchvision_and_local_models():
    names = available_archs()
    assert {"cifar_cnn", "resnet50", "densenet161", "vgg16"} <= set(names)
