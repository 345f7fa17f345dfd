"""One command-line convention for every entry point: bad input is one ``error:`` line and exit status 2;
``--debug`` shows the traceback. ``experiments.evaluate`` keeps every data set's results."""

from __future__ import annotations

import importlib
import json

import pytest

from experiments.cli import user_error_message

BAD_INPUT = {
    "train": (["exp=default", "model.temprature=0.1"], "unknown config key 'model.temprature'"),
    "evaluate": (["--model", "/no/such/model", "--tasks", "tiny_hotpotqa@dev"], "model folder not found"),
    "decode": (["--ckpt", "/no/such.ckpt", "--text", "x"], "checkpoint '/no/such.ckpt' not found"),
    "report": (["--output-root", "/no/such/root"], "output root /no/such/root does not exist"),
    "sweep": (["check", "no_such_sweep"], "no sweep 'no_such_sweep'"),
    "llm_embedder_prescore": (["exp=default"], "this experiment has no frozen LM"),
    "llm_embedder_agreement": (["exp=defualt"], "unknown experiment 'defualt'"),
    "rabtriever_sft": (
        ["--out", "x", "--steps", "abc"],
        "argument --steps: invalid positive_int value: 'abc'",
    ),
}


@pytest.mark.parametrize("entry_point", sorted(BAD_INPUT))
def test_every_entry_point_reports_bad_input_as_one_error_line_and_exit_2(entry_point, capsys, monkeypatch):
    monkeypatch.delenv("LSR_DEBUG", raising=False)
    arguments, message = BAD_INPUT[entry_point]
    main = importlib.import_module(f"experiments.{entry_point}").main
    assert main(list(arguments)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err


def test_debug_flag_and_environment_show_the_traceback(capsys, monkeypatch):
    from experiments.train import main

    assert main(["exp=default", "model.temprature=0.1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: unknown config key")
    monkeypatch.setenv("LSR_DEBUG", "1")
    assert main(["exp=default", "model.temprature=0.1"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback():
    assert user_error_message(KeyError("not the user's fault")) is None


def test_evaluating_a_model_on_a_second_data_set_keeps_the_first_ones_results(
    tmp_path, tiny_bert_path, capsys
):
    from experiments.evaluate import main

    common = ["--model", tiny_bert_path, "--output-root", str(tmp_path), "--max-length", "32"]
    assert main([*common, "--tasks", "tiny_hotpotqa@dev"]) == 0
    assert main([*common, "--tasks", "tiny_hotpotqa@train"]) == 0
    folder = next((tmp_path / "eval").iterdir())
    results = json.loads((folder / "mteb_results.json").read_text())
    assert sorted(results["tasks"]) == ["tiny_hotpotqa-dev", "tiny_hotpotqa-train"]
    scores = [entry["main_score"] for entry in results["tasks"].values()]
    assert results["mean"] == pytest.approx(sum(scores) / 2)
    table = (folder / "mteb_results.md").read_text()
    assert "| tiny_hotpotqa-dev |" in table and "| tiny_hotpotqa-train |" in table
    # other settings would mix incomparable scores in one file: refused, the file is unchanged
    capsys.readouterr()
    assert main([*common, "--tasks", "tiny_hotpotqa@dev", "--precision", "bf16"]) == 2
    assert "Pass --output <folder> to keep both" in capsys.readouterr().err
    assert json.loads((folder / "mteb_results.json").read_text()) == results
