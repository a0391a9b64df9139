"""The backend registry: key -> (config class, engine class).

A backend is one module in :mod:`visionflow.engines` that declares, at module level::

    BACKEND = Backend("my-backend", MyBackendConfig, MyBackendEngine)

where ``MyBackendConfig`` subclasses :class:`~visionflow.engines.base.EngineConfigBase` with
``backend: Literal["my-backend"]``.  Backends are **discovered by a package scan**: every
module of :mod:`visionflow.engines` is imported once and those with a ``BACKEND`` are
registered, so adding a backend is adding its module, with no list to edit.  A backend module
must therefore import its heavy libraries (torch, tensorrt, ...) lazily, inside the engine,
so that configs validate on machines without them.  :func:`register` adds a backend from
elsewhere (a plugin, a test).

``AppConfig.engine`` is the pydantic union of the registered configs, discriminated by
``backend`` (:func:`engine_config_type`): an unknown key is an error naming the known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar, Union, get_args

from pydantic import Field, TypeAdapter

from visionflow.engines.base import Engine, EngineConfigBase

C = TypeVar("C", bound=EngineConfigBase)


@dataclass(frozen=True)
class Backend(Generic[C]):
    """One backend: its key (the ``backend`` value in YAML), config class and engine class."""

    key: str
    config: type[C]
    engine: type[Engine]

    def __post_init__(self) -> None:
        field = self.config.model_fields.get("backend")
        allowed = get_args(field.annotation) if field is not None else ()
        if allowed != (self.key,) or field is None or field.default != self.key:
            raise TypeError(
                f"{self.config.__name__}.backend must be Literal[{self.key!r}] with default "
                f"{self.key!r} to register backend {self.key!r}"
            )

    def create(self, config: C, model_path: Path, max_batch: int) -> Engine:
        factory: Any = self.engine
        engine: Engine = factory(config, model_path, max_batch)
        return engine


_REGISTRY: dict[str, Backend[Any]] = {}
_SCANNED = False


def register(backend: Backend[Any]) -> Backend[Any]:
    """Add ``backend``; the same declaration twice is a no-op, another one for a key is an
    error."""
    known = _REGISTRY.get(backend.key)
    if known is not None and known != backend:
        raise ValueError(f"engine backend {backend.key!r} is already registered")
    _REGISTRY[backend.key] = backend
    return backend


def unregister(key: str) -> None:
    """Remove a backend (tests that registered one)."""
    _REGISTRY.pop(key, None)


def discover() -> None:
    """Import every module of :mod:`visionflow.engines` once and register its ``BACKEND``."""
    global _SCANNED
    if _SCANNED:
        return
    _SCANNED = True
    import visionflow.engines as package

    for module_info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(module_info.name)
        declared = getattr(module, "BACKEND", None)
        if isinstance(declared, Backend):
            register(declared)


def backends() -> dict[str, Backend[Any]]:
    """Every registered backend by key (sorted)."""
    discover()
    return dict(sorted(_REGISTRY.items()))


def backend_for(config: EngineConfigBase) -> Backend[Any]:
    """The backend of ``config`` (by its ``backend`` key)."""
    known = backends()
    backend = known.get(config.backend)
    if backend is None or not isinstance(config, backend.config):
        raise TypeError(
            f"no engine backend registered for {type(config).__name__} "
            f"(backend {config.backend!r}); known: {', '.join(known)}"
        )
    return backend


def engine_config_type() -> Any:
    """The discriminated union of every registered backend's config, for a pydantic field."""
    configs = tuple(b.config for b in backends().values())
    union: Any = configs[0] if len(configs) == 1 else Union[configs]  # noqa: UP007
    return Annotated[union, Field(discriminator="backend")]


def engine_config_adapter() -> TypeAdapter[Any]:
    """A validator for one engine config (a mapping with ``backend``)."""
    return TypeAdapter(engine_config_type())


def create_engine(config: EngineConfigBase, model_path: Path, max_batch: int) -> Engine:
    """Load ``model_path`` with the backend ``config`` names."""
    return backend_for(config).create(config, model_path, max_batch)


if TYPE_CHECKING:
    EngineConfig = EngineConfigBase
else:
    EngineConfig = engine_config_type()
"""The type of ``AppConfig.engine``: for mypy the common base class, at run time the
discriminated union of the backends found when this module was first imported."""
