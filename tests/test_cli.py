"""The `hfpc` entry point: command table, help, and options mixed with positional overrides."""

import json

import pytest

from hfpc_reward.cli import COMMANDS, main
from hfpc_reward.sample.pairs import generate_pairs


def test_every_command_module_builds_its_parser():
    import argparse
    import importlib

    for name, (module_name, stem, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        getattr(module, f"add_{stem}_arguments")(argparse.ArgumentParser(prog=f"hfpc {name}"))
        assert callable(getattr(module, f"run_{stem}")), name


def test_no_command_prints_the_command_list(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["chek"])
    assert "invalid choice" in capsys.readouterr().err


def test_options_may_follow_config_overrides(tmp_path, capsys):
    manifest = generate_pairs(tmp_path, n_pairs=1, seed=1, size=96)
    row = json.loads(manifest.read_text().splitlines()[0])
    original, generated, mask = (str(tmp_path / row[key]) for key in ("origin", "generation", "mask"))
    code = main(["check", original, generated, "thresholds.max_expansion=0.5", "--mask", mask, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and report["error"] is None and "expansion" in report["metrics"]


def test_a_bad_config_key_is_one_clear_line_and_exit_code_2(tmp_path, caplog):
    import hfpc_eval.__main__ as eval_main
    import hfpc_finetune.__main__ as finetune_main

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"origin": "a.png", "generation": "b.png"}\n')
    assert (
        main(["score", "--manifest", str(manifest), "--out", str(tmp_path / "r.jsonl"), "polcy.reward=gate"])
        == 2
    )
    assert "polcy" in caplog.text
    assert finetune_main.main(["train.epoch=3"]) == 2
    assert "Did you mean" in caplog.text
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["check", "--manifest", str(bad), "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "bad.jsonl:1" in caplog.text
    assert eval_main.main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in caplog.text


@pytest.mark.parametrize(
    "command",
    ["score", "train-reward", "calibrate-consistency", "finetune-segmenter", "finetune", "eval run"],
)
def test_help_lists_every_config_field_with_its_default_and_comment(command, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert "config fields" in out and "--print-config" in out
    assert sum(" = " in line and "  # " in line for line in out.splitlines()) >= 5


def test_print_config_shows_the_resolved_config_without_the_other_inputs(capsys):
    import yaml

    assert main(["score", "--print-config", "policy.reward=product", "-v"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["policy"]["reward"] == "product" and printed["reward_model"]["device"] == "auto"


def test_score_without_a_reward_model_says_the_background_judge_is_off(tmp_path, capsys):
    manifest = generate_pairs(tmp_path / "pairs", n_pairs=2, seed=3, size=64)
    assert main(["score", "--manifest", str(manifest), "--out", str(tmp_path / "r.jsonl")]) == 0
    assert "background judge off" in capsys.readouterr().out


def test_library_chatter_and_the_torchvision_fallback_note_are_off_unless_verbose(caplog):
    import logging

    from hfpc_reward.cli import configure_logging

    note = (
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
    )
    try:
        for verbosity, shown in ((0, False), (1, True)):
            caplog.clear()
            configure_logging(verbosity)
            logging.getLogger("transformers.utils.import_utils").warning(note)
            logging.getLogger("accelerate.accelerator").info("Saving current state to out/state")
            logging.getLogger("hfpc_reward.scorer").info("our own progress line")
            assert ("requires torchvision" in caplog.text) is shown
            assert ("Saving current state" in caplog.text) is shown
            assert "our own progress line" in caplog.text
    finally:
        configure_logging(0)


def test_library_loading_bars_are_off_unless_verbose_without_importing_the_libraries():
    """configure_logging (every command runs it) imports neither diffusers nor transformers (light commands
    stay torch-free), yet both libraries' loading bars are off once they load; the hub's download bars stay."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from hfpc_reward.cli import configure_logging\n"
        "configure_logging(0)\n"
        "heavy = {'torch', 'transformers', 'diffusers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from diffusers.utils import logging as diffusers_logging\n"
        "from transformers.utils import logging as transformers_logging\n"
        "from huggingface_hub.utils import are_progress_bars_disabled\n"
        "libraries = (diffusers_logging, transformers_logging)\n"
        "assert not any(lib.is_progress_bar_enabled() for lib in libraries)\n"
        "assert not are_progress_bars_disabled()\n"
        "configure_logging(1)\n"
        "assert all(lib.is_progress_bar_enabled() for lib in libraries)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr


def test_our_library_calls_raise_no_deprecation_warnings(tmp_path):
    """diffusers deprecated torch_dtype=, and a UNet-only LoRA loaded through load_lora_weights warns about
    text-encoder keys: our eval generator does neither."""
    import logging
    import warnings

    from hfpc_eval.config import GenerationConfig
    from hfpc_eval.generators import InpaintPipelineGenerator
    from peft import LoraConfig

    from hfpc_reward.testing.tiny_sd import build_tiny_sd_inpaint

    pipe = build_tiny_sd_inpaint()
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["conv_out"]))
    from diffusers import StableDiffusionInpaintPipeline
    from peft.utils import get_peft_model_state_dict

    StableDiffusionInpaintPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet)
    )
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("diffusers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            InpaintPipelineGenerator(
                str(tmp_path / "pipe"), GenerationConfig(device="cpu"), lora=str(tmp_path / "lora")
            )
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
