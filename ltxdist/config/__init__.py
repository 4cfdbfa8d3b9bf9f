from ltxdist.config.schema import ConfigError, TrainConfig, validate_config

__all__ = ["ConfigError", "TrainConfig", "validate_config"]
