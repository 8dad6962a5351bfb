"""Loading a training configuration: a YAML recipe and `--section.key=value` overrides onto the schema.

A recipe is a YAML mapping of sections (`data`, `model`, `optim`, `schedule`, `train`, `wandb`) to fields.
Command-line overrides use the form a W&B sweep agent passes, `--section.key=value`; values are parsed as
YAML scalars and checked against the field's type. Unknown sections/keys are rejected with a suggestion, and
`validate` checks ranges and choices in one place.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import typing
from pathlib import Path

import yaml

from toolkit.config.schema import CHOICES, Config
from toolkit.errors import ConfigError


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def unknown_key(key: str, known: typing.Iterable[str], where: str) -> ConfigError:
    """The error for an unknown key, with the closest known key as a suggestion."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(known))}"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _coerce(value, tp, key: str, where: str):
    """Check/convert `value` to the field type `tp` (int, float, bool, str, list[str])."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, typing.get_args(tp)[0], key, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads '1e-4' as a string
            except ValueError:
                pass
    elif tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    name = f"one of {', '.join(CHOICES[key])}" if key in CHOICES else getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where}: '{key}' must be {name}, got {value!r}")


def _set(cfg: Config, dotted: str, value, where: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{where}: '{dotted}' must have the form section.key (sections: {', '.join(_fields(cfg))})")
    section, key = parts
    sections = _fields(cfg)
    if section not in sections:
        raise unknown_key(section, sections, where)
    sub = getattr(cfg, section)
    keys = _fields(sub)
    if key not in keys:
        raise unknown_key(f"{section}.{key}", [f"{section}.{k}" for k in keys], where)
    types = typing.get_type_hints(type(sub))
    setattr(sub, key, _coerce(value, types[key], dotted, where))


def apply_mapping(cfg: Config, mapping: dict, where: str) -> None:
    """Apply a nested {section: {key: value}} mapping (a parsed recipe) onto `cfg`."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping of sections, got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section not in _fields(cfg):
            raise unknown_key(str(section), _fields(cfg), where)
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            _set(cfg, f"{section}.{key}", value, where)


def parse_overrides(args: list[str]) -> list[tuple[str, object]]:
    """Parse `--section.key=value` (or `--section.key value`) arguments into (dotted key, YAML value) pairs."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"command line: expected --section.key=value, got '{arg}'")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"command line: '{arg}' needs a value (--section.key=value)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key, value))
        i += 1
    return pairs


def validate(cfg: Config) -> None:
    """Range and choice checks that types alone cannot express; raises ConfigError naming the key."""
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"config: '{dotted}' must be one of {', '.join(choices)}, got {value!r}")
    positive = ["data.n_past", "data.n_future", "data.batch_size", "model.g_dim", "model.z_dim", "model.rnn_size",
                "model.predictor_layers", "model.posterior_layers", "model.prior_layers", "optim.grad_accum",
                "schedule.kl_anneal_cycle", "train.epochs", "train.epoch_size", "train.eval_every",
                "train.checkpoint_every", "train.keep_last", "train.log_every", "train.max_nonfinite"]
    for dotted in positive:
        section, key = dotted.split(".")
        if getattr(getattr(cfg, section), key) < 1:
            raise ConfigError(f"config: '{dotted}' must be >= 1, got {getattr(getattr(cfg, section), key)}")
    checks = [
        ("data.num_workers", cfg.data.num_workers >= 0, ">= 0"),
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 1, ">= 1"),
        ("data.val_sequences", cfg.data.val_sequences >= 0, ">= 0"),
        ("model.width", cfg.model.width > 0, "> 0"),
        ("optim.lr", cfg.optim.lr > 0, "> 0"),
        ("optim.grad_clip", cfg.optim.grad_clip >= 0, ">= 0"),
        ("optim.lr_final", 0 <= cfg.optim.lr_final <= 1, "in [0, 1]"),
        ("optim.warmup_steps", cfg.optim.warmup_steps >= 0, ">= 0"),
        ("schedule.tfr", 0 <= cfg.schedule.tfr <= 1, "in [0, 1]"),
        ("schedule.tfr_lower_bound", 0 <= cfg.schedule.tfr_lower_bound <= 1, "in [0, 1]"),
        ("schedule.tfr_decay_step", cfg.schedule.tfr_decay_step >= 0, ">= 0"),
        ("schedule.tfr_start_decay_epoch", cfg.schedule.tfr_start_decay_epoch >= 0, ">= 0"),
        ("schedule.kl_anneal_ratio", 0 < cfg.schedule.kl_anneal_ratio <= 1, "in (0, 1]"),
        ("schedule.beta", cfg.schedule.beta >= 0, ">= 0"),
        ("train.num_gifs", cfg.train.num_gifs >= 0, ">= 0"),
        ("train.bn_batches", cfg.train.bn_batches >= 0, ">= 0"),
        ("train.val_samples", cfg.train.val_samples >= 0, ">= 0"),
        ("train.epoch_size", cfg.train.epoch_size % cfg.optim.grad_accum == 0, "a multiple of optim.grad_accum"),
    ]
    for dotted, ok, what in checks:
        if not ok:
            section, key = dotted.split(".")
            raise ConfigError(f"config: '{dotted}' must be {what}, got {getattr(getattr(cfg, section), key)}")
    if cfg.data.n_past == 1 and cfg.model.skip_from == "reference":
        raise ConfigError("config: 'model.skip_from' reference takes the decoder's skips from x_{n_past-2}, which "
                          "does not exist with data.n_past = 1 (edenton/svg would index the sequence's last frame): "
                          "use last_context or previous")


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML recipe <- `--section.key=value` overrides, then validated."""
    cfg = Config()
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe not found")
        try:
            mapping = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        apply_mapping(cfg, mapping, str(path))
    for key, value in parse_overrides(overrides or []):
        _set(cfg, key, value, f"override --{key}")
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(mapping: dict, where: str = "config") -> Config:
    cfg = Config()
    apply_mapping(cfg, mapping, where)
    validate(cfg)
    return cfg


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flat_keys(cfg: Config | None = None) -> list[str]:
    """Every `section.key` (used to check sweep YAMLs against the schema)."""
    cfg = cfg or Config()
    return [f"{s}.{k}" for s in _fields(cfg) for k in _fields(getattr(cfg, s))]


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), whitespace folded."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: " ".join(doc.value.value.split()) for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)}


def keys_help(width: int = 100) -> str:
    """Every `--section.key` with its type, default (and choices) and docstring: the text of `cvae train --help`."""
    cfg, lines = Config(), ["config keys (in a recipe's sections, or on the command line as --section.key=value):"]
    for section in _fields(cfg):
        sub = getattr(cfg, section)
        docs, types = field_docs(type(sub)), typing.get_type_hints(type(sub))
        lines.append("")
        for key in _fields(sub):
            tp = types[key]
            name = getattr(tp, "__name__", str(tp)) if typing.get_origin(tp) is None else str(tp)
            choices = CHOICES.get(f"{section}.{key}")
            extra = f", one of {'|'.join(choices)}" if choices else ""
            lines.append(f"  --{section}.{key}  ({name}, default {getattr(sub, key)!r}{extra})")
            lines += textwrap.wrap(docs.get(key, ""), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
