"""save_pretrained / from_pretrained / load_pretrained: round trips for every model, JSON +
safetensors only, shared tensors stored once, atomic writes, clear errors."""
import json

import pytest
import safetensors.torch
import torch

from mambaseq import core
import mambaseq.mamba_audio.pooling  # noqa: F401  (registers pooling "sashimi")
from mambaseq.core import (BiMambaBackbone, BiMambaBackboneConfig, MambaBackbone,
                           MambaBackboneConfig, MambaLM, MambaLMConfig, MultiscaleBackbone,
                           MultiscaleBackboneConfig, SequenceClassifier,
                           SequenceClassifierConfig, load_pretrained)

D = 16


pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _lm(n_layer):
    return MambaLM(MambaLMConfig(vocab_size=6, d_model=D, n_layer=n_layer))


MODELS = {
    "backbone": (lambda: MambaBackbone(MambaBackboneConfig(d_model=D, n_layer=2, d_state=8)),
                 lambda: torch.randn(2, 24, D)),
    "bimamba_rc": (lambda: BiMambaBackbone(BiMambaBackboneConfig(d_model=D, n_layer=2,
                                                                 rc_equivariant=True)),
                   lambda: torch.randn(2, 24, D)),
    "multiscale": (lambda: MultiscaleBackbone(MultiscaleBackboneConfig(
                       d_model=D, pool=[2, 2], causal=True, pooling="sashimi",
                       n_layers_per_stage=1)),
                   lambda: torch.randn(2, 24, D)),
    "lm": (lambda: _lm(2), lambda: torch.randint(0, 6, (2, 24))),
    "classifier": (lambda: SequenceClassifier(SequenceClassifierConfig(
                       vocab_size=6, d_model=D, n_layer=2, num_classes=3, pooling="max",
                       bidirectional=True, rc_equivariant=True, complement=[3, 2, 1, 0, 4, 5])),
                   lambda: torch.randint(0, 6, (2, 24))),
}


def _perturb(model):
    """Move every parameter off its init so that a round trip cannot pass by re-initialising."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip(tmp_path, name):
    make, inputs = MODELS[name]
    model = _perturb(make()).eval()
    x = inputs()
    model.save_pretrained(tmp_path / "ckpt")
    again = load_pretrained(tmp_path / "ckpt")
    assert type(again) is type(model) and again.config == model.config
    same = type(model).from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(same(x), model(x), rtol=0, atol=0)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    payload = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert payload["class"] == type(model).__name__


def test_files_are_json_and_safetensors_with_shared_tensors_once(tmp_path):
    model = BiMambaBackbone(BiMambaBackboneConfig(d_model=D, n_layer=1))
    model.save_pretrained(tmp_path / "bi", extra_json={"metrics.json": {"loss": 1.5}})
    names = sorted(p.name for p in (tmp_path / "bi").iterdir())
    assert names == ["config.json", "metrics.json", "model.safetensors"]
    keys = safetensors.torch.load_file(tmp_path / "bi" / "model.safetensors").keys()
    assert sum("in_proj" in k for k in keys) == 1 and sum("out_proj" in k for k in keys) == 1
    lm = _lm(1)
    lm.save_pretrained(tmp_path / "lm")
    keys = safetensors.torch.load_file(tmp_path / "lm" / "model.safetensors").keys()
    assert not any("lm_head" in k for k in keys)           # tied: the embedding only


def test_failed_write_leaves_nothing_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    lm = _lm(1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        lm.save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []                   # no partial dir, no temp dir
    monkeypatch.undo()

    lm.save_pretrained(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_model", boom)
    with pytest.raises(OSError):
        _lm(2).save_pretrained(tmp_path / "old")
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    monkeypatch.undo()

    bigger = _lm(2)                              # a successful overwrite replaces it
    bigger.save_pretrained(tmp_path / "old")
    assert load_pretrained(tmp_path / "old").config.n_layer == 2
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_loading_errors(tmp_path):
    MambaBackbone(MambaBackboneConfig(d_model=D, n_layer=1)).save_pretrained(tmp_path / "bb")
    with pytest.raises(TypeError, match="not a MambaLM"):
        MambaLM.from_pretrained(tmp_path / "bb")
    cfg = tmp_path / "bb" / "config.json"
    payload = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**payload, "class": "os.system"}))
    with pytest.raises(ValueError, match="unknown model class"):
        load_pretrained(tmp_path / "bb")
    cfg.write_text(json.dumps({**payload, "config": {**payload["config"], "evil": 1}}))
    with pytest.raises(ValueError, match="unknown config fields"):
        load_pretrained(tmp_path / "bb")
    cfg.write_text(json.dumps({**payload, "config": {**payload["config"], "n_layer": 2}}))
    with pytest.raises(ValueError, match="model.safetensors: the weights do not fit"):
        load_pretrained(tmp_path / "bb")                    # strict, one line
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "absent")


@pytest.mark.parametrize("config, message", [
    ("{not json", r"config.json: not valid JSON"),
    ('{"class": "MambaLM"}', r"config.json: missing key 'config'"),
    ('{"class": "MambaLM", "config": {"vocab_size": 6}}',
     r"config.json: the config does not build a MambaLM: .*d_model"),
    ('{"class": "MambaLM", "config": {"vocab_size": 6, "d_model": "wide", "n_layer": 1}}',
     r"config.json: the config does not build a MambaLM"),
])
def test_bad_config_json_names_the_file(tmp_path, config, message):
    _lm(1).save_pretrained(tmp_path / "lm")
    (tmp_path / "lm" / "config.json").write_text(config)
    with pytest.raises(ValueError, match=message):
        load_pretrained(tmp_path / "lm")


def test_bad_weights_name_the_file(tmp_path):
    _lm(1).save_pretrained(tmp_path / "lm")
    weights = tmp_path / "lm" / "model.safetensors"
    whole = weights.read_bytes()
    for data in (whole[: len(whole) // 2], b"PK\x03\x04 a zip, not safetensors"):
        weights.write_bytes(data)
        with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors"):
            load_pretrained(tmp_path / "lm")


def _model_classes():
    """Every model class of the toolkit, with a config of a small one."""
    from mambaseq.mamba_audio import AudioLM, WordClassifier
    from mambaseq.mamba_bio.heads import MaskedLM
    return [(MambaBackbone, dict(d_model=D, n_layer=1)),
            (BiMambaBackbone, dict(d_model=D, n_layer=1)),
            (MultiscaleBackbone, dict(d_model=D, pool=[2], n_layers_per_stage=1)),
            (MambaLM, dict(vocab_size=6, d_model=D, n_layer=1)),
            (SequenceClassifier, dict(vocab_size=6, d_model=D, n_layer=1, num_classes=2)),
            (MaskedLM, dict(vocab_size=6, d_model=D, n_layer=1)),
            (AudioLM, dict(d_model=D, n_layers_per_stage=1)),
            (WordClassifier, dict(labels=["a", "b"]))]


def test_models_take_one_keyword_only_config():
    for cls, fields in _model_classes():
        config = cls.config_class(**fields)
        assert type(cls(config).config) is cls.config_class
        with pytest.raises(TypeError):                     # configs: keywords only
            cls.config_class(*fields.values())
        with pytest.raises(TypeError):                     # models: one config, no arguments
            cls(*fields.values())
        with pytest.raises(TypeError, match=f"takes one {cls.config_class.__name__}"):
            cls(fields)


def test_every_model_class_is_registered_by_its_name():
    classes = core.model_folder.model_classes()
    for cls, _ in _model_classes():
        assert classes[cls.__name__] is cls


def test_a_class_not_registered_is_refused_by_name_with_its_module(tmp_path, monkeypatch):
    from mambaseq.mamba_bio.heads import MaskedLM, MaskedLMConfig
    MaskedLM(MaskedLMConfig(vocab_size=6, d_model=D, n_layer=1)).save_pretrained(tmp_path / "m")
    monkeypatch.delitem(core.model_folder._MODEL_CLASSES, "MaskedLM")
    with pytest.raises(ValueError, match=r"config.json: unknown model class 'MaskedLM'.*"
                                         r"import mambaseq.mamba_bio.heads"):
        load_pretrained(tmp_path / "m")
    monkeypatch.undo()
    assert type(load_pretrained(tmp_path / "m")) is MaskedLM


def test_a_second_class_of_a_registered_name_is_refused():
    class MambaLM(torch.nn.Module):          # another class called MambaLM
        pass
    with pytest.raises(ValueError, match="'MambaLM' is taken by mambaseq.core.heads.MambaLM"):
        core.register_model_class(MambaLM)


def test_folders_saved_before_the_width_growth_rename_load(tmp_path):
    """config.json files of MultiscaleBackbone (and AudioLM) written before the rename call
    the width growth of the levels "expand"."""
    model = MultiscaleBackbone(MultiscaleBackboneConfig(d_model=D, pool=[2], width_growth=3,
                                                        n_layers_per_stage=1)).eval()
    model.save_pretrained(tmp_path / "ms")
    cfg = tmp_path / "ms" / "config.json"
    payload = json.loads(cfg.read_text())
    old = {("expand" if k == "width_growth" else k): v for k, v in payload["config"].items()}
    cfg.write_text(json.dumps({**payload, "config": old}))
    again = load_pretrained(tmp_path / "ms")
    assert again.config == model.config and again.config.width_growth == 3
    x = torch.randn(1, 8, D)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
