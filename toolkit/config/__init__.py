"""The training configuration: the schema (`schema.py`) and how recipes and overrides fill it (`load.py`)."""

from toolkit.config.load import (apply_mapping, dump_yaml, field_docs, flat_keys, from_dict, keys_help, load_config,
                                 parse_overrides, to_dict, unknown_key, validate)
from toolkit.config.schema import (CHOICES, Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig,
                                   TrainConfig, WandbConfig)

__all__ = ["CHOICES", "Config", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "TrainConfig",
           "WandbConfig", "apply_mapping", "dump_yaml", "field_docs", "flat_keys", "from_dict", "keys_help",
           "load_config", "parse_overrides", "to_dict", "unknown_key", "validate"]
