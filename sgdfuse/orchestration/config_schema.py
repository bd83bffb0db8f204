"""Type checks of a composed config before anything runs: wrong types and bool-like strings are rejected.

YAML and Hydra read ``true``/``false`` as booleans but ``no``, ``off``, ``yes`` or ``"false"`` as strings,
which Python then treats as true; ``2.5`` for an integer is silently truncated by ``int()``. The config has
no second copy of its defaults to hold types, so the types come from where the values go:

- every node with a ``_target_`` is checked against the type hints of the target's signature (the
  constructor of a class); a parameter whose dict holds the keyword arguments of another callable is
  declared by the class in ``KWARGS_OF`` (e.g. ``Stage1FusionModule.KWARGS_OF = {"net": FusionNet}``)
  and checked against that callable's signature;
- top-level keys that are no constructor's (``seed``, ``steps``, ``stages``, ...) have a small schema per
  program (:class:`TrainConfig`, :class:`EvaluateConfig`).

Rules: ``bool`` must be a real boolean; ``int`` must be an integer (not a float, not a bool); ``float``
takes integers and floats; ``str`` must be a string; ``X | None`` takes null; lists, tuples and dicts are
checked element by element. Hints this module does not understand (classes, callables, tensors) accept
anything: Hydra or the constructor reports those.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypedDict

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

#: Strings that YAML 1.2 / Hydra keep as strings although the user almost certainly meant a boolean.
BOOL_LIKE = {"yes", "no", "on", "off", "y", "n", "true", "false", "1", "0"}
#: How many problems one error lists (the rest are counted).
MAX_LISTED = 12


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what to do."""


class TrainConfig(TypedDict, total=False):
    """Top-level keys of ``configs/train.yaml`` that are no constructor's argument (types only; the
    defaults live in the YAML)."""

    experiment_name: str
    run_id: str | int | None
    seed: int
    stages: list[str]
    stage2_phases: list[str]
    steps: dict[str, int]
    paths: dict[str, str]
    test_metrics: list[str] | None
    threads: int | None
    source_experiment: str | None
    source_run: str | None


class EvaluateWandb(TypedDict, total=False):
    enabled: bool
    project: str
    entity: str | None
    group: str | None


class EvaluateConfig(TypedDict, total=False):
    """Top-level keys of ``configs/evaluate.yaml``."""

    method: str
    checkpoint: str | None
    fused_dir: str | None
    device: str
    metrics: list[str] | None
    convention: str
    output_dir: str | None
    grid_pairs: int
    max_pairs: int | None
    wandb: EvaluateWandb
    seed: int
    experiment_name: str
    run_id: str | int | None
    paths: dict[str, str]
    threads: int | None


#: Program config name (``train.py`` -> ``train``) -> its top-level schema.
SCHEMAS: dict[str, type] = {"train": TrainConfig, "evaluate": EvaluateConfig}
#: Constructor arguments the pipeline or a module sets itself when the config leaves them null.
FILLED_BY_PIPELINE: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.loggers.WandbLogger": ("offline",),
    # set from the mask source and stage2_phases
    "lightning_modules.stage2.Stage2DiffusionModule": ("masks", "phase"),
    # num_training_steps null = the stage's steps (FusionModule.configure_optimizers fills it)
    **{f"diffusers.optimization.{name}": ("num_training_steps",) for name in (
        "get_cosine_schedule_with_warmup", "get_linear_schedule_with_warmup",
        "get_cosine_with_hard_restarts_schedule_with_warmup", "get_polynomial_decay_schedule_with_warmup")},
}


def check_config(cfg: DictConfig, schema: type | None = None,
                 filled_later: Mapping[str, typing.Collection[str]] | None = None) -> None:
    """Raise :class:`ConfigError` listing every value of ``cfg`` that does not fit its type.

    ``schema``: a TypedDict of top-level keys. ``filled_later``: ``{target path: parameter names}`` that
    the caller replaces when the config value is null (e.g. the pipeline sets WandbLogger's ``offline``).
    """
    problems = list(config_problems(cfg, schema, filled_later))
    if problems:
        listed = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ConfigError("invalid config value(s):\n  " + "\n  ".join(listed) + more)


def config_problems(cfg: DictConfig, schema: type | None = None,
                    filled_later: Mapping[str, typing.Collection[str]] | None = None) -> Iterator[str]:
    """The problems :func:`check_config` reports, one message each (``key=value: expected ...``)."""
    filled_later = filled_later or {}
    hints = _hints(schema) if schema is not None else {}
    for key in cfg:
        if key == "hydra":  # Hydra's own node (present when composed with return_hydra_config)
            continue
        ok, value = _get(cfg, key)
        if not ok:
            continue
        if key in hints:
            yield from _check_value(str(key), value, hints[key], f"the {schema.__name__} schema")
        if isinstance(value, DictConfig):
            yield from _walk(value, str(key), filled_later)


# --- walking the tree ---------------------------------------------------------------------------------------
def _get(node: DictConfig, key: Any) -> tuple[bool, Any]:
    """(True, resolved value), or (False, None) for ``???`` and interpolations that do not resolve here
    (e.g. ``${hydra:...}`` outside a Hydra run): those are Hydra's to report."""
    if OmegaConf.is_missing(node, key):
        return False, None
    try:
        value = node[key]
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException:
        return False, None
    return True, value


def _walk(node: DictConfig, prefix: str, filled_later: Mapping[str, typing.Collection[str]]) -> Iterator[str]:
    """Check every ``_target_`` node at or below ``node``."""
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        yield from _check_call(node, prefix, target, filled_later)
        return
    for key in node:
        ok, value = _get(node, key)
        if ok and isinstance(value, DictConfig):
            yield from _walk(value, f"{prefix}.{key}", filled_later)


def _check_call(node: DictConfig, prefix: str, target: str,
                filled_later: Mapping[str, typing.Collection[str]]) -> Iterator[str]:
    try:
        from hydra.utils import get_object

        obj = get_object(target)
    except Exception as err:  # not importable: instantiate would fail the same way, with Hydra's message
        yield f"{prefix}._target_={target!r}: cannot be imported ({err})"
        return
    yield from _check_kwargs(node, prefix, obj, target, set(filled_later.get(target, ())), filled_later)


def _check_kwargs(node: DictConfig, prefix: str, obj: Callable[..., Any], name: str, nullable: set[str],
                  filled_later: Mapping[str, typing.Collection[str]]) -> Iterator[str]:
    """Check the keys of ``node`` as keyword arguments of ``obj``."""
    params, takes_any = _signature(obj)
    if params is None:  # no signature (a C function): nothing to check against
        return
    nested = getattr(obj, "KWARGS_OF", {}) if inspect.isclass(obj) else {}
    inner, inner_params, inner_any = _forwarded(node, obj)
    for key in node:
        if str(key).startswith("_") and str(key).endswith("_"):  # _target_, _recursive_, _convert_, ...
            continue
        ok, value = _get(node, key)
        if not ok:
            continue
        path = f"{prefix}.{key}"
        if key not in params and inner_params is not None:  # **kwargs forwarded to the class in `inner`
            if key in inner_params:
                yield from _check_value(path, value, inner_params[key], inner)
            elif not inner_any:
                yield (f"{path}: neither {name} nor {inner} has a parameter {key!r}; fix the key's "
                       "spelling or remove it")
            continue
        if key not in params:
            if not takes_any:
                yield (f"{path}: {name} has no parameter {key!r} (it takes: {', '.join(params)}); "
                       "fix the key's spelling or remove it")
            elif isinstance(value, DictConfig):
                yield from _walk(value, path, filled_later)
            continue
        if value is None and key in nullable:
            continue
        yield from _check_value(path, value, params[key], name)
        if isinstance(value, DictConfig):
            if key in nested and "_target_" not in value:
                yield from _check_kwargs(value, path, nested[key], _qualname(nested[key]), set(),
                                         filled_later)
            else:
                yield from _walk(value, path, filled_later)


def _forwarded(node: DictConfig, obj: Any) -> tuple[str, dict[str, Any] | None, bool]:
    """For classes that forward ``**kwargs`` to the class named by one of their keys (declared as
    ``KWARGS_FORWARDED_TO = "<key>"``, e.g. ``ResidualHead.inner``): that class's signature."""
    key = getattr(obj, "KWARGS_FORWARDED_TO", None) if inspect.isclass(obj) else None
    ok, inner = _get(node, key) if key else (False, None)
    if not ok or not isinstance(inner, str):
        return "", None, True
    try:
        from hydra.utils import get_object

        params, takes_any = _signature(get_object(inner))
    except Exception:  # not importable: instantiate fails with Hydra's own message
        return inner, None, True
    return inner, params, takes_any


@functools.cache
def _signature(obj: Callable[..., Any]) -> tuple[dict[str, Any] | None, bool]:
    """{keyword parameter: type hint} of ``obj`` (unresolvable hints -> Any), and whether it takes
    ``**kwargs``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None, True
    function = inspect.unwrap(obj.__init__ if inspect.isclass(obj) else getattr(obj, "__func__", obj))
    namespace = getattr(function, "__globals__", {})
    params: dict[str, Any] = {}
    takes_any = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            takes_any = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = _resolve(p.annotation, namespace)
    return params, takes_any


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    if annotation is inspect.Parameter.empty:
        return Any
    if isinstance(annotation, str):  # `from __future__ import annotations`
        try:
            return eval(annotation, dict(namespace))  # the module's own annotation text
        except Exception:  # a name imported only under TYPE_CHECKING
            return Any
    return annotation


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# --- one value against one hint -----------------------------------------------------------------------------
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence,
              collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_SCALARS = (bool, int, float, str)


def _check_value(path: str, value: Any, hint: Any, owner: str) -> Iterator[str]:
    """Problems of ``value`` against ``hint``; items of typed lists and dicts are reported one by one."""
    members = _members(hint)
    if any(m is Any or m is object for m in members):
        return
    if isinstance(value, DictConfig | dict):
        for m in members:
            if _is_typeddict(m):
                sub = _hints(m)
                for key, item in _items(value):
                    if key in sub:
                        yield from _check_value(f"{path}.{key}", item, sub[key], owner)
                return
            if _origin(m) in _MAPPINGS:
                args = typing.get_args(m)
                for key, item in _items(value) if len(args) == 2 else ():
                    yield from _check_value(f"{path}.{key}", item, args[1], owner)
                return
    elif isinstance(value, list | tuple):
        for m in members:
            if _origin(m) in _SEQUENCES:
                args = typing.get_args(m)
                if _origin(m) is tuple and args and args[-1] is not Ellipsis:
                    if len(args) != len(value):
                        break  # a fixed-length tuple of another length
                    items = list(zip(value, args, strict=True))
                else:
                    items = [(v, args[0] if args else Any) for v in value]
                for i, (item, item_hint) in enumerate(items):
                    yield from _check_value(f"{path}[{i}]", item, item_hint, owner)
                return
    elif any(_scalar_matches(value, m) is not False for m in members):
        return
    if all(_understood(m) for m in members):
        yield _problem(path, value, hint, owner)


def _problem(path: str, value: Any, hint: Any, owner: str) -> str:
    shown = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    msg = f"{path}={shown!r}: expected {_describe(hint)} (type of `{path.rsplit('.', 1)[-1]}` in {owner})"
    members = _members(hint)
    bool_like = value.strip().lower() in BOOL_LIKE if isinstance(value, str) else value in (0, 1)
    if bool in members and not isinstance(value, bool):
        msg += "; write true or false"
        if bool_like and isinstance(value, str):
            msg += " (YAML/Hydra read `no`, `off`, `yes` and quoted words as strings, not booleans)"
    elif str in members and isinstance(value, bool | int | float):
        msg += f"; Hydra read it as a {type(value).__name__}: quote it for a string ({path}='...')"
    elif isinstance(value, float) and int in members and float not in members:
        msg += "; an integer is needed (int() would truncate it)"
    return msg


def _scalar_matches(value: Any, hint: Any) -> bool | None:
    """Whether a non-container ``value`` fits one (non-union) hint; None where the hint is not ours."""
    if hint is type(None) or hint is None:
        return value is None
    if _origin(hint) is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if _origin(hint) in (list, tuple) or _origin(hint) in _MAPPINGS or _is_typeddict(hint):
        return False
    if getattr(hint, "__module__", None) == "torch" and getattr(hint, "__name__", None) == "Tensor":
        return False  # no config value is a tensor (e.g. Adam's `lr: float | Tensor`)
    if _origin(hint) in _SEQUENCES:
        return isinstance(value, str) or None  # a str is a Sequence; other scalars are not
    return None  # a class (PairSource, Path, Tensor, ...), a callable, a TypeVar: not ours to judge


def _understood(hint: Any) -> bool:
    """Whether :func:`_scalar_matches` and the container rules judge ``hint`` (else: accept anything)."""
    return _scalar_matches(None, hint) is not None or _origin(hint) in _SEQUENCES


def _members(hint: Any) -> list[Any]:
    """The alternatives of a union (flattened, ``Annotated`` stripped); ``[hint]`` otherwise."""
    if _origin(hint) is typing.Annotated:
        return _members(typing.get_args(hint)[0])
    if _origin(hint) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(hint) for m in _members(a)]
    return [hint]


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint) or hint


def _items(value: DictConfig | dict) -> Iterator[tuple[Any, Any]]:
    if isinstance(value, dict):
        yield from value.items()
        return
    for key in value:
        ok, item = _get(value, key)
        if ok:
            yield key, item


def _is_typeddict(hint: Any) -> bool:
    return typing.is_typeddict(hint)


def _describe(hint: Any) -> str:
    members = _members(hint)
    if len(members) > 1:
        return " or ".join(_describe(m) for m in members)
    hint = members[0]
    if hint is None or hint is type(None):
        return "null"
    if _origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    names = {bool: "a bool (true/false)", int: "an int", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if _is_typeddict(hint):
        return "a mapping"
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")
