"""config.py: defaults, YAML deltas, overrides that win, strict keys and types, validation, round trips."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from hfpc_reward.config import (
    RESOLVED_CONFIG_NAME,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_resolved_config,
)
from hfpc_reward.consistency.config import ConsistencyConfig


@dataclass
class Thresholds:
    max_expansion: float = 0.1  # test field
    min_iou: float = 0.8  # test field

    def __post_init__(self):
        if not 0 <= self.min_iou <= 1:
            raise ValueError(f"thresholds.min_iou must be in [0, 1], got {self.min_iou}")


@dataclass
class Settings:
    backend: str = "classic"  # test field
    workers: int = 1  # test field
    tags: list[str] = field(default_factory=lambda: ["a"])  # test field
    thresholds: Thresholds = field(default_factory=Thresholds)  # test section


def _yaml(tmp_path, data, name="delta.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_without_file_or_overrides():
    settings = load_config(Settings)
    assert settings == Settings()
    assert isinstance(settings.thresholds, Thresholds)


def test_yaml_delta_changes_only_its_fields(tmp_path):
    settings = load_config(Settings, _yaml(tmp_path, {"thresholds": {"min_iou": 0.6}}))
    assert settings.thresholds.min_iou == 0.6
    assert settings.thresholds.max_expansion == 0.1 and settings.backend == "classic"


def test_dotted_override_wins_over_the_file(tmp_path):
    path = _yaml(tmp_path, {"workers": 2, "thresholds": {"min_iou": 0.6}})
    settings = load_config(Settings, path, ["thresholds.min_iou=0.7", "tags=[x,y]"])
    assert settings.thresholds.min_iou == 0.7 and settings.workers == 2 and settings.tags == ["x", "y"]


@pytest.mark.parametrize(
    "layer, expected",
    [
        ({"thresholds": {"max_expanson": 0.2}}, "Did you mean: 'max_expansion'"),
        ({"tresholds": {"min_iou": 0.5}}, "Did you mean: 'thresholds'"),
    ],
)
def test_unknown_key_names_it_and_suggests_the_close_match(tmp_path, layer, expected):
    path = _yaml(tmp_path, layer)
    with pytest.raises(ConfigError, match=expected) as error:
        load_config(Settings, path)
    assert str(path) in str(error.value)
    dotted = [f"{section}.{key}=1" for section, values in layer.items() for key in values]
    with pytest.raises(ConfigError, match=expected):
        load_config(Settings, None, dotted)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"'abc'.*Float.*key: thresholds.min_iou"):
        load_config(Settings, None, ["thresholds.min_iou=abc"])
    with pytest.raises(ConfigError, match="workers"):
        load_config(Settings, None, ["workers=1.5"])


def test_post_init_validation_becomes_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"thresholds.min_iou must be in \[0, 1\], got 1.5"):
        load_config(Settings, None, ["thresholds.min_iou=1.5"])
    with pytest.raises(ConfigError, match="consistency backend must be one of"):
        load_config(ConsistencyConfig, None, ["backend=magic"])
    with pytest.raises(ConfigError, match="box_choice"):
        load_config(ConsistencyConfig, _yaml(tmp_path, {"grounded": {"box_choice": "first"}}))


def test_bad_files_and_overrides_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Settings, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Settings, _yaml(tmp_path, "a: [unclosed"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Settings, _yaml(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="not of the form section.field=value"):
        load_config(Settings, None, ["backend"])
    assert load_config(Settings, _yaml(tmp_path, "")) == Settings()  # an empty delta changes nothing


def test_resolved_config_round_trip(tmp_path):
    settings = load_config(Settings, None, ["workers=4", "thresholds.max_expansion=0.25", "tags=[q]"])
    written = save_resolved_config(settings, tmp_path / "run")
    assert written == tmp_path / "run" / RESOLVED_CONFIG_NAME
    assert yaml.safe_load(written.read_text())["thresholds"]["max_expansion"] == 0.25
    assert load_config(Settings, written) == settings
    assert config_from_dict(Settings, config_to_dict(settings)) == settings
    real = load_config(ConsistencyConfig, None, ["grounded.box_threshold=0.4"])
    assert load_config(ConsistencyConfig, save_resolved_config(real, tmp_path / "real")) == real


def test_stored_config_is_strict_too():
    with pytest.raises(ConfigError, match="invalid stored config"):
        config_from_dict(Settings, {"thresholds": {"nope": 1}})


def test_stored_config_with_an_invalid_value_is_a_config_error():
    with pytest.raises(ConfigError, match="min_iou"):
        config_from_dict(Settings, {"thresholds": {"min_iou": 2.0}})


def test_an_empty_override_is_an_empty_string_and_null_is_none():
    from hfpc_reward.scorer import ScorerConfig

    config = load_config(
        ScorerConfig,
        overrides=["reward_model.path=/some/model", "reward_model.path=", "policy.threshold=null"],
    )
    assert config.reward_model.path == "" and config.policy.threshold is None


@dataclass
class Run:
    mixed_precision: str = "fp16"  # "no" | "fp16" | "bf16"
    flag: bool = False  # a boolean
    kwargs: dict = field(default_factory=dict)  # keyword arguments of the reward
    label: str | None = None  # a wrapped field: its comment sits inside the parentheses


@dataclass
class WithRun:
    run: Run = field(default_factory=Run)  # the run section


def test_overrides_are_typed_by_their_field():
    config = load_config(WithRun, overrides=["run.mixed_precision=no", "run.flag=no", "run.label=null"])
    assert config.run.mixed_precision == "no" and config.run.flag is False and config.run.label is None
    assert load_config(WithRun, overrides=["run.mixed_precision='yes'"]).run.mixed_precision == "yes"
    assert load_config(WithRun, overrides=["run.kwargs.target=0.5"]).run.kwargs == {"target": 0.5}


def test_an_override_of_a_dict_field_replaces_the_files_dict(tmp_path):
    path = _yaml(tmp_path, {"run": {"kwargs": {"target": 0.0, "other": 1}}})
    assert load_config(WithRun, path).run.kwargs == {"target": 0.0, "other": 1}
    replaced = load_config(WithRun, path, ["run.kwargs.config=x.yaml", "run.kwargs.weight=2"])
    assert replaced.run.kwargs == {"config": "x.yaml", "weight": 2}


def test_describe_fields_lists_defaults_and_source_comments():
    from hfpc_reward.config import describe_fields

    lines = describe_fields(WithRun)
    assert lines[0] == "run:  # the run section"
    assert 'run.mixed_precision = fp16  # "no" | "fp16" | "bf16"' in lines
    assert "run.label = null  # a wrapped field: its comment sits inside the parentheses" in lines
    assert "run.kwargs = {}  # keyword arguments of the reward" in lines


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _yaml_strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _yaml_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _yaml_strings(item)
    elif isinstance(value, str):
        yield value


def test_the_real_configs_agree_on_where_models_live():
    def read(name):
        return yaml.safe_load((CONFIGS / name).read_text())

    reward_model = read("reward/blip_base.yaml")["training"]["out_dir"] + "/model"
    lora = read("finetune/ddpo_sd_inpaint.yaml")["run"]["out_dir"] + "/lora"
    assert read("scorer/hfpc.yaml")["reward_model"]["path"] == reward_model
    assert read("eval/real.yaml")["scorer"]["reward_model"]["path"] == reward_model
    assert read("eval/judges_real.yaml")["scorer"]["reward_model"]["path"] == reward_model
    assert lora in [version["path"] for version in read("eval/real.yaml")["versions"]]


def test_every_tiny_config_reads_the_kit_from_one_place():
    kit_paths = []
    for path in sorted(CONFIGS.glob("*/*tiny*.yaml")):
        for value in _yaml_strings(yaml.safe_load(path.read_text())):
            if any(
                name in value for name in ("sd_inpaint/", "reward_model/", "efficientsam/", "grounded_sam/")
            ):
                kit_paths.append((path.name, value))
    assert len(kit_paths) >= 6
    assert all(value.startswith("outputs/tiny/") for _, value in kit_paths), kit_paths


def _device_fields(schema, prefix=""):
    import dataclasses

    from hfpc_reward.config import _field_default

    for item in dataclasses.fields(schema):
        value = _field_default(item)
        if dataclasses.is_dataclass(value):
            yield from _device_fields(type(value), f"{prefix}{item.name}.")
        elif item.name.endswith("device"):
            yield f"{prefix}{item.name}", value


def test_every_device_defaults_to_auto():
    from hfpc_eval.config import EvalConfig
    from hfpc_eval.judges import JudgesConfig

    from hfpc_reward.data.clusters import ClusterConfig
    from hfpc_reward.scorer import ScorerConfig

    devices = [
        field
        for schema in (ScorerConfig, EvalConfig, JudgesConfig, ClusterConfig)
        for field in _device_fields(schema)
    ]
    assert len(devices) >= 5 and all(value == "auto" for _, value in devices), devices
