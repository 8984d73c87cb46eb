import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from protosaga_core.datasets import DatasetConfig
from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.method import train as train_module
from protosaga_core.method.train import PRESETS, DensifyConfig, prepare_views, train

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DatasetConfig:
    root = tmp_path_factory.mktemp("data") / "demo"
    shutil.copytree(DEMO, root)
    return DatasetConfig(root)


def tiny_config(iterations: int) -> train_module.TrainConfig:
    # Densification inside the run, so resuming must restore the strategy's state too.
    return replace(
        PRESETS["cpu"],
        iterations=iterations,
        sh_degree=1,
        sh_degree_interval=4,
        checkpoint_every=0,
        densify=DensifyConfig(refine_start_iter=5, refine_stop_iter=30, refine_every=5, reset_every=1000, grow_grad2d=4e-4),
    )


def test_prepare_views_maps_mask_labels_to_classifier_rows(dataset):
    views = prepare_views(dataset.load(), unlabeled_as_class=False)
    for sample in views[:3]:
        mask = sample.view.load_mask()
        assert torch.equal(sample.labels, torch.unique(mask[mask > 0]))
        labelled = mask > 0
        assert (sample.target[~labelled] == train_module.IGNORE).all()
        assert torch.equal(sample.labels[sample.target[labelled]], mask[labelled])
    with_zero = prepare_views(dataset.load(), unlabeled_as_class=True)[0]
    assert with_zero.labels[0] == 0 and (with_zero.target >= 0).all()


def test_training_writes_the_scene_and_lowers_the_loss(dataset, tmp_path):
    losses = []
    original = train_module.training_loss

    def recording(*args, **kwargs):
        loss, rgb, info = original(*args, **kwargs)
        losses.append(loss.item())
        return loss, rgb, info

    train_module.training_loss = recording
    try:
        no_densify = replace(tiny_config(60), densify=DensifyConfig(refine_start_iter=1000))
        scene_dir = train(dataset, tmp_path / "scene", no_densify)
    finally:
        train_module.training_loss = original
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    meta = scene_dir.read_meta()
    assert meta.stages == ["train"] and meta.train_views == sorted(meta.train_views)
    assert meta.dataset_format == "nerf" and meta.configs["train"]["iterations"] == 60
    gaussians = scene_dir.read_gaussians()
    assert gaussians.feature_dim == 16 and gaussians.sh_degree == 1
    classifiers = scene_dir.read_classifiers()
    assert classifiers.view_names == meta.train_views
    assert all(w.shape == (len(l), 16) for l, w in zip(classifiers.labels, classifiers.weights))


def test_resume_continues_bit_for_bit(dataset, tmp_path, monkeypatch):
    config = tiny_config(24)
    straight = train(dataset, tmp_path / "straight", config)
    interrupt_at(monkeypatch, call=12)  # Ctrl-C during iteration 11, which still completes
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "resumed", config)
    monkeypatch.undo()
    torch.manual_seed(12345)  # resuming must not depend on the process's RNG state
    resumed = train(dataset, tmp_path / "resumed", config, resume=True)
    a, b = straight.read_gaussians(), resumed.read_gaussians()
    assert len(a) == len(b)
    assert len(a) != 4000  # densification ran inside the resumed stretch
    for name, tensor in a.tensors().items():
        assert torch.equal(tensor, b.tensors()[name]), name
    for wa, wb in zip(straight.read_classifiers().weights, resumed.read_classifiers().weights):
        assert torch.equal(wa, wb)


def interrupt_at(monkeypatch, call: int) -> None:
    """Send this process SIGINT (Ctrl-C) in the middle of the `call`-th training step."""
    original = train_module.training_loss
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_loss", interrupted)


def test_interrupt_saves_a_checkpoint_that_resumes(dataset, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, call=8)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "scene", tiny_config(20))
    checkpoint = SceneDir(tmp_path / "scene").checkpoints_dir / "last.pt"
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 8  # the interrupted step completed
    monkeypatch.undo()
    scene_dir = train(dataset, tmp_path / "scene", tiny_config(20), resume=True)
    assert scene_dir.read_meta().stages == ["train"]


def test_missing_masks_are_a_clear_error(dataset, tmp_path):
    root = tmp_path / "nomasks"
    shutil.copytree(dataset.root, root)
    shutil.rmtree(root / "masks")
    with pytest.raises(FileNotFoundError, match="protosaga masks"):
        train(DatasetConfig(root), tmp_path / "scene", tiny_config(2))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(dataset, tmp_path / "fresh", tiny_config(2), resume=True)


def test_train_command_uses_the_preset_and_overrides(dataset, tmp_path, capsys):
    from protosaga_core.cli import main

    out = tmp_path / "scene"
    assert main(["train", str(dataset.root), "-o", str(out), "--preset", "cpu", "--iterations", "3", "--sh-degree", "0"]) == 0
    config = SceneDir(out).read_meta().configs["train"]
    assert config["iterations"] == 3 and config["sh_degree"] == 0
    assert config["max_width"] == PRESETS["cpu"].max_width  # the rest comes from the preset
    assert "trained" in capsys.readouterr().out


def test_training_runs_where_it_is_told_and_defaults_to_the_default_device(dataset, tmp_path, monkeypatch):
    seen = []
    original = train_module.training_loss

    def recording(params, classifier, sample, *args, **kwargs):
        seen.append({params["means"].device.type, classifier.device.type, sample.image.device.type, sample.cameras.viewmats.device.type})
        return original(params, classifier, sample, *args, **kwargs)

    asked = []
    monkeypatch.setattr(train_module, "training_loss", recording)
    monkeypatch.setattr(train_module, "default_device", lambda: asked.append(1) or torch.device("cpu"))
    train(dataset, tmp_path / "scene", tiny_config(3))
    assert asked == [1] and seen == [{"cpu"}] * 3  # params, classifiers, images and cameras on one device
    train(dataset, tmp_path / "again", tiny_config(2), device=torch.device("cpu"))
    assert asked == [1] and seen == [{"cpu"}] * 5


def test_a_checkpoint_loads_onto_another_device_with_cpu_generator_states(dataset, tmp_path):
    """Resuming on a GPU: the tensors go to the training device, the generators' states stay CPU byte
    tensors (`torch.Generator.set_state` accepts nothing else). The meta device stands in for CUDA here."""
    config = replace(tiny_config(12), checkpoint_every=10)  # densification fills the strategy state
    train(dataset, tmp_path / "scene", config)
    checkpoint = SceneDir(tmp_path / "scene").checkpoints_dir / "last.pt"
    views = prepare_views(dataset.load(), unlabeled_as_class=False)
    fingerprint = train_module.scene_fingerprint(views, config.feature_dim)
    state = train_module.load_checkpoint(checkpoint, config, 1.0, fingerprint, torch.device("meta"))
    assert state.iteration == 12  # the checkpoint written at the end
    assert {p.device.type for p in state.params.values()} == {"meta"}
    assert {c.device.type for c in state.classifiers} == {"meta"}
    moments = [s["exp_avg"] for o in state.optimizers.values() for s in o.state.values()]
    assert moments and {m.device.type for m in moments} == {"meta"}
    assert state.strategy_state["grad2d"].device.type == "meta"
    assert state.view_generator.get_state().device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="hardware: needs a CUDA device (gsplat's rasterizer)")
def test_training_on_cuda_resumes_and_writes_a_cpu_readable_scene(dataset, tmp_path):
    """On a GPU machine: the run trains with gsplat on CUDA, a CUDA checkpoint resumes, the files load on the CPU."""
    scene = tmp_path / "scene"
    with pytest.raises(KeyboardInterrupt):
        interrupted = replace(tiny_config(20), checkpoint_every=10)
        original = train_module.training_loss
        calls = []

        def stop_at_twelve(params, *args, **kwargs):
            assert params["means"].is_cuda
            calls.append(1)
            if len(calls) == 12:
                raise KeyboardInterrupt
            return original(params, *args, **kwargs)

        train_module.training_loss = stop_at_twelve
        try:
            train(dataset, scene, interrupted, device=torch.device("cuda"))
        finally:
            train_module.training_loss = original
    scene_dir = train(dataset, scene, tiny_config(20), resume=True, device=torch.device("cuda"))
    assert scene_dir.read_gaussians().means.device.type == "cpu"
    assert all(w.device.type == "cpu" for w in scene_dir.read_classifiers().weights)


def test_the_warmup_trains_shrunk_views_first_and_the_budget_bounds_the_count(dataset, tmp_path, monkeypatch):
    seen = []  # (view width, Gaussians) of every iteration
    original = train_module.training_loss

    def recording(params, classifier, sample, sh_degree, config):
        seen.append((sample.cameras.width, len(params["means"])))
        assert sample.target.shape == (sample.cameras.height, sample.cameras.width) == sample.image.shape[:2]
        return original(params, classifier, sample, sh_degree, config)

    monkeypatch.setattr(train_module, "training_loss", recording)
    base = tiny_config(24)
    config = replace(base, warmup_downscales=1, warmup_every=10, densify=replace(base.densify, grow_grad2d=1e-5, max_gaussians=3_000))
    scene_dir = train(dataset, tmp_path / "scene", config)
    full = dataset.load_at_most(config.max_width)[0].views[0].width
    assert [width for width, _ in seen] == [full // 2] * 10 + [full] * 14
    assert seen[0][1] == 3_000 < 4_000  # a random subset of the 4,000 points; growth then stays within the budget
    assert max(count for _, count in seen) <= 3_000 and len(scene_dir.read_gaussians()) <= 3_000
