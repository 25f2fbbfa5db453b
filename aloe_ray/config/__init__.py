"""Job configs: one pydantic class per job, built from small sub-configs.

Values come from the class defaults, then `--config file.yaml`, then `--key.sub=value` flags.
"""

from aloe_ray.config.base import RayConfig, StorageConfig, StrictModel
from aloe_ray.config.engines import EngineBackend, EngineConfig, RoleConfig, SamplingConfig
from aloe_ray.config.eval import EvalConfig, JudgeConfig, Scoring
from aloe_ray.config.generate import (
    ContinuationPolicy,
    GenerateTreesConfig,
    PersonaSourceConfig,
    RolesConfig,
    TreeConfig,
)
from aloe_ray.config.loader import ConfigError, load_config, save_config
from aloe_ray.config.personas import (
    BenchmarkSplitConfig,
    EmbeddingConfig,
    GeneratePersonasConfig,
    PairingConfig,
    PoolKindConfig,
    PoolSeedsConfig,
)

__all__ = [
    "BenchmarkSplitConfig",
    "ConfigError",
    "ContinuationPolicy",
    "EmbeddingConfig",
    "EngineBackend",
    "EngineConfig",
    "EvalConfig",
    "GeneratePersonasConfig",
    "GenerateTreesConfig",
    "JudgeConfig",
    "PairingConfig",
    "PersonaSourceConfig",
    "PoolKindConfig",
    "PoolSeedsConfig",
    "RayConfig",
    "RoleConfig",
    "RolesConfig",
    "SamplingConfig",
    "Scoring",
    "StorageConfig",
    "StrictModel",
    "TreeConfig",
    "load_config",
    "save_config",
]
