"""Job configs: precedence, strictness, clear errors, help, saved resolved config."""

from __future__ import annotations

import pytest
import yaml

from aloe_ray.config import ConfigError, GenerateTreesConfig, load_config, save_config
from aloe_ray.config.loader import config_help


def test_defaults_then_file_then_flags(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "run_id": "from-file",
        "tree": {"max_turns": 4, "policy": "chosen"},
        "engines": {"default": {"replicas": 2}, "judge": {"backend": "openai", "model": "gpt-x",
                                                           "base_url": "http://127.0.0.1:9/v1"}},
        "roles": {"judge": {"engine": "judge"}},
    }))
    cfg = load_config(GenerateTreesConfig, ["--config", str(cfg_file), "--tree.max_turns=6",
                                            "--roles.simulator.sampling.temperature", "0.2"])
    assert cfg.run_id == "from-file"
    assert cfg.tree.max_turns == 6  # flag beats file
    assert cfg.tree.policy.value == "chosen"  # file beats default
    assert cfg.tree.num_candidates == 2  # default kept
    assert cfg.engines["default"].replicas == 2
    assert cfg.roles.judge.engine == "judge"
    assert cfg.roles.simulator.sampling.temperature == 0.2
    assert cfg.roles.simulator.sampling.max_tokens == 96  # role-specific default survives


def test_text_fields_take_flags_as_typed():
    cfg = load_config(GenerateTreesConfig, ["--run_id=20240101", "--personas.split=2024-05-01",
                                            "--engines.default.model=123", "--num_trees=5"])
    assert (cfg.run_id, cfg.personas.split, cfg.engines["default"].model) == ("20240101", "2024-05-01", "123")
    assert cfg.num_trees == 5 and load_config(GenerateTreesConfig, ["--personas.split=null"]).personas.split is None


def test_embedded_default_applies_only_without_a_config_file(tmp_path):
    quick = load_config(GenerateTreesConfig, [])
    assert (quick.num_trees, quick.tree.max_turns) == (8, 3)  # a few short trees on a laptop
    assert load_config(GenerateTreesConfig, ["--tree.max_turns=10"]).tree.max_turns == 10  # flags win
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("run_id: r\n")
    from_file = load_config(GenerateTreesConfig, ["--config", str(cfg_file)])
    assert from_file.tree.max_turns == 10 == GenerateTreesConfig().tree.max_turns  # the method's turn cap
    assert "Without --config (the embedded default)" in config_help(GenerateTreesConfig)
    assert "tree.max_turns=3" in config_help(GenerateTreesConfig)


@pytest.mark.parametrize("argv, expected", [
    (["--tree.max_turnz=3"], "unknown key 'tree.max_turnz'; did you mean 'max_turns'?"),
    (["--tree.policy=best"], "tree.policy: Input should be 'chosen', 'random' or 'all' (got 'best')"),
    (["--tree.num_candidates=1"], "tree.num_candidates: Input should be greater than or equal to 2"),
    (["--tree.max_turns=many"], "tree.max_turns: Input should be a valid integer"),
    (["--roles.judge.engine=big"], "roles.judge.engine is 'big', but engines has only ['default']"),
    (["--engines.api.backend=openai"], "backend 'openai' needs base_url"),
    (["--run_id=../etc"], "run_id: String should match pattern"),
    (["--personas.profiles=p.jsonl"], "personas.profiles and personas.personalities go together"),
    (["stray"], "unexpected argument 'stray'"),
    (["--tree.max_turns"], "flag --tree.max_turns needs a value"),
])
def test_bad_values_are_rejected_with_the_key_named(argv, expected):
    with pytest.raises(ConfigError) as err:
        load_config(GenerateTreesConfig, argv)
    assert expected in str(err.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(GenerateTreesConfig, ["--engines.default.bakend=hf"])
    msg = str(err.value)
    assert "unknown key 'engines.default.bakend'" in msg and "did you mean 'backend'" in msg
    assert "allowed here:" in msg and "max_batch_size" in msg


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(GenerateTreesConfig, ["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("tree: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(GenerateTreesConfig, ["--config", str(bad)])
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(GenerateTreesConfig, ["--config", str(listy)])


def test_help_documents_every_leaf_field(capsys):
    text = config_help(GenerateTreesConfig)
    for key in ["--run_id", "--tree.policy", "--roles.judge.sampling.temperature", "--engines.default.backend",
                "--engines.default.api_key_env", "--pipeline.trees_per_part", "--storage.s3_endpoint_url"]:
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(key + " ")), None)
        assert line is not None, key
        assert line.rsplit("]", 1)[1].strip(), f"{key} has no description"
    assert "chosen|random|all" in text
    with pytest.raises(SystemExit) as done:
        load_config(GenerateTreesConfig, ["--help"])
    assert done.value.code == 0
    assert "--tree.max_turns" in capsys.readouterr().out


def test_saved_config_round_trips():
    cfg = load_config(GenerateTreesConfig, ["--run_id=r1", "--tree.policy=all", "--num_trees=null"])
    again = GenerateTreesConfig.model_validate(yaml.safe_load(save_config(cfg)))
    assert again == cfg
    assert again.num_trees is None


def test_schema_doc_is_in_sync():
    from aloe_ray.schema import schema_doc
    from conftest import REPO

    assert (REPO / "docs" / "schemas.md").read_text() == schema_doc(), "run: python -m aloe_ray.schema > docs/schemas.md"


def test_reference_preset_is_one_switch_for_every_job(tmp_path):
    from aloe_ray.config import EvalConfig, GeneratePersonasConfig, GenerateTreesConfig
    from aloe_ray.config.train import TrainDPOConfig, TrainSFTConfig

    trees = load_config(GenerateTreesConfig, ["--preset=reference"])
    assert (trees.tree.num_candidates, trees.tree.policy.value, trees.tree.max_turns) == (2, "random", 10)
    assert trees.roles.responder.sampling.max_tokens == 300 and trees.roles.responder.sampling.temperature == 0.7
    ev = load_config(EvalConfig, ["--preset", "reference"])
    assert (ev.num_personas, ev.turns, ev.judge.history, ev.judge.scoring.value) == (100, 10, False, "sampled")
    dpo = load_config(TrainDPOConfig, ["--preset=reference", "--data.trees=x"])
    assert (dpo.beta, dpo.lora.enabled, dpo.learning_rate(), dpo.optim.num_epochs, dpo.optim.max_steps,
            dpo.from_sft) == (0.9, False, 1e-5, 1, -1, None)
    assert dpo.optim.per_device_batch_size * dpo.optim.gradient_accumulation_steps * dpo.scaling.num_workers == 48
    sft = load_config(TrainSFTConfig, ["--preset=reference", "--data.trees=x"])
    assert (sft.lora.enabled, sft.learning_rate(), sft.optim.max_steps) == (False, 1e-5, -1)
    personas = load_config(GeneratePersonasConfig, ["--preset=reference"])
    assert (personas.profiles.examples_per_request, personas.profiles.new_per_request,
            personas.personalities.new_per_request, personas.similarity_threshold) == (5, 20, 20, 0.6)
    # flags and a config file still override the preset; an unknown preset is refused by name
    assert load_config(GenerateTreesConfig, ["--preset=reference", "--tree.max_turns=4"]).tree.max_turns == 4
    f = tmp_path / "c.yaml"
    f.write_text("tree: {policy: chosen}\n")
    from_file = load_config(GenerateTreesConfig, ["--preset=reference", f"--config={f}"])
    assert (from_file.tree.policy.value, from_file.tree.max_turns, from_file.num_trees) == ("chosen", 10, 4)
    with pytest.raises(ConfigError, match="unknown preset 'refrence'; did you mean 'reference'"):
        load_config(GenerateTreesConfig, ["--preset=refrence"])


def test_a_preset_replaces_the_embedded_default():
    from aloe_ray.config.train import TrainSFTConfig

    sft = load_config(TrainSFTConfig, ["--preset=reference", "--data.trees=x"])
    assert (sft.optim.max_length, sft.optim.save_steps) == (2048, 50)  # not the 4-step laptop run's 512 / 2
    quick = load_config(TrainSFTConfig, ["--data.trees=x"])
    assert (quick.optim.max_length, quick.optim.max_steps) == (512, 4)
