"""The command line's layout: one module per command, each registered as a
``showtell`` subcommand, and ``train --test`` scoring best.pt through the
same package function as ``showtell evaluate`` (no argv built between
commands), with the same figures."""
import dataclasses
import json
import pkgutil

from showtell import cli, evaluation, metrics
from showtell.captioner import Captioner
from showtell.checkpoint import read_checkpoint, save_checkpoint
from showtell.defaults import GUIDANCE_FALLBACK, GUIDANCE_THRESHOLD
from showtell.cli import COMMANDS, get_parser, main, train_main
from showtell.cli.common import USAGE

from synthetic import make_karpathy_set


def _command_modules():
    """The modules of showtell/cli that define a command (a ``run``)."""
    found = {}
    for info in pkgutil.iter_modules(cli.__path__):
        module = __import__(f"showtell.cli.{info.name}", fromlist=["run"])
        if hasattr(module, "run"):
            found[info.name] = module
    return found


def _flags(parser):
    return sorted(s for a in parser._actions for s in a.option_strings)


def test_each_command_module_registers_its_subcommand(capsys):
    modules = _command_modules()
    assert set(modules) == set(COMMANDS) and {"caption", "evaluate", "compare", "export", "train"} <= set(modules)
    subparsers = next(a for a in get_parser()._actions if a.dest == "command").choices
    for name, module in modules.items():
        command = COMMANDS[name]
        assert (command.fill_parser, command.run) == (module.fill_parser, module.run)
        assert (command.summary, command.description) == (module.SUMMARY, module.DESCRIPTION)
        # The subcommand takes the module's flags, and its help is the module's own parser's.
        assert _flags(subparsers[name]) == _flags(module.get_parser()), name
        assert subparsers[name].description == module.DESCRIPTION
        assert main([name, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: showtell {name} ")


def _evaluation_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"checkpoint"')]


def test_train_test_scores_each_dataset_through_evaluate_checkpoint_as_evaluate_does(tmp_path, monkeypatch, capsys):
    a, _ = make_karpathy_set(str(tmp_path / "a"), {"train": 8, "val": 3, "test": 3}, size=16)
    b, _ = make_karpathy_set(str(tmp_path / "b"), {"train": 8, "val": 3, "test": 3}, seed=1, size=16)

    def no_meteor(timeout):  # METEOR's JVM costs 10-15 s of CPU a run; the other metrics are enough here
        raise RuntimeError("not in this test")

    monkeypatch.setattr(metrics, "_MeteorRun", no_meteor)
    calls, real = [], evaluation.evaluate_checkpoint

    def spied(*args, **kwargs):
        calls.append((args[2], kwargs["store"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", spied)
    out = tmp_path / "run"
    assert train_main(["--data", f"a={a}", "--data", f"b={b}", "--out", str(out), "--encoder", "resnet18",
                       "--encoder-weights", "none", "--embed-dim", "8", "--hidden-dim", "8", "--attention-dim", "8",
                       "--min-word-count", "1", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                       "--no-progress", "--test"]) == 0
    lines = _evaluation_lines(capsys.readouterr().out)
    # Each dataset's test split, through the shared function; the first one's scores stored in best.pt.
    assert calls == [("a", True), ("b", False)]
    assert [(line["dataset"], line["split"], line["images"]) for line in lines] == [("a", "test", 3), ("b", "test", 3)]
    best = str(out / "best.pt")
    stored = read_checkpoint(best)
    assert stored.scores["test"]["cider"] == stored.dataset_scores["a"]["test"]["cider"]
    assert round(stored.scores["test"]["cider"], 2) == lines[0]["cider"] and "b" not in stored.dataset_scores
    for name in ("a", "b"):
        captions = json.loads((out / f"test_captions_{name}.json").read_text())
        assert len(captions) == 3 and all(c["caption"] for c in captions)

    # showtell evaluate on the same checkpoint and data prints the same line.
    calls.clear()
    assert main(["evaluate", best, "--data", f"b={b}", "--device", "cpu", "--no-progress"]) == 0
    assert _evaluation_lines(capsys.readouterr().out) == [lines[1]] and calls == [("b", False)]

    # evaluate and compare decode as caption() does with each model: guided by
    # the threshold and fallback stored in its calibration; flags override them.
    calibrated = str(tmp_path / "calibrated.pt")
    save_checkpoint(dataclasses.replace(stored, calibration={"guidance_threshold": 0.05, "guidance_fallback": 1.5}),
                    calibrated)
    assert Captioner(calibrated, device="cpu").defaults.guidance_threshold == 0.05
    for argv, expected in (([], (0.05, 1.5)), (["--guidance-fallback", "none"], (0.05, None)),
                           (["--guidance-threshold", "0.9", "--guidance-fallback", "0.25"], (0.9, 0.25))):
        assert main(["evaluate", calibrated, "--data", f"b={b}", "--device", "cpu", "--no-progress", *argv]) == 0
        (line,) = _evaluation_lines(capsys.readouterr().out)
        assert (line["guidance_threshold"], line["guidance_fallback"]) == expected
    assert main(["compare", best, calibrated, "--data", f"b={b}", "--device", "cpu", "--no-progress",
                 "--resamples", "10"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["guidance_threshold"] == [GUIDANCE_THRESHOLD, 0.05] and line["guidance_fallback"] == [GUIDANCE_FALLBACK, 1.5]
    assert main(["evaluate", calibrated, "--guidance-fallback", "lots"]) == USAGE
    assert "--guidance-fallback: expected a number" in capsys.readouterr().err
    assert main(["evaluate", calibrated, "--guidance-fallback", "-1"]) == USAGE
    assert "--guidance-fallback must be a finite number >= 0" in capsys.readouterr().err
