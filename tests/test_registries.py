"""What the registries promise: every decoder keeps the decoder contract and
is built from its own config, every decoder setting has its train.py flag,
every metric is read from one table, and the package's imports have no circle."""
import ast
import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from showtell.cli import get_train_parser
from showtell.cli.config_flags import config_from_args as _config_from_args
from showtell.config import DECODER_CONFIGS, DECODER_SETTINGS, ModelConfig, TrainConfig, config_from_dict
from showtell.decoders import DECODERS, CaptionDecoder, DecodingSteps, build_decoder
from showtell.metric_registry import METRICS, label, metric
from showtell.significance import RESAMPLED

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "showtell"


@pytest.mark.parametrize("name", list(DECODERS))
def test_every_decoder_keeps_the_contract_and_is_built_from_its_own_config(name):
    cls = DECODERS[name]
    assert cls.config_class is DECODER_CONFIGS[name] and cls.config_class.name == name
    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(decoder=name, embed_dim=16, hidden_dim=12), vocab_size=30, feature_dim=10)
    assert isinstance(dec, CaptionDecoder) and dec.feature_kind in ("pooled", "spatial")
    b, t, v = 3, 5, 30
    feats = torch.randn(b, 10) if dec.feature_kind == "pooled" else torch.randn(b, 4, 10)
    captions = torch.randint(4, v, (b, t))
    logits, attention = dec(feats, captions, return_attention=True)
    assert logits.shape == (b, t - 1, v) and (attention is not None) == dec.has_attention
    dec.eval()
    with torch.no_grad():
        steps = dec.decoding_steps()
        assert isinstance(steps, DecodingSteps)
        state = steps.init_state(feats)
        assert all(s.size(0) == b for s in state)
        out, state = steps.step(captions[:, 0], state)
        assert out.shape == (b, v)
        rows = torch.tensor([2, 2, 0])
        assert all(s.size(0) == b for s in steps.reorder_state(state, rows))


def test_decoder_names_are_declared_once():
    # The registry of modules is keyed by its configs' names; the command line lists those.
    assert list(DECODERS) == list(DECODER_CONFIGS) == list(ModelConfig.DECODERS)
    assert all(DECODERS[n].config_class.name == n for n in DECODERS)


@pytest.mark.parametrize("name", list(DECODER_CONFIGS))
def test_model_config_gives_each_decoder_its_own_settings(name):
    own = {f.name for f in dataclasses.fields(DECODER_CONFIGS[name])}
    given = {k: (0.25 if k == "dropout" else 7) for k in DECODER_SETTINGS}  # every decoder's, as 0.2's flags
    cfg = ModelConfig(decoder=name, **given)
    assert cfg.decoder_config == DECODER_CONFIGS[name](**{k: given[k] for k in own})
    assert all(getattr(cfg, k) == given[k] for k in own)  # read through, as 0.2's flat fields
    for other in set(DECODER_SETTINGS) - own:
        with pytest.raises(AttributeError):
            getattr(cfg, other)
    stored = cfg.to_dict()
    assert set(stored) == {"encoder", "decoder", "fine_tune_encoder"} | own
    flat_02 = {"encoder": cfg.encoder, "decoder": name, **given, "fine_tune_encoder": False}
    for d in (stored, dataclasses.asdict(cfg), flat_02):
        assert config_from_dict(ModelConfig, d) == cfg
    assert ModelConfig(decoder=name, decoder_config=cfg.decoder_config) == cfg
    assert dataclasses.replace(cfg, fine_tune_encoder=True).decoder_config == cfg.decoder_config
    other = next(n for n in DECODER_CONFIGS if n != name)
    with pytest.raises(TypeError, match=f"decoder_config of {other} must be"):
        ModelConfig(decoder=other, decoder_config=cfg.decoder_config)
    with pytest.raises(TypeError, match="either in decoder_config or as keywords"):
        ModelConfig(decoder=name, decoder_config=cfg.decoder_config, hidden_dim=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'hiden_dim'"):
        ModelConfig(decoder=name, hiden_dim=3)
    with pytest.raises(ValueError, match=r"decoder 'lstm' is unknown \(--decoder\)"):
        ModelConfig(decoder="lstm")


@pytest.mark.parametrize("name", list(DECODER_CONFIGS))
def test_every_decoder_setting_has_its_train_flag(name, tmp_path):
    settings = {f.name: (0.125 if f.type == "float" else 9) for f in dataclasses.fields(DECODER_CONFIGS[name])}
    argv = ["--decoder", name, "--out", str(tmp_path)]
    for k, v in settings.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    cfg = _config_from_args(ModelConfig, get_train_parser().parse_args(argv))
    assert cfg.decoder_config == DECODER_CONFIGS[name](**settings)
    help_text = get_train_parser().format_help()
    assert all("--" + k.replace("_", "-") in help_text for k in DECODER_SETTINGS)


def test_the_metric_registry_feeds_compare_selection_and_the_score_dicts():
    assert RESAMPLED == tuple(k for k, m in METRICS.items() if m.resampled)
    assert TrainConfig.SELECT_METRICS == tuple(k for k, m in METRICS.items() if m.selects)
    for key in TrainConfig.SELECT_METRICS:
        assert TrainConfig(select_metric=key).select_metric == key
    with pytest.raises(ValueError, match="select_metric"):
        TrainConfig(select_metric="meteor")
    assert label("cider") == "CIDEr-D" and label("images") == "images"
    with pytest.raises(KeyError, match="unknown metric 'spice'"):
        metric("spice")

    from showtell.metrics import coco_caption_scores
    from showtell.significance import paired_bootstrap

    refs = [[["a", "dog", "runs"], ["a", "dog", "on", "grass"]], [["a", "cat", "sits"]], [["a", "man", "runs"]]]
    hyps = [["a", "dog", "runs"], ["a", "cat"], ["a", "dog", "sits"]]
    scores = coco_caption_scores(refs, hyps, meteor=False, per_image=True)
    assert list(scores)[:len(METRICS)] == list(METRICS)  # every metric, in the registry's order
    per = scores["per_image"]
    result = paired_bootstrap(refs, {"captions": hyps, "per_image": per}, {"captions": hyps[::-1], "per_image":
                              {k: None if v is None else np.asarray(v)[::-1] for k, v in per.items()}},
                              resamples=20)
    assert tuple(result) == tuple(k for k in RESAMPLED if k == "bleu4" or per.get(k) is not None)


def test_every_selectable_metric_is_computed_by_validation():
    from showtell.datasets import ImageCaptions
    from showtell.features import FeatureSet
    from showtell.metrics import CiderD
    from showtell.model import CaptionModel
    from showtell.text import SPECIAL_TOKENS, Vocabulary, tokenize
    from showtell.training import validate

    torch.manual_seed(0)
    vocab = Vocabulary(list(SPECIAL_TOKENS) + "a dog cat runs".split())
    model = CaptionModel.build(ModelConfig(encoder="resnet18", embed_dim=8, hidden_dim=8), vocab,
                               encoder_weights=None)
    items = [ImageCaptions(str(i), f"{i}.jpg", ("a dog runs", "a cat")) for i in range(3)]
    val = FeatureSet(items, np.random.rand(3, 512).astype(np.float32), np.zeros((3, 1, 512), np.float16), [])
    cider = CiderD([[tokenize(c) for c in it.captions] for it in items])
    scores = validate(model, val, cider, TrainConfig(max_decode_len=5), torch.device("cpu"))
    assert set(TrainConfig.SELECT_METRICS) <= set(scores)


def _module_name(path: pathlib.Path) -> str:
    """A module's name under showtell: "config", "cli" (cli/__init__.py), "cli.common"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (a function-level
    import closes a circle as surely as a top-level one), by their names
    under showtell (``from ..config import`` in cli/train.py is "config")."""
    package = list(path.relative_to(PACKAGE).parts[:-1])  # what ``from . import`` names
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "showtell":
                target = node.module.split(".")[1:]
            else:
                continue
            found |= {".".join(target + [a.name]) for a in node.names} | {".".join(target)}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("showtell.")}
    return (found & modules) - {_module_name(path)}


def test_the_package_has_no_import_circle():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    assert {"cli", "cli.common", "cli.train"} <= set(files)  # subpackages are in the graph too
    graph = {name: _imports(p, set(files)) for name, p in files.items()}
    assert {"cli.common", "config"} <= graph["cli.train"] and "cli.caption" in graph["cli"]
    assert graph["checkpoint"] <= {"config", "text"}  # the record knows no registry
    table = ast.parse((PACKAGE / "metric_registry.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(table) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(table) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses"} and not graph["metric_registry"]  # free for --help
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
